"""The Train dock's fields and their layout: every widget made from the config's fields (default, bounds,
tooltip) and grouped into sections; what shows and what the fields follow live in train_view.py."""

from __future__ import annotations

from pathlib import Path

from magicgui.widgets import ComboBox, Container, FloatSpinBox, LineEdit, ProgressBar, PushButton, RadioButtons, SpinBox

from ..engine.train.devices import device_choices
from .chart import TrainingChart, theme_colors
from .classes import ClassLayerList
from .fields import ConfigForm, dock_layout, form, group, section, status_label
from .layers import (
    LayerPair,
    PairList,
)
from .train_fields import (
    _AUGMENT_PROBABILITIES,
    model_options_of,
    section_options,
    variant_choices,
    workflow_choices,
)


class TrainForm:
    """Mixin of TrainWidget: builds its fields and layout."""

    def _build_form(self, viewer) -> None:
        from magicgui.widgets import CheckBox

        from ..engine.models import list_models
        from ..engine.train.live_preview import DEFAULT_PREVIEW_MS

        f = self.form = ConfigForm()

        # --- workflow ---------------------------------------------------------------------------------
        f.add("workflow", choices=workflow_choices())
        self.variant_fields = variant_choices()
        for path, choices in self.variant_fields.items():  # e.g. the self-supervised pretext task
            f.add(
                path,
                label=path.split(".")[-1].replace("_", " ") + (" task" if path.endswith("pretext") else ""),
                choices=choices,
            )
        # --- data -------------------------------------------------------------------------------------
        self.source = RadioButtons(
            choices=["layers", "folders"],
            value="layers",
            orientation="horizontal",
            label="from",
            tooltip="Train on layers of the viewer, or on folders of images (as the CLI does)",
        )
        self.pairs = PairList(viewer)
        self.class_layers = ClassLayerList(viewer)  # classification: Image layers given a class
        self.folders = form(
            f.add("data.train_raw", label="raw folder"),
            f.add("data.train_label", label="label folder"),
            f.add("data.multiple_raw", label="several raws per target"),
        )
        self.validation = ComboBox(
            choices=["split", "layers", "folders"],
            value="split",
            label="validation",
            tooltip="Hold aside a fraction of the training data, or validate on a layer pair or folders",
        )
        f.add("data.val_split", label="fraction", step=0.05, max=0.9)
        self.val_pair = LayerPair(viewer, removable=False)
        self.val_folders = form(
            f.add("data.val_raw", label="raw folder"), f.add("data.val_label", label="label folder")
        )
        # --- main fields ------------------------------------------------------------------------------
        f.add("ndim", label="dimensions", choices=[("2D", 2), ("3D", 3)])
        f.add("data.in_channels", label="channels", max=64)
        f.add("n_classes", label="classes", max=1000)
        f.add("data.target_channels", label="target channels", max=64)
        f.add("classification.fit", label="other sizes")
        self.patch_z = SpinBox(value=32, min=1, max=1024, label="patch Z", tooltip="Patch depth in voxels (3D)")
        self.patch_yx = SpinBox(
            value=256,
            min=8,
            max=8192,
            step=16,
            label="patch Y, X",
            tooltip="Patch height and width in pixels; must fit in every image",
        )
        f.add("model.name", label="model", choices=list_models(2))
        mae = model_options_of("mae")
        self.token_size = SpinBox(
            value=mae.get("patch_size", 16),
            min=0,
            max=512,
            label="token size (0 = auto)",
            tooltip="Size in pixels (per axis) of the ViT tokens: model option patch_size. "
            "Must divide the patch size. auto (vit): about 8 tokens per axis.",
        )
        self._token_model = "mae"  # the model whose default the token size shows
        f.add("model.start_from", label="start from checkpoint", mode="r", filter="*.pth")
        f.add("train.loss", label="loss")
        f.add("train.epochs", max=100_000)
        f.add("train.batch_size", label="batch size", max=4096)
        f.add("train.learning_rate", label="learning rate", step=1e-4, max=10.0)
        f.add("train.patience", max=100_000)
        f.add("name", label="experiment")
        f.add("output_dir", label="output folder", value=Path.home() / "bioflow_runs")
        # --- self-supervision -------------------------------------------------------------------------
        f.add("self_supervised.noise", label="noise (× max)", step=0.05)
        f.add("self_supervised.downsample_area", label="down-sampling area", step=1.0)
        f.add("self_supervised.degrade_at_prediction", label="degrade at prediction")
        f.add("self_supervised.cache_degraded", label="degraded copies to crappified/")
        self.mask_type = ComboBox(
            choices=["grid", "random"],
            value=mae.get("mask_type", "grid"),
            label="mask type",
            tooltip="grid: a fixed, evenly spread set of hidden tokens (a checkerboard at 0.5); "
            "random: a new random set per image",
        )
        self.mask_ratio = FloatSpinBox(
            value=mae.get("mask_ratio", 0.5),
            min=0.05,
            max=0.95,
            step=0.05,
            label="mask ratio",
            tooltip="Fraction of the tokens hidden from the encoder",
        )
        # --- advanced ---------------------------------------------------------------------------------
        self.feature_maps = LineEdit(
            value="",
            label="feature maps",
            tooltip="Feature maps per U-Net level, e.g. 16, 32, 64, 128, 256 (empty = model default)",
        )
        self.feature_maps.native.setPlaceholderText("model default")
        self.model_options = LineEdit(
            value="",
            label="model options",
            tooltip="More options of the chosen model as name: value pairs, e.g. "
            "embed_dim: 64, depth: 2 (see `napari-bioflow models`)",
        )
        self.model_options.native.setPlaceholderText("e.g. embed_dim: 64, depth: 2")
        advanced = [
            f.add(p, label=lab, **kw)
            for p, lab, kw in (
                ("train.optimizer", "optimizer", {}),
                ("train.momentum", "momentum", {"step": 0.05}),
                ("train.scheduler", "scheduler", {}),
                ("train.warmup_epochs", "warm-up epochs", {}),
                ("train.loss", "loss", {}),
                ("train.sampling", "patch order", {}),
                ("train.ema", "EMA decay (0 = off)", {"step": 0.01}),
                ("train.pick_threshold", "threshold from validation", {}),
                ("train.amp", "mixed precision (GPU)", {}),
                ("train.channels_last", "channels-last (GPU)", {}),
                ("train.compile", "torch.compile (GPU)", {}),
                ("train.weight_decay", "weight decay", {"step": 1e-4}),
                ("train.steps_per_epoch", "steps per epoch (0 = auto)", {}),
                ("train.resume", "resume from checkpoint", {"mode": "r", "filter": "*.pth"}),
                ("data.axes", "axes (e.g. CYX, ZCYX)", {}),
                ("data.normalization", "normalization", {}),
                ("data.custom_mean", "custom mean", {}),
                ("data.custom_std", "custom std", {}),
                ("data.percentile_low", "low percentile", {"step": 0.1}),
                ("data.percentile_high", "high percentile", {"step": 0.1}),
                ("data.foreground_sampling", "foreground sampling", {"step": 0.1}),
                ("data.save_prob_map", "sampling map to prob_map/", {}),
                ("augment.enable", "augment", {}),
                ("augment.samples", "augmented samples to aug/", {"max": 1000}),
                ("augment.flips", "flips", {}),
                ("augment.rotate90", "90° rotations", {}),
                ("augment.intensity", "intensity jitter", {"step": 0.05}),
                *((f"augment.{name}_prob", f"{words} p", {"step": 0.05}) for name, words in _AUGMENT_PROBABILITIES),
                ("seed", "seed", {"min": -(2**31), "max": 2**31 - 1}),
                ("device", "device", {"choices": device_choices()}),  # auto, cpu and the GPUs found
            )
        ]
        advanced[0:0] = [self.feature_maps, self.model_options]
        self.preview_ms = SpinBox(
            value=DEFAULT_PREVIEW_MS,
            min=0,
            max=600_000,
            step=100,
            label="preview ms per epoch",
            tooltip="After each epoch the model predicts the part of the image on screen in at most about this many "
            "milliseconds (a larger view is cut down around its centre, never below one patch); 0: no preview",
        )
        self.preview_every = SpinBox(
            value=1, min=1, max=100_000, label="preview every (epochs)", tooltip="Preview after every N-th epoch"
        )
        advanced += [self.preview_ms, self.preview_every]
        # --- run --------------------------------------------------------------------------------------
        self.train_button = PushButton(text="Train", tooltip="Train with these fields (checked beside the button)")
        self.cancel_button = PushButton(
            text="Cancel", enabled=False, tooltip="Stop after the current batch; the best checkpoint stays"
        )
        self.load_button = PushButton(
            text="Load config…", tooltip="Set the fields from a saved run config (config_files/<run>.yaml)"
        )
        self.progress = ProgressBar(value=0, min=0, max=1, label="")
        self.status = status_label()
        self.check_label = status_label(tooltip="What would stop a run with these fields, checked as they change")
        self.check_label.native.setStyleSheet("color: #ff8a80;")
        self.check_label.visible = False
        self.message = status_label(tooltip="The last message of this dock, in full (select to copy)")
        self.keep_preview = CheckBox(
            value=False, text="keep preview", tooltip="Keep the preview layer when the training ends"
        )
        self.chart = TrainingChart(*theme_colors(viewer))

        main = (
            [f[p] for p in ("ndim", "data.in_channels", "n_classes", "data.target_channels", "classification.fit")]
            + [self.patch_z, self.patch_yx, f["model.name"], self.token_size]
            + [
                f[p]
                for p in (
                    "model.start_from",
                    "train.loss",
                    "train.epochs",
                    "train.batch_size",
                    "train.learning_rate",
                    "train.patience",
                )
            ]
        )
        self._ssl_paths = [p for p in section_options() if p.startswith("self_supervised.")]
        self.ssl_group = section(
            "Self-supervision", form(*(f[p] for p in self._ssl_paths), self.mask_type, self.mask_ratio)
        )
        self.advanced = section("Advanced", form(*advanced), expanded=False)
        sections = [
            section("Workflow", form(f["workflow"], *(f[p] for p in self.variant_fields)), self.load_button),
            section(
                "Training data",
                form(self.source),
                self.pairs,
                self.class_layers,
                self.folders,
                form(self.validation, f["data.val_split"]),
                self.val_pair,
                self.val_folders,
            ),
            section("Model and training", form(*main)),
            self.ssl_group,
            section("Output", form(f["name"], f["output_dir"])),
            self.advanced,
        ]
        buttons = Container(widgets=[self.train_button, self.cancel_button], layout="horizontal", labels=False)
        buttons.margins = (0, 0, 0, 0)
        self.chart.setMinimumHeight(110)
        self.chart.setMaximumHeight(150)  # compact: the buttons and progress stay in view on a 768 px screen
        run = group("Run", buttons, self.check_label, self.progress, self.status, self.message, self.keep_preview)
        self._scroll = dock_layout(self, sections, [run, self.chart])
        self.setMinimumWidth(340)
