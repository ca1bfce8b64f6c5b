"""The Train dock: builds a RunConfig and samples from its fields and layers, runs the engine's Trainer in a napari
thread worker, and turns its reports into progress, a live chart and a preview layer. No training logic here.

The workflow chosen at the top decides which fields show: segmentation trains on (Image, Labels) pairs with classes;
image to image on (raw Image, target Image) pairs with target channels and an L1/MSE loss; self-supervision on raw
Image layers alone, with the crappify (noise, down-sampling) or masking (MAE token size, mask type and ratio) options.
The model list follows the workflow and the dimensions."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from magicgui.widgets import ComboBox, Container, FloatSpinBox, LineEdit, ProgressBar, PushButton, RadioButtons, SpinBox
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QScrollArea, QVBoxLayout, QWidget
from superqt import QCollapsible

from ..config import RunConfig
from ..engine.errors import InputError
from ..engine.workflows import get_workflow
from .chart import TrainingChart, theme_colors
from .classes import ClassLayerList
from .fields import ConfigForm, form, format_seconds, group, parse_ints, status_label
from .jobs import InputsNotSaved, TrainingFailed, training_job
from .layers import (
    LayerPair,
    PairList,
    connect_while_alive,
    follow_layers,
    guess_classes,
    guess_ndim,
    layer_array,
    layer_channels,
    spatial_axes,
)
from .preview import Preview, PreviewFailed, PreviewResult, camera, visible_region
from .shared import last_trained, load_triton_safely
from .train_fields import (
    _AUGMENT_3D_ONLY,
    _AUGMENT_PROBABILITIES,
    _floor16,
    model_options_of,
    parse_options,
    section_options,
    variant_choices,
    workflow_choices,
)

log = logging.getLogger(__name__)


class TrainWidget(QWidget):
    def __init__(self, napari_viewer):
        super().__init__()
        from ..engine.models import list_models

        self.viewer = viewer = napari_viewer
        self.trainer = None
        self.preview: Preview | None = None
        self.result = None  # the DoneReport of the last training
        self.preview_budget = 0.05  # previews may cost at most this fraction of the training time
        self._worker = None
        self._adapted = (None, None)
        self._running: dict = {"trainer": None}  # a closed dock stops its training (the best checkpoint stays)
        self.destroyed.connect(lambda *_, running=self._running: running["trainer"] and running["trainer"].cancel())
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
            choices=["layers", "folders"], value="layers", orientation="horizontal", label="from"
        )
        self.pairs = PairList(viewer)
        self.class_layers = ClassLayerList(viewer)  # classification: Image layers given a class
        self.folders = form(
            f.add("data.train_raw", label="raw folder"), f.add("data.train_label", label="label folder")
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
                ("train.weight_decay", "weight decay", {"step": 1e-4}),
                ("train.steps_per_epoch", "steps per epoch (0 = auto)", {}),
                ("train.resume", "resume from checkpoint", {"mode": "r", "filter": "*.pth"}),
                ("data.normalization", "normalization", {}),
                ("data.percentile_low", "low percentile", {"step": 0.1}),
                ("data.percentile_high", "high percentile", {"step": 0.1}),
                ("data.foreground_sampling", "foreground sampling", {"step": 0.1}),
                ("augment.enable", "augment", {}),
                ("augment.flips", "flips", {}),
                ("augment.rotate90", "90° rotations", {}),
                ("augment.intensity", "intensity jitter", {"step": 0.05}),
                *((f"augment.{name}_prob", f"{words} p", {"step": 0.05}) for name, words in _AUGMENT_PROBABILITIES),
                ("seed", "seed", {"min": -(2**31), "max": 2**31 - 1}),
                ("device", "device", {}),
            )
        ]
        advanced[0:0] = [self.feature_maps, self.model_options]
        # --- run --------------------------------------------------------------------------------------
        self.train_button = PushButton(text="Train")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(value=0, min=0, max=1, label="")
        self.status = status_label()
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
        content = QWidget()
        layout = QVBoxLayout(content)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(group("Workflow", form(f["workflow"], *(f[p] for p in self.variant_fields))))
        layout.addWidget(
            group(
                "Training data",
                form(self.source),
                self.pairs,
                self.class_layers,
                self.folders,
                form(self.validation, f["data.val_split"]),
                self.val_pair,
                self.val_folders,
            )
        )
        layout.addWidget(group("Model and training", form(*main)))
        self._ssl_paths = [p for p in section_options() if p.startswith("self_supervised.")]
        self.ssl_group = group(
            "Self-supervision", form(*(f[p] for p in self._ssl_paths), self.mask_type, self.mask_ratio)
        )
        layout.addWidget(self.ssl_group)
        layout.addWidget(group("Output", form(f["name"], f["output_dir"])))
        self.advanced = QCollapsible("Advanced")
        self.advanced.addWidget(form(*advanced).native)
        layout.addWidget(self.advanced)
        buttons = Container(widgets=[self.train_button, self.cancel_button], layout="horizontal", labels=False)
        layout.addWidget(group("Run", buttons, self.progress, self.status))
        layout.addWidget(self.chart)
        layout.addStretch(1)
        self._scroll = scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        scroll.setWidget(content)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(scroll)
        self.setMinimumWidth(340)

        self.source.changed.connect(self._update_visibility)
        self.validation.changed.connect(self._update_visibility)
        f["workflow"].changed.connect(self._on_workflow)
        for path in self.variant_fields:
            f[path].changed.connect(self._on_workflow)
        f["model.name"].changed.connect(self._update_visibility)
        for path in ("train.optimizer", "train.scheduler", "data.normalization"):  # their own options follow them
            f[path].changed.connect(self._update_visibility)
        f["ndim"].changed.connect(self._on_ndim)
        self.pairs.changed.connect(self._adapt)
        self.class_layers.changed.connect(self._adapt)
        self.train_button.changed.connect(self.start)
        self.cancel_button.changed.connect(self.cancel)
        follow_layers(self, viewer, self.reset_choices)
        cam = camera(viewer)  # the preview follows the field of view
        events = [cam.events.center, cam.events.zoom, viewer.dims.events.current_step, viewer.dims.events.ndisplay]
        if hasattr(getattr(viewer, "canvas", None), "events"):
            events.append(viewer.canvas.events.size)
        connect_while_alive(self, [(e, self._capture_view) for e in events])
        self._on_workflow()
        self._adapt()
        self._on_ndim(f["ndim"].value)

    def showEvent(self, event) -> None:
        # as wide as the fields need once styled (the theme's style sheet applies only when shown); taller scrolls
        content = self._scroll.widget()
        self._scroll.setMinimumWidth(
            content.minimumSizeHint().width() + self._scroll.verticalScrollBar().sizeHint().width()
        )
        super().showEvent(event)

    # --- fields -----------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._worker is not None

    def reset_choices(self, *_) -> None:
        self.pairs.reset_choices()
        self.class_layers.reset_choices()
        self.val_pair.reset_choices()

    @property
    def workflow(self) -> str:
        return self.form["workflow"].value

    @property
    def workflow_class(self):
        """The chosen workflow's class (its variant too, e.g. the self-supervised pretext): what the fields follow."""
        from ..engine.workflows.base import workflow_class

        cls = workflow_class(self.workflow)
        return workflow_class(self.workflow, self.form[cls.variant[0]].value) if cls.variant else cls

    def _on_workflow(self, *_) -> None:
        """The pairs, the loss choices, the model list and the chart follow the workflow (and its variant)."""
        cls = self.workflow_class
        mode = cls.trains_from if cls.trains_from in ("labels", "image") else "none"
        self.pairs.set_mode(mode)
        self.val_pair.set_mode(mode)
        loss = self.form["train.loss"]
        current = loss.value
        loss.choices = list(cls.losses)
        loss.value = current if current in loss.choices else cls.losses[0]
        self.chart.set_metric(cls.chart_metric)
        self._update_models()
        self._adapted = (self._adapted[0], None)  # read the second layer (classes, target channels) again
        self._adapt()
        self._update_visibility()

    def _update_models(self) -> None:
        name = self.form["model.name"]
        current = name.value
        cls = self.workflow_class
        name.choices = cls.models(self.form["ndim"].value)
        if current in name.choices:
            name.value = current
        elif name.choices:
            name.value = cls.default_model if cls.default_model in name.choices else name.choices[0]

    def _update_visibility(self, *_) -> None:
        f, wf = self.form, self.workflow_class
        labels, target, cls = (wf.trains_from == w for w in ("labels", "image", "classes"))
        layers = self.source.value == "layers"
        self.pairs.visible, self.class_layers.visible, self.folders.visible = (
            layers and not cls,
            layers and cls,
            not layers,
        )
        choices = (
            ["split", "folders"] if cls else ["split", "layers", "folders"]
        )  # classes are validated by split or folder
        if list(self.validation.choices) != choices:
            self.validation.choices = choices
        mode = self.validation.value
        f["data.val_split"].visible = mode == "split"
        self.val_pair.visible, self.val_folders.visible = mode == "layers", mode == "folders"
        second = "label folder" if labels else "target folder"
        for path in ("data.train_label", "data.val_label"):
            f[path].visible = labels or target
            f[path].label = second
        for path in ("data.train_raw", "data.val_raw"):
            f[path].label = "class folders" if cls else "raw folder"
        for path in section_options():  # each workflow's own options (crappify's noise, classification's fit)
            f[path].visible = path in wf.section_options
        for path in self.variant_fields:
            f[path].visible = wf.variant is not None and wf.variant[0] == path
        f["n_classes"].visible = f["data.foreground_sampling"].visible = (
            labels  # classification: from the classes given
        )
        f["data.target_channels"].visible = target
        f["train.loss"].visible = len(wf.losses) > 1  # e.g. the MAE's loss is the MSE on its hidden tokens
        options = model_options_of(f["model.name"].value)
        self.ssl_group.setVisible(any(p in self._ssl_paths for p in wf.section_options) or "mask_type" in options)
        self.feature_maps.visible = "feature_maps" in options
        self.token_size.visible = "patch_size" in options
        if "patch_size" in options and f["model.name"].value != self._token_model:  # a new model: its own default
            self._token_model = f["model.name"].value
            self.token_size.value = options["patch_size"]
        self.mask_type.visible, self.mask_ratio.visible = "mask_type" in options, "mask_ratio" in options
        f["train.momentum"].visible = f["train.optimizer"].value == "SGD"
        f["train.warmup_epochs"].visible = f["train.scheduler"].value == "warmup_cosine"
        f["data.percentile_low"].visible = f["data.percentile_high"].visible = (
            f["data.normalization"].value == "percentile"
        )

    def _on_ndim(self, ndim: int) -> None:
        self.patch_z.visible = ndim == 3
        for name in _AUGMENT_3D_ONLY:  # sections along Z: none in 2D (the config refuses them there)
            self.form[f"augment.{name}_prob"].visible = ndim == 3
            if ndim == 2:
                self.form[f"augment.{name}_prob"].value = 0.0
        self._update_models()

    def _adapt(self, *_) -> None:
        """Dimensions, channels, patch size, classes and target channels follow the first pair's layers (until the
        user edits them)."""
        if self.workflow_class.trains_from == "classes":
            return self._adapt_classes()
        first = self.pairs.pairs[0]
        image, second = first.image_layer.value, first.second
        if image is not None and image is not self._adapted[0]:
            ndim = guess_ndim(image)
            self.form["ndim"].value = ndim
            self.form["data.in_channels"].value = layer_channels(image, ndim) or 1
            shape = [layer_array(image).shape[a] for a in spatial_axes(image, ndim) or []]
            if shape:
                self.patch_yx.value = max(8, _floor16(min(shape[-2:]), 256 if ndim == 2 else 128))
                self.patch_z.value = _floor16(shape[0], 32) if ndim == 3 else self.patch_z.value
        if second is not None and second is not self._adapted[1]:
            if first.mode == "labels":
                self.form["n_classes"].value = max(2, guess_classes(second) or 2)
            else:
                self.form["data.target_channels"].value = layer_channels(second, self.form["ndim"].value) or 1
        self._adapted = (image, second)

    def _adapt_classes(self) -> None:
        """Dimensions, channels and patch size follow the first class row's image (a slice when split)."""
        geometry = self.class_layers.geometry()
        if geometry is None or geometry == self._adapted[0]:
            return
        ndim, channels, shape = geometry
        self.form["ndim"].value, self.form["data.in_channels"].value = ndim, channels
        self.patch_yx.value = max(8, _floor16(min(shape[-2:]), 256 if ndim == 2 else 128))
        if ndim == 3:
            self.patch_z.value = _floor16(shape[0], 32)
        self._adapted = (geometry, None)

    def build_config(self) -> RunConfig:
        data = self.form.values()
        ndim = data["ndim"]
        data["data"]["patch_size"] = [self.patch_z.value] * (ndim == 3) + [self.patch_yx.value] * 2
        known, options = model_options_of(data["model"]["name"]), {}
        if "feature_maps" in known and self.feature_maps.value.strip():
            options["feature_maps"] = parse_ints(self.feature_maps.value, "Feature maps")
        if "patch_size" in known:
            options["patch_size"] = self.token_size.value
        if "mask_type" in known:
            options["mask_type"] = self.mask_type.value
        if "mask_ratio" in known:
            options["mask_ratio"] = round(self.mask_ratio.value, 4)
        options.update(parse_options(self.model_options.value))
        data["model"]["options"] = options
        if self.source.value == "layers":
            data["data"]["train_raw"] = data["data"]["train_label"] = None
        if self.workflow_class.trains_from not in ("labels", "image"):
            data["data"]["train_label"] = data["data"]["val_label"] = None
        if self.validation.value != "folders":
            data["data"]["val_raw"] = data["data"]["val_label"] = None
        return RunConfig.from_dict(data, source="Train")

    def _samples(self, cfg, pairs: list[LayerPair], notes: list[str]):
        from ..engine.data.sources import make_sample

        out = []
        for pair in pairs:
            image, second = pair.image_layer.value, pair.second
            if image is None:
                raise InputError(
                    "Choose an Image layer for every "
                    + ("image" if pair.mode == "none" else "pair")
                    + " (or load one into the viewer)."
                )
            name = f"image layer '{image.name}'"
            if pair.mode == "none":
                out.append(make_sample(layer_array(image), name, cfg, notes=notes, need_label=False))
                continue
            if second is None:
                raise InputError(f"Choose a {'Labels' if pair.mode == 'labels' else 'target Image'} layer for {name}.")
            kind = "labels layer" if pair.mode == "labels" else "target layer"
            out.append(
                make_sample(
                    layer_array(image),
                    name,
                    cfg,
                    label=layer_array(second),
                    label_name=f"{kind} '{second.name}'",
                    notes=notes,
                )
            )
        return out

    def _class_samples(self, cfg):
        """Classification from layers: the rows' images with their classes, which become the config's classes."""
        from ..engine.data.classification_data import set_classes

        if self.source.value != "layers":
            return None
        samples, names = self.class_layers.samples(cfg)
        if len(names) < 2:
            raise InputError(f"Every image is of class '{names[0]}': give the images at least two classes.")
        set_classes(cfg, names)
        return samples

    def _inputs_to_save(self, cfg) -> dict[str, list[tuple[str, object]]]:
        """The layer arrays this run trains on, by the config's data field (train_raw, train_label, val_raw,
        val_label), as (file stem, array) in training order: written with the run (jobs.save_inputs), they let its
        saved config repeat it. Classification: train_raw holds a sub-folder per class."""
        if self.source.value != "layers":
            return {}

        def stem(i: int, name: str) -> str:  # numbered: the folders are read in sorted order, as trained
            return f"{i:03d}_{re.sub(r'[^A-Za-z0-9_.-]+', '_', name).strip('_') or 'layer'}"

        if get_workflow(cfg).trains_from == "classes":
            images = [im for row in self.class_layers.rows for im in row.images()]
            return {"train_raw": [(f"{cls}/{stem(i, name)}", data) for i, (name, data, cls) in enumerate(images)]}
        out: dict[str, list] = {}
        groups = [("train", self.pairs.pairs)] + [("val", [self.val_pair])] * (self.validation.value == "layers")
        for prefix, pairs in groups:
            for i, pair in enumerate(pairs):
                name = stem(i, pair.image_layer.value.name)
                out.setdefault(f"{prefix}_raw", []).append((name, layer_array(pair.image_layer.value)))
                if pair.mode != "none":
                    out.setdefault(f"{prefix}_label", []).append((name, layer_array(pair.second)))
        return out

    def _make_preview(self, cfg, train) -> Preview | None:
        """Preview the first training image (layers) or the selected Image layer (folders), if it fits the config."""
        from napari.layers import Image

        from ..engine.data.sources import to_channels_last

        if not get_workflow(cfg).dense:  # a class per image: there is no map to preview
            return None
        layer = self.pairs.pairs[0].image_layer.value if train else self.viewer.layers.selection.active
        if not isinstance(layer, Image) or spatial_axes(layer, cfg.ndim) is None:
            return None
        try:
            image = (
                train[0].raw
                if train
                else to_channels_last(layer_array(layer), cfg.ndim, cfg.data.in_channels, layer.name)
            )
        except InputError:
            return None
        preview = Preview(layer, image, self.preview_budget)
        if self.preview is not None and self.preview.name == preview.name:
            preview.layer = self.preview.layer  # keep updating the same preview layer
        return preview

    # --- run --------------------------------------------------------------------------------------------
    def start(self, *_) -> None:
        from napari.qt.threading import create_worker

        from ..engine.train.trainer import Trainer

        if self.running:
            return
        load_triton_safely()
        notes: list[str] = []
        try:
            cfg = self.build_config()
            if get_workflow(cfg).trains_from == "classes":
                train, val = self._class_samples(cfg), None
            else:
                train = self._samples(cfg, self.pairs.pairs, notes) if self.source.value == "layers" else None
                val = self._samples(cfg, [self.val_pair], notes) if self.validation.value == "layers" else None
            inputs = self._inputs_to_save(cfg)
        except InputError as e:
            show_error(str(e))
            return
        for note in notes:
            show_info(note)
        self.trainer = Trainer(cfg, train=train, val=val)
        self.preview = self._make_preview(cfg, train)
        self.result = None
        self.chart.set_metric(get_workflow(cfg).chart_metric)
        self.chart.clear()
        self.progress.value, self.status.value = 0, "preparing…"
        worker = create_worker(
            training_job, self.trainer, self.preview, inputs, _start_thread=False, _ignore_errors=True
        )
        worker.yielded.connect(self._on_report)
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self._running["trainer"] = self.trainer
        self._capture_view()  # the field of view as training starts; camera and slider events update it
        self.train_button.enabled, self.cancel_button.enabled = False, True
        worker.start()

    def cancel(self, *_) -> None:
        if self.trainer is not None and self.running:
            self.trainer.cancel()  # cooperative: the trainer stops at the next batch; the best checkpoint stays
            self.cancel_button.enabled = False
            self.status.value = "cancelling…"

    def _capture_view(self, *_) -> None:
        preview = self.preview
        if not self.running or preview is None or preview.source not in self.viewer.layers:
            return
        try:
            cfg = self.trainer.cfg
            preview.view = visible_region(
                self.viewer, preview.source, spatial_axes(preview.source, cfg.ndim), cfg.data.patch_size
            )
        except Exception:  # the view is a nicety; never break the viewer over it
            log.exception("could not read the field of view")

    def _on_report(self, r) -> None:
        from ..engine.train.trainer import DoneReport, EpochReport, StartReport, StepReport

        if isinstance(r, StepReport):
            self.progress.value = (r.epoch - 1) * r.steps + r.step
            self.status.value = (
                f"epoch {r.epoch}/{r.epochs} · step {r.step}/{r.steps} · loss {r.loss:.4f} · "
                f"ETA {format_seconds(r.eta_seconds)}"
            )
        elif isinstance(r, EpochReport):
            self.chart.add(r.epoch, r.train_loss, r.val_loss, r.metrics.get(self.chart.metric, float("nan")))
            self.status.value = (
                f"epoch {r.epoch}/{r.epochs} · loss {r.train_loss:.4f} · val loss {r.val_loss:.4f} · "
                f"ETA {format_seconds(r.eta_seconds)}"
            )
            self._capture_view()
        elif isinstance(r, PreviewResult):
            self.preview.show(self.viewer, r)
        elif isinstance(r, StartReport):
            self.progress.max = max(1, r.steps_per_epoch * self.trainer.cfg.train.epochs)
            self.status.value = f"run {r.run_name}: {r.n_train} training / {r.n_val} validation image(s)"
            for note in r.notes:
                show_info(note)
        elif isinstance(r, DoneReport):
            self.result = r
            self.status.value = f"{r.reason.replace('_', ' ')} after {r.epochs_run} epoch(s); best epoch {r.best_epoch}"
            if r.checkpoint is not None:
                last_trained.set(r.checkpoint)
            show_info(
                f"Training {r.reason.replace('_', ' ')}. Best checkpoint: {r.checkpoint or 'none (no epoch finished)'}"
            )
        elif isinstance(r, PreviewFailed):
            show_warning(r.message)
        elif isinstance(r, InputsNotSaved):
            show_warning(str(r))
        elif isinstance(r, TrainingFailed):
            self.status.value = "not started: see the message"
            show_error(str(r))

    def _on_error(self, e: BaseException) -> None:
        # napari's worker already shows the error as a notification with its traceback; log it as well
        log.error("training failed", exc_info=(type(e), e, e.__traceback__))
        self.status.value = f"failed: {type(e).__name__}: {e}"

    def _on_finished(self) -> None:
        self._worker = self._running["trainer"] = None
        self.train_button.enabled, self.cancel_button.enabled = True, False
