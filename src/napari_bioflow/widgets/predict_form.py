"""The Predict dock's fields and layout (defaults, bounds and tooltips from the config's predict section)."""

from __future__ import annotations

from pathlib import Path

from magicgui.widgets import ComboBox, Container, FileEdit, ProgressBar, PushButton, SpinBox
from napari.layers import Image
from qtpy.QtWidgets import QVBoxLayout
from superqt import QCollapsible

from ..engine.workflows.base import workflow_classes
from .classify import ClassifyPanel
from .fields import ConfigForm, compact, config_field, form, group, status_label
from .layers import layer_combo
from .predict_setup import FROM_FILE, JUST_TRAINED


class PredictForm:
    """Mixin of PredictWidget: builds its fields and layout."""

    def _build_form(self, viewer) -> None:
        self.model_source = ComboBox(choices=[FROM_FILE, JUST_TRAINED], value=FROM_FILE, label="model")
        self.checkpoint = compact(
            FileEdit(mode="r", filter="*.pth", label="checkpoint", tooltip="A napari-bioflow checkpoint (.pth)")
        )
        self.trained = status_label("none yet: train one in the Train dock", label="trained")
        self.image = layer_combo(viewer, Image, label="image", tooltip="The Image layer to predict")
        self._target_kind = Image
        self.target = layer_combo(
            viewer,
            lambda: self._target_kind,
            label="target",
            nullable=True,
            tooltip="Optional ground truth of the image: the metrics are computed against it",
        )
        self.target.value = None
        self.metrics = status_label(label="metrics")
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
        f.add("device")
        f.add("predict.z_filter", label="3D: Z median filter", max=31)
        f.add("predict.yz_filter", label="3D: YZ median filter", max=31)
        f.add("name", label="experiment", value="prediction")
        f.add("output_dir", label="output folder", value=Path.home() / "bioflow_runs")
        self.predict_button = PushButton(text="Predict")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(value=0, min=0, max=1, label="")
        self.status = status_label()

        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(
            group(
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
            )
        )
        self.classify = ClassifyPanel(viewer, self.image)  # classification checkpoints: a class per image
        self.classify_group = group("Classification")
        self.classify_group.layout().addWidget(self.classify)
        layout.addWidget(self.classify_group)
        layout.addWidget(group("Output", form(f["name"], f["output_dir"])))
        self.advanced = QCollapsible("Advanced")
        self.advanced.addWidget(
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
            ).native
        )
        layout.addWidget(self.advanced)
        buttons = Container(widgets=[self.predict_button, self.cancel_button], layout="horizontal", labels=False)
        layout.addWidget(group("Run", buttons, self.progress, self.status, form(self.metrics)))
        layout.addStretch(1)
        self.setMinimumWidth(320)
