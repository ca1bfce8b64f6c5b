"""The Predict dock: a checkpoint of any workflow (or the model just trained) and an Image layer in, the workflow's
layers out, all placed over the source layer (its scale and translate):

- semantic segmentation: a probability Image layer and a Labels layer;
- image to image: a float Image layer "<image> prediction";
- self-supervised crappify: "<image> degraded" (when degraded first) and "<image> restored";
- self-supervised masking: the MAE checks "<image> MAE original", "... MAE masked input", "... MAE reconstruction"
  and "... MAE reconstruction and visible".

While the prediction runs, the main layer is a dask array over the zarr store the engine writes, so tiles appear as
they are computed; the engine's ImagePrediction does all the work in a napari thread worker. An optional target layer
(a target Image for image to image, a Labels layer for segmentation) gives the metrics (PSNR and SSIM, or IoU)."""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from magicgui.widgets import ComboBox, Container, FileEdit, ProgressBar, PushButton, SpinBox
from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import QVBoxLayout, QWidget
from superqt import QCollapsible

from ..engine.errors import Cancelled, InputError
from ..engine.train.checkpoint_info import checkpoint_info
from ..engine.workflows.base import workflow_classes
from .classify import ClassifyPanel
from .fields import ConfigForm, compact, config_field, form, group, status_label
from .jobs import ProgressRelay, Stopped, prediction_job, setup_job
from .layers import (
    connect_while_alive,
    follow_layers,
    layer_array,
    layer_channels,
    layer_combo,
    placement,
    spatial_axes,
)
from .preview import intensity_mapping, to_intensity
from .shared import last_trained, load_triton_safely

log = logging.getLogger(__name__)
JUST_TRAINED, FROM_FILE = "model just trained", "checkpoint file"
JUST_TRAINED_OPTIONS = ("tta",)  # the prediction options shown before a checkpoint is chosen


def applies(info, option: str) -> bool:
    """Whether prediction option `option` ('tta', 'z_filter', ...) applies to the checkpoint described by `info`."""
    return option in (info.workflow.options_for(info.ndim) if info is not None else JUST_TRAINED_OPTIONS)


def is_in_memory(data) -> bool:
    """A numpy array held in memory: scanning it is quick enough for the GUI thread (not a memmap, dask or zarr)."""
    import numpy as np

    return isinstance(data, np.ndarray) and not isinstance(data, np.memmap)


@dataclass
class PendingJob:
    """A prediction checked as far as it can be without reading pixels: what `_create_job` needs."""

    predictor: Any
    data: Any  # the layer's array, as given to the engine
    image: Any  # channel-last view of it, for the NaN/inf scan
    name: str
    stem: str
    target: Any
    target_name: str
    layer: Any


def format_metrics(metrics: dict) -> str:
    """'PSNR 23.41 dB · SSIM 0.712' (per-class IoUs left out)."""
    from ..engine.workflows.spec import metric

    return " · ".join(metric(key).format(value) for key, value in metrics.items() if not key.startswith("iou_class"))


def first_channel_axis(data, scale, translate):
    """A channel-first image as a layer takes it: one channel dropped to the spatial axes, several kept in front."""
    if data.shape[0] == 1:
        return data[0], scale, translate
    return data, (1.0, *scale), (0.0, *translate)


