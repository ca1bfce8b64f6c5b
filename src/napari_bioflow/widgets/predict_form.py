"""The Predict dock's fields and layout (defaults, bounds and tooltips from the config's predict section)."""

from __future__ import annotations

from pathlib import Path

from magicgui.widgets import ComboBox, Container, FileEdit, ProgressBar, PushButton, SpinBox
from napari.layers import Image

from ..engine.train.devices import device_choices
from ..engine.workflows.base import workflow_classes
from .classify import ClassifyPanel
from .fields import ConfigForm, compact, config_field, dock_layout, form, group, section, status_label
from .layers import layer_combo
from .predict_setup import FROM_FILE, JUST_TRAINED


class PredictForm:
    """Mixin of PredictWidget: builds its fields and layout."""

    def _build_form(self, viewer) -> None:
        self.model_source = ComboBox(
            choices=[FROM_FILE, JUST_TRAINED],
            value=FROM_FILE,
            label="model",
            tooltip="A checkpoint file, or the best checkpoint of the training just done in the Train dock",
        )
        self.checkpoint = compact(
            FileEdit(
                mode="r",
                filter="*.pth *.zip",
                label="checkpoint",
                tooltip="A napari-bioflow checkpoint (.pth) or a BioImage Model Zoo package it exported (.zip)",
            )
        )
        self.trained = status_label(
            "none yet: train one in the Train dock", label="trained", tooltip="The checkpoint of the last training"
        )
        self.image = layer_combo(viewer, Image, what="image layer", label="image", tooltip="The Image layer to predict")
        self._target_kind = Image
        self.target = layer_combo(
            viewer,
            lambda: self._target_kind,
            what="target layer",
            auto=False,
            label="target",
            tooltip="Optional ground truth of the image: the metrics are computed against it",
        )
        self.target.value = None
        self.metrics = status_label(label="metrics", tooltip="The metrics against the target, when one is chosen")
        f = self.form = ConfigForm()  # defaults, bounds and tooltips from the config's predict section
        self.section_options = list(dict.fromkeys(p for c in workflow_classes() for p in c.predict_section_options))
        for path in self.section_options:  # a workflow's own prediction settings (crappify: degrade first)
            f.add(path, label="degrade first" if path.endswith("degrade_at_prediction") else path.split(".")[-1])
        f.add("predict.tta", label="test-time augmentation")
        self.tile = SpinBox(
            value=0,
            min=0,
            max=8192,
            step=16,
            label="tile size (0 = auto)",
            tooltip=config_field("predict.tile_size").description,
        )
        f.add("predict.overlap", label="tile overlap", step=0.0625, decimals=4)
        f.add("predict.batch_size", label="tiles per batch", max=1024)
        f.add("device", choices=device_choices())  # auto, cpu and the GPUs found
        f.add("predict.z_filter", label="3D: Z median filter", max=31)
        f.add("predict.yz_filter", label="3D: YZ median filter", max=31)
        f.add("name", label="experiment", value="prediction")
        f.add("output_dir", label="output folder", value=Path.home() / "bioflow_runs")
        f.add("predict.output_format", label="output format")
        f.add("predict.full_image", label="whole image in one pass")
        self.predict_button = PushButton(text="Predict", tooltip="Predict the chosen image with the chosen model")
        self.cancel_button = PushButton(text="Cancel", enabled=False, tooltip="Stop after the current tiles")
        self.progress = ProgressBar(value=0, min=0, max=1, label="")
        self.status = status_label()
        self.message = status_label(tooltip="The last message of this dock, in full (select to copy)")

        self.classify = ClassifyPanel(viewer, self.image)  # classification checkpoints: a class per image
        self.classify_group = section("Classification", self.classify)
        self.advanced = section(
            "Advanced",
            form(
                self.tile,
                *(
                    f[p]
                    for p in (
                        "predict.overlap",
                        "predict.batch_size",
                        "device",
                        "predict.z_filter",
                        "predict.yz_filter",
                    )
                ),
            ),
            expanded=False,
        )
        sections = [
            section(
                "Model and image",
                form(
                    self.model_source,
                    self.checkpoint,
                    self.trained,
                    self.image,
                    self.target,
                    *(f[p] for p in self.section_options),
                    f["predict.tta"],
                ),
            ),
            self.classify_group,
            section("Output", form(f["name"], f["output_dir"], f["predict.output_format"], f["predict.full_image"])),
            self.advanced,
        ]
        buttons = Container(widgets=[self.predict_button, self.cancel_button], layout="horizontal", labels=False)
        buttons.margins = (0, 0, 0, 0)
        run = group("Run", buttons, self.progress, self.status, self.message, form(self.metrics))
        self._scroll = dock_layout(self, sections, [run])
        self.setMinimumWidth(320)
