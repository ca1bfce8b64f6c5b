"""The Predict dock: a checkpoint (or the model just trained) and an Image layer in, a probability Image layer and
a Labels layer out. Both layers are dask arrays over the zarr store the engine writes, so tiles appear as they are
computed; the engine's ImagePrediction does all the work in a napari thread worker."""
from __future__ import annotations

import logging
import re
import shutil
import threading
import time
from pathlib import Path

from magicgui.widgets import ComboBox, Container, FileEdit, ProgressBar, PushButton, SpinBox
from napari.layers import Image
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import QVBoxLayout, QWidget
from superqt import QCollapsible

from ..engine.errors import Cancelled, InputError
from .fields import ConfigForm, status_label, compact, config_field, form, group
from .jobs import ProgressRelay, prediction_job
from .layers import connect_while_alive, follow_layers, layer_array, layer_channels, layer_combo, placement, spatial_axes
from .shared import last_trained, load_triton_safely

log = logging.getLogger(__name__)
JUST_TRAINED, FROM_FILE = "model just trained", "checkpoint file"


class PredictWidget(QWidget):
    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = viewer = napari_viewer
        self.job = self.experiment = self.source = None
        self.prob_layer = self.labels_layer = None
        self.result = None  # the engine's ImageResult of the last finished prediction
        self._worker = None
        self._cancel = threading.Event()
        self._last_refresh = self._refresh_cost = 0.0
        self._relay = ProgressRelay()
        self._relay.progress.connect(self._on_progress)
        self.destroyed.connect(self._cancel.set)  # a closed dock stops its prediction

        self.model_source = ComboBox(choices=[FROM_FILE, JUST_TRAINED], value=FROM_FILE, label="model")
        self.checkpoint = compact(FileEdit(mode="r", filter="*.pth", label="checkpoint",
                                           tooltip="A napari-bioflow checkpoint (.pth)"))
        self.trained = status_label("none yet: train one in the Train dock", label="trained")
        self.image = layer_combo(viewer, Image, label="image", tooltip="The Image layer to predict")
        f = self.form = ConfigForm()  # defaults, bounds and tooltips from the config's predict section
        f.add("predict.tta", label="test-time augmentation")
        self.tile = SpinBox(value=0, min=0, max=8192, step=16, label="tile size (0 = auto)",
                            tooltip=config_field("predict.tile_size").description)
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
        layout.addWidget(group("Model and image", form(self.model_source, self.checkpoint, self.trained, self.image,
                                                       f["predict.tta"])))
        layout.addWidget(group("Output", form(f["name"], f["output_dir"])))
        self.advanced = QCollapsible("Advanced")
        self.advanced.addWidget(form(self.tile, *(f[p] for p in ("predict.overlap", "predict.batch_size", "device",
                                                                   "predict.z_filter", "predict.yz_filter"))).native)
        layout.addWidget(self.advanced)
        buttons = Container(widgets=[self.predict_button, self.cancel_button], layout="horizontal", labels=False)
        layout.addWidget(group("Run", buttons, self.progress, self.status))
        layout.addStretch(1)
        self.setMinimumWidth(320)

        self.model_source.changed.connect(self._update_visibility)
        self.predict_button.changed.connect(self.start)
        self.cancel_button.changed.connect(self.cancel)
        connect_while_alive(self, [(last_trained.changed, self._on_trained)])
        follow_layers(self, viewer, self.reset_choices)
        if last_trained.checkpoint is not None:
            self._on_trained(last_trained.checkpoint)
        self._update_visibility()

    @property
    def running(self) -> bool:
        return self._worker is not None

    def reset_choices(self, *_) -> None:
        self.image.reset_choices()

    def _update_visibility(self, *_) -> None:
        from_file = self.model_source.value == FROM_FILE
        self.checkpoint.visible, self.trained.visible = from_file, not from_file

    def _on_trained(self, checkpoint: Path) -> None:
        self.trained.value = Path(checkpoint).name
        self.trained.tooltip = str(checkpoint)
        self.model_source.value = JUST_TRAINED

    # --- set-up on the GUI thread: every check runs here, so bad input is reported at once ---------------------
    def _checkpoint(self) -> Path:
        if self.model_source.value == JUST_TRAINED:
            if last_trained.checkpoint is None:
                raise InputError("No model has been trained yet: train one in the Train dock or choose a checkpoint file.")
            return last_trained.checkpoint
        text = str(self.checkpoint.line_edit.value).strip()
        if not text:
            raise InputError("Choose a checkpoint file (.pth) to predict with.")
        return Path(text)

    def _make_job(self):
        from ..config import RunConfig
        from ..engine.checkpoint import load_model
        from ..engine.experiment import new_experiment
        from ..engine.inference import ImagePrediction
        from ..engine.sources import to_channels_last
        from ..engine.train import resolve_device

        layer = self.image.value
        if layer is None:
            raise InputError("Choose an Image layer to predict (or load one into the viewer).")
        values = self.form.values()
        path, device = self._checkpoint(), resolve_device(values["device"])
        loaded = load_model(path, device, expect_workflow="semantic_segmentation")
        cfg = loaded.config
        channels = layer_channels(layer, cfg.ndim)
        if channels is not None and channels != cfg.data.in_channels:
            raise InputError(f"Checkpoint {path} expects {cfg.data.in_channels} input channel(s), but image layer "
                             f"'{layer.name}' has {channels}.")
        name = f"image layer '{layer.name}'"
        data = layer_array(layer)
        to_channels_last(data, cfg.ndim, cfg.data.in_channels, name)  # 2D/3D and channel checks, before any write
        # the checkpoint's own config, with this dock's prediction settings, output and device
        raw = cfg.model_dump(mode="json")
        raw["predict"].update(values.pop("predict"), checkpoint=str(path),
                              tile_size=[self.tile.value] * cfg.ndim if self.tile.value else None)
        loaded.config = cfg = RunConfig.from_dict({**raw, **values}, source="Predict")
        experiment = new_experiment(cfg.output_dir, cfg.name)
        cfg.save(experiment.config_path)
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", layer.name) or "image"
        try:
            job = ImagePrediction(loaded, data, name, experiment.results, stem, device)
        except InputError:
            shutil.rmtree(experiment.results, ignore_errors=True)
            experiment.config_path.unlink(missing_ok=True)
            raise
        return job, experiment, layer

    # --- run --------------------------------------------------------------------------------------------
    def start(self, *_) -> None:
        from napari.qt.threading import create_worker

        from ..engine.predict import argmax_labels

        if self.running:
            return
        load_triton_safely()
        try:
            job, self.experiment, layer = self._make_job()
        except InputError as e:
            show_error(str(e))
            return
        self.job, self.source, self.result = job, layer, None
        scale, translate = placement(layer, spatial_axes(layer, job.cfg.ndim))
        prob, world_axes = job.lazy(), self.viewer.dims.ndim
        self.prob_layer = self.viewer.add_image(prob, name=f"{layer.name} probabilities", scale=(1.0, *scale),
                                                translate=(0.0, *translate), colormap="magma", contrast_limits=(0.0, 1.0),
                                                opacity=0.7, cache=False)
        self.labels_layer = self.viewer.add_labels(argmax_labels(prob), name=f"{layer.name} labels", scale=scale,
                                                   translate=translate, opacity=0.5, cache=False)
        if self.viewer.dims.ndim > world_axes:  # the class axis is new: name it, show the last class (not background)
            self.viewer.dims.axis_labels = ("class", *self.viewer.dims.axis_labels[1:])
            self.viewer.dims.set_current_step(0, prob.shape[0] - 1)
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

    def cancel(self, *_) -> None:
        if self.running:
            self._cancel.set()
            self.cancel_button.enabled = False
            self.status.value = "cancelling…"

    def _refresh(self) -> None:
        """Re-read the visible tiles (the layers are not cached, so new tiles show), at most every 0.3 s and
        never more than 10 % of the time, so redrawing does not slow the prediction down."""
        start = time.perf_counter()
        if start - self._last_refresh < max(0.3, 10 * self._refresh_cost):
            return
        for layer in (self.prob_layer, self.labels_layer):
            if layer is not None and layer in self.viewer.layers:
                layer.refresh()
        self._last_refresh = time.perf_counter()
        self._refresh_cost = self._last_refresh - start

    def _on_progress(self, done: int, total: int) -> None:
        self.progress.max, self.progress.value = total, done
        self._refresh()

    def _on_returned(self, result) -> None:
        import dask.array as da

        if isinstance(result, Cancelled):
            self.status.value = "cancelled: the layers keep the tiles computed so far"
            show_info(f"Prediction cancelled; the partial result stays in {self.job.store}.")
            return
        if isinstance(result, InputError):
            self.status.value = "failed: see the message"
            show_error(str(result))
            return
        self.result = result
        # the final arrays replace the running sums, which can then go
        self.prob_layer.data = da.from_zarr(result.outputs["probabilities"])
        self.labels_layer.data = da.from_zarr(result.outputs["labels"])
        self.job.cleanup()
        self.progress.value = self.progress.max
        self.status.value = f"done in {result.seconds:.1f} s: {self.experiment.results}"
        show_info(f"Prediction of {self.source.name} written to {self.experiment.results}.")

    def _on_error(self, e: BaseException) -> None:
        # napari's worker already shows the error as a notification with its traceback; log it as well
        log.error("prediction failed", exc_info=(type(e), e, e.__traceback__))
        self.status.value = f"failed: {type(e).__name__}: {e}"

    def _on_finished(self) -> None:
        self._worker = None
        self.predict_button.enabled, self.cancel_button.enabled = True, False