class PredictWidget(QWidget):
    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = viewer = napari_viewer
        self.job = self.experiment = self.source = None
        self.prob_layer = self.labels_layer = None
        self.outputs: dict = {}  # output layers by role, e.g. {"prediction": layer} or the MAE checks
        self.kind = None  # the chosen checkpoint's CheckpointInfo (workflow class, ndim, config)
        self.result = None  # the engine's ImageResult of the last finished prediction
        self._worker = self._setup_worker = None
        self._cancel = threading.Event()
        self._last_refresh = self._refresh_cost = 0.0
        self._relay = ProgressRelay()
        self._relay.progress.connect(self._on_progress)
        self.destroyed.connect(self._cancel.set)  # a closed dock stops its prediction

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

        self.model_source.changed.connect(self._update_visibility)
        self.checkpoint.changed.connect(self._update_visibility)
        self.predict_button.changed.connect(self.start)
        self.cancel_button.changed.connect(self.cancel)
        connect_while_alive(self, [(last_trained.changed, self._on_trained)])
        follow_layers(self, viewer, self.reset_choices)
        if last_trained.checkpoint is not None:
            self._on_trained(last_trained.checkpoint)
        self._update_visibility()

    @property
    def running(self) -> bool:
        return self._worker is not None or self._setup_worker is not None or self.classify.running

    def reset_choices(self, *_) -> None:
        self.image.reset_choices()
        self.target.reset_choices()

    def _chosen_checkpoint(self) -> Path | None:
        if self.model_source.value == JUST_TRAINED:
            return last_trained.checkpoint
        text = str(self.checkpoint.line_edit.value).strip()
        return Path(text) if text else None

    def _update_visibility(self, *_) -> None:
        from_file = self.model_source.value == FROM_FILE
        self.checkpoint.visible, self.trained.visible = from_file, not from_file
        path = self._chosen_checkpoint()
        self.kind = info = checkpoint_info(path) if path is not None and path.is_file() else None
        wf = info.workflow if info is not None else None
        # the target field: a target Image for image to image, a Labels layer for segmentation, none otherwise
        kind = {"image": Image, "labels": Labels}.get(wf.target_layer if wf is not None else "")
        if kind is not None and kind is not self._target_kind:
            self._target_kind = kind
            self.target.value = None
            self.target.reset_choices()
        self.target.visible = kind is not None
        self.target.label = "labels" if kind is Labels else "target"
        cls = wf is not None and not wf.dense  # a class per image
        self.classify_group.setVisible(cls)
        self.metrics.visible = not cls  # the classification panel shows its own
        self.image.visible = not cls or self.classify.scope.value == "chosen layer"
        for w in (self.tile, *(self.form[p] for p in ("predict.overlap", "predict.batch_size"))):
            w.visible = not cls  # tiles mean nothing for a class per image
        for option in ("z_filter", "yz_filter", "tta"):
            self.form[f"predict.{option}"].visible = applies(info, option)
        for p in self.section_options:  # shown for the workflows that read them, starting at the checkpoint's value
            own = wf is not None and p in wf.predict_section_options
            self.form[p].visible = own
            if own and info.config_value(p) is not None:
                self.form[p].value = info.config_value(p)

    def _on_trained(self, checkpoint: Path) -> None:
        self.trained.value = Path(checkpoint).name
        self.trained.tooltip = str(checkpoint)
        self.model_source.value = JUST_TRAINED
        self._update_visibility()

    # --- set-up on the GUI thread: every check runs here, so bad input is reported at once ---------------------
    def _checkpoint(self) -> Path:
        if self.model_source.value == JUST_TRAINED:
            if last_trained.checkpoint is None:
                raise InputError(
                    "No model has been trained yet: train one in the Train dock or choose a checkpoint file."
                )
            return last_trained.checkpoint
        text = str(self.checkpoint.line_edit.value).strip()
        if not text:
            raise InputError("Choose a checkpoint file (.pth) to predict with.")
        return Path(text)

    def _settings(self, workflow, ndim: int) -> dict:
        """This dock's prediction settings as config sections: the options the checkpoint's workflow hides (3D label
        filters, TTA of a masked autoencoder) at their defaults; the workflow's own settings (crappify's degrade)."""
        from ..config import PredictConfig

        values = self.form.values()
        predict, defaults = values.pop("predict"), PredictConfig()
        for option in ("z_filter", "yz_filter", "tta"):
            if option not in workflow.options_for(ndim):
                predict[option] = getattr(defaults, option)
        predict["tile_size"] = [self.tile.value] * ndim if self.tile.value else None
        return {**values, "predict": predict}

    def _predictor(self, expect_workflow: str | None = None):
        """The engine's Predictor over the chosen checkpoint with this dock's settings (validated by the config)."""
        from ..engine.predict.predictor import Predictor

        path = self._checkpoint()
        info = self.kind if self.kind is not None else checkpoint_info(path)
        workflow, ndim = (info.workflow, info.ndim) if info is not None else (None, 2)
        device = self.form["device"].value
        if workflow is None:  # unreadable: the predictor says why, in full
            return Predictor(path, device, source="Predict", expect_workflow=expect_workflow)
        return Predictor(
            path, device, self._settings(workflow, ndim), source="Predict", expect_workflow=expect_workflow
        )

    def _make_job(self) -> PendingJob:
        """Every check that reads no pixels (the layer, checkpoint, 2D/3D, channels, the target), before any write."""
        layer = self.image.value
        if layer is None:
            raise InputError("Choose an Image layer to predict (or load one into the viewer).")
        predictor = self._predictor()
        cfg, workflow = predictor.config, predictor.workflow
        channels = layer_channels(layer, cfg.ndim)
        if channels is not None and channels != cfg.data.in_channels:
            raise InputError(
                f"Checkpoint {predictor.checkpoint} expects {cfg.data.in_channels} input channel(s), but "
                f"image layer '{layer.name}' has {channels}."
            )
        name = f"image layer '{layer.name}'"
        data = layer_array(layer)
        target_layer = self.target.value if not self.target.native.isHidden() else None
        target, target_name = None, ""
        if target_layer is not None:  # checked as the prediction will, but before the experiment folder exists
            target_name = f"{'labels' if isinstance(target_layer, Labels) else 'target'} layer '{target_layer.name}'"
            outputs = workflow.out_channels(cfg)
            got = layer_channels(target_layer, cfg.ndim) if isinstance(target_layer, Image) else None
            if workflow.target_is_image and got is not None and got != outputs:
                raise InputError(
                    f"Target layer '{target_layer.name}' has {got} channel(s) but {predictor.source} "
                    f"predicts {outputs}."
                )
            target = layer_array(target_layer)
        image = predictor.check_image(data, name, target, target_name)  # 2D/3D, channels, target: before any write
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", layer.name).strip(".") or "image"
        return PendingJob(predictor, data, image, name, stem, target, target_name, layer)

    @staticmethod
    def _create_job(pending: PendingJob):
        """The NaN/inf scan of the image (off the GUI thread for lazy layers), then the experiment folder and the
        job. A refused image leaves nothing behind: the folders made for it go again."""
        from ..engine.data.sources import check_finite

        check_finite(pending.image, pending.name)  # before any folder is created
        predictor = pending.predictor
        experiment = predictor.create_experiment()
        try:
            job = predictor.image(
                pending.data,
                pending.name,
                experiment.results,
                pending.stem,
                pending.target,
                pending.target_name,
                finite_checked=True,
            )
        except BaseException:
            predictor.discard(experiment)
            raise
        return job, experiment

    # --- run --------------------------------------------------------------------------------------------
    def start(self, *_) -> None:
        from napari.qt.threading import create_worker

        if self.running:
            return
        load_triton_safely()
        if self.kind is not None and not self.kind.workflow.dense:  # a class per image
            return self._start_classification()
        try:
            pending = self._make_job()
            created = self._create_job(pending) if is_in_memory(pending.data) else None
        except InputError as e:
            show_error(str(e))
            return
        if created is not None:
            return self._launch(*created, pending.layer)
        # a lazy (dask, zarr, memory-mapped) layer: its pixels are scanned in a worker, then the prediction starts
        self.status.value = f"checking {pending.layer.name}…"
        worker = create_worker(setup_job, self._create_job, pending, _start_thread=False, _ignore_errors=True)
        worker.returned.connect(lambda result: self._on_created(result, pending.layer))
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_setup_finished)
        self._setup_worker = worker
        self.predict_button.enabled = self.cancel_button.enabled = False
        worker.start()

    def _on_created(self, result, layer) -> None:
        if isinstance(result, Stopped):
            self.status.value = "not started: see the message"
            show_error(str(result.error))
            return
        self._launch(*result, layer)

    def _on_setup_finished(self) -> None:
        self._setup_worker = None
        if self._worker is None:
            self.predict_button.enabled, self.cancel_button.enabled = True, False

    def _launch(self, job, experiment, layer) -> None:
        from napari.qt.threading import create_worker

        self.job, self.experiment, self.source, self.result = job, experiment, layer, None
        self.prob_layer = self.labels_layer = None
        self.outputs = {}
        self.metrics.value = ""
        self._add_live_layers(job, layer)
        self._cancel.clear()
        self.progress.value, self.progress.max = 0, len(job.plan.tiles)
        self.status.value = f"predicting {layer.name} into {self.experiment.results}"
        worker = create_worker(prediction_job, job, self._cancel, self._relay, _start_thread=False, _ignore_errors=True)
        worker.returned.connect(self._on_returned)
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self.predict_button.enabled, self.cancel_button.enabled = False, True
        worker.start()

    def _start_classification(self) -> None:
        def make_experiment():
            self.experiment = predictor.create_experiment()
            return self.experiment

        try:
            predictor = self._predictor(expect_workflow=self.kind.workflow.name if self.kind else None)
            self.classify.start(predictor.loaded, make_experiment, predictor.device, self._on_classified)
        except InputError as e:
            show_error(str(e))
            return
        self.status.value = "classifying…"
        self.predict_button.enabled, self.cancel_button.enabled = False, True

    def _on_classified(self) -> None:
        self.predict_button.enabled, self.cancel_button.enabled = True, False
        self.progress.max = self.progress.value = max(1, self.classify.table.rowCount())
        self.status.value = f"done: {self.experiment.results}" if self.experiment is not None else "done"

    # --- layers -----------------------------------------------------------------------------------------
    def _placement(self):
        return placement(self.source, spatial_axes(self.source, self.job.cfg.ndim))

    def _contrast(self, output):
        """Contrast limits of an image output: the source's ("source": same intensities, so degraded, restored and
        MAE check layers compare at a glance), 0 to 1 ("unit"), or the target's normalization range ("target")."""
        if output.contrast == "source":
            return tuple(self.source.contrast_limits)
        if output.contrast == "unit":
            return (0.0, 1.0)
        mapping = intensity_mapping(self.job.workflow)
        if mapping is not None and self.job.cfg.data.normalization == "percentile":
            scale, offset = float(mapping[0][0]), float(mapping[1][0])
            return (offset, offset + scale)
        return None

    def _add_layer(self, output, data, index: int | None = None, **kwargs):
        """The layer of one declared output (spec.Output) over the source layer; inserted at `index` if given.
        Channel-first image data: one channel drops to the spatial axes, several keep a channel axis in front."""
        scale, translate = self._placement()
        name = f"{self.source.name} {output.suffix}"
        if output.layer == "labels":
            layer = Labels(data, name=name, scale=scale, translate=translate, opacity=output.opacity, **kwargs)
        else:
            if output.class_axis:
                scale, translate = (1.0, *scale), (0.0, *translate)
            else:
                data, scale, translate = first_channel_axis(data, scale, translate)
            contrast = self._contrast(output)
            layer = Image(
                data,
                name=name,
                scale=scale,
                translate=translate,
                colormap=output.colormap,
                opacity=output.opacity,
                **kwargs,
                **({"contrast_limits": contrast} if contrast and contrast[1] > contrast[0] else {}),
            )
        if index is None:
            self.viewer.layers.append(layer)
        else:
            self.viewer.layers.insert(index, layer)
        self.outputs[output.key] = layer
        return layer

    def _add_live_layers(self, job, layer) -> None:
        """The layers shown while tiles are computed: dask arrays over the engine's running sums (the workflow's
        outputs declared `live`)."""
        from ..engine.predict.sliding_window import argmax_labels

        cfg, wf = job.cfg, job.workflow
        lazy = job.lazy()
        world_axes = self.viewer.dims.ndim
        for output in wf.outputs:
            if not output.live:
                continue
            if output.layer == "labels":
                data = argmax_labels(lazy)
            elif output.class_axis:
                data = lazy
            else:
                data = to_intensity(lazy[: wf.out_channels(cfg)], intensity_mapping(wf), cfg.ndim)
            self._add_layer(output, data, cache=False)
        if any(o.live and o.class_axis for o in wf.outputs) and self.viewer.dims.ndim > world_axes:
            # the class axis is new: name it, show the last class (not background)
            self.viewer.dims.axis_labels = ("class", *self.viewer.dims.axis_labels[1:])
            self.viewer.dims.set_current_step(0, lazy.shape[0] - 1)
        self.prob_layer, self.labels_layer = self.outputs.get("probabilities"), self.outputs.get("labels")

    def _show_outputs(self, outputs: dict) -> None:
        """The final arrays replace the running sums (which can then go); the other outputs join them, in the
        declared order from the bottom up (napari's grid view then shows them side by side in that order)."""
        import dask.array as da

        def lazy(data):
            return da.from_zarr(data) if hasattr(data, "chunks") and not hasattr(data, "dask") else data

        declared = self.job.workflow.outputs
        first_live = next((self.outputs[o.key] for o in declared if o.key in self.outputs), None)
        position = (
            self.viewer.layers.index(first_live)
            if first_live is not None and first_live in self.viewer.layers
            else len(self.viewer.layers)
        )
        for output in declared:
            layer = self.outputs.get(output.key)
            if layer is not None and layer in self.viewer.layers:
                if output.key in outputs:
                    data = lazy(outputs[output.key])
                    layer.data = (
                        data if output.class_axis or output.layer == "labels" else first_channel_axis(data, (), ())[0]
                    )
                position = self.viewer.layers.index(layer) + 1
            elif output.key in outputs:
                self._add_layer(output, lazy(outputs[output.key]), index=position)
                position += 1

    def _refresh(self) -> None:
        """Re-read the visible tiles (the layers are not cached, so new tiles show), at most every 0.3 s and
        never more than 10 % of the time, so redrawing does not slow the prediction down."""
        start = time.perf_counter()
        if start - self._last_refresh < max(0.3, 10 * self._refresh_cost):
            return
        for layer in self.outputs.values():
            if layer is not None and layer in self.viewer.layers:
                layer.refresh()
        self._last_refresh = time.perf_counter()
        self._refresh_cost = self._last_refresh - start

    def _on_progress(self, done: int, total: int) -> None:
        self.progress.max, self.progress.value = total, done
        self._refresh()

    def _on_returned(self, result) -> None:
        result = result.error if isinstance(result, Stopped) else result
        if isinstance(result, Cancelled):
            self.status.value = "cancelled: the layers keep the tiles computed so far"
            show_info(f"Prediction cancelled; the partial result stays in {self.job.store}.")
            return
        if isinstance(result, InputError):
            self.status.value = "failed: see the message"
            show_error(str(result))
            return
        self.result = result
        self._show_outputs(result.outputs)
        self.job.cleanup()
        self.progress.value = self.progress.max
        self.status.value = f"done in {result.seconds:.1f} s: {self.experiment.results}"
        self.metrics.value = format_metrics(result.metrics)
        message = f"Prediction of {self.source.name} written to {self.experiment.results}."
        show_info(message + (f" {self.metrics.value}." if self.metrics.value else ""))

    def cancel(self, *_) -> None:
        if self.classify.running:
            self.classify.cancel()
        if self.running:
            self._cancel.set()
            self.cancel_button.enabled = False
            self.status.value = "cancelling…"

    def _on_error(self, e: BaseException) -> None:
        # napari's worker already shows the error as a notification with its traceback; log it as well
        log.error("prediction failed", exc_info=(type(e), e, e.__traceback__))
        self.status.value = f"failed: {type(e).__name__}: {e}"

    def _on_finished(self) -> None:
        self._worker = None
        self.predict_button.enabled, self.cancel_button.enabled = True, False
