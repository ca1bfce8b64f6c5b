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
import threading

from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import QWidget

from ..engine.errors import Cancelled, InputError
from .fields import in_dock_words, toast_if_shown
from .jobs import ProgressRelay, Stopped, prediction_job, setup_job
from .layers import (
    connect_while_alive,
    follow_layers,
)
from .predict_form import PredictForm
from .predict_layers import PredictLayers, format_metrics
from .predict_setup import FROM_FILE, JUST_TRAINED, PredictSetup, is_in_memory  # noqa: F401 (public names)
from .shared import last_trained

log = logging.getLogger(__name__)


class PredictWidget(PredictForm, PredictSetup, PredictLayers, QWidget):
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
        self._build_form(viewer)
        for chooser in (self.image, self.target):  # a deleted layer empties its chooser: say so
            chooser.lost.connect(self._on_lost)

        self.model_source.changed.connect(self._update_visibility)
        self.checkpoint.changed.connect(self._update_visibility)
        self.predict_button.changed.connect(self.start)
        self.cancel_button.changed.connect(self.cancel)
        connect_while_alive(self, [(last_trained.changed, self._on_trained)])
        follow_layers(self, viewer, self.reset_choices)
        if last_trained.checkpoint is not None:
            self._on_trained(last_trained.checkpoint)
        self._update_visibility()

    # --- messages: the last one stays in the dock, in full; a notification shows it too ---------------------
    def _error(self, text: str) -> None:
        words = {path: w.label for path, w in self.form.widgets.items()} | {"predict.tile_size": self.tile.label}
        self.message.value = text = in_dock_words(text, words, config_is="the model is")
        show_error(text)

    def _info(self, text: str) -> None:
        self.message.value = text
        show_info(text)

    def _on_lost(self, text: str) -> None:
        self.message.value = text
        toast_if_shown(self, text)

    @property
    def running(self) -> bool:
        return self._worker is not None or self._setup_worker is not None or self.classify.running

    def reset_choices(self, *_) -> None:
        self.image.reset_choices()
        self.target.reset_choices()

    # --- run --------------------------------------------------------------------------------------------
    def start(self, *_) -> None:
        from napari.qt.threading import create_worker

        if self.running:
            return
        if self.kind is not None and not self.kind.workflow.dense:  # a class per image
            return self._start_classification()
        try:
            prepare = self._make_job()  # the fields, read here
        except InputError as e:
            self._error(str(e))
            return
        # the checkpoint is opened, the layer checked and its pixels scanned in a worker, then the prediction starts
        layer = self.image.value
        self.status.value = f"opening the checkpoint, checking {layer.name}…"
        create = self._create_job
        worker = create_worker(setup_job, lambda: create(prepare()), _start_thread=False, _ignore_errors=True)
        worker.returned.connect(lambda result: self._on_created(result, layer))
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_setup_finished)
        self._setup_worker = worker
        self.predict_button.enabled = self.cancel_button.enabled = False
        worker.start()

    def _on_created(self, result, layer) -> None:
        if isinstance(result, Stopped):
            self.status.value = "not started"
            self._error(str(result.error))
            return
        self._launch(*result, layer)

    def _on_setup_finished(self) -> None:
        self._setup_worker = None
        if not self.running:  # neither predicting nor classifying
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
        def opened(predictor) -> None:  # back on the GUI thread
            if isinstance(predictor, Stopped):
                self.status.value = "not started"
                return self._error(str(predictor.error))
            try:
                self.classify.start(predictor.loaded, lambda: make_experiment(predictor), predictor.device, done)
            except InputError as e:
                self._error(str(e))
                return
            self.status.value = "classifying…"
            self.predict_button.enabled, self.cancel_button.enabled = False, True

        def make_experiment(predictor):
            self.experiment = predictor.create_experiment()
            return self.experiment

        from napari.qt.threading import create_worker

        done = self._on_classified
        try:
            open_predictor = self._predictor_opener(expect_workflow=self.kind.workflow.name if self.kind else None)
        except InputError as e:
            self._error(str(e))
            return
        self.status.value = "opening the checkpoint…"  # in a worker: it takes seconds
        worker = create_worker(setup_job, open_predictor, _start_thread=False, _ignore_errors=True)
        worker.returned.connect(opened)
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_setup_finished)
        self._setup_worker = worker
        self.predict_button.enabled = self.cancel_button.enabled = False
        worker.start()

    def _on_classified(self) -> None:
        self.predict_button.enabled, self.cancel_button.enabled = True, False
        self.progress.max = self.progress.value = max(1, self.classify.table.rowCount())
        self.status.value = f"done: {self.experiment.results}" if self.experiment is not None else "done"

    # --- layers -----------------------------------------------------------------------------------------
    def _on_returned(self, result) -> None:
        result = result.error if isinstance(result, Stopped) else result
        if isinstance(result, Cancelled):
            self.status.value = "cancelled: the layers keep the tiles computed so far"
            self._info(f"Prediction cancelled; the partial result stays in {self.job.store}.")
            return
        if isinstance(result, InputError):
            self.status.value = "failed"
            self._error(str(result))
            return
        self.result = result
        self._show_outputs(result.outputs)
        self.job.cleanup()
        self.progress.value = self.progress.max
        self.status.value = f"done in {result.seconds:.1f} s: {self.experiment.results}"
        self.metrics.value = format_metrics(result.metrics)
        message = f"Prediction of {self.source.name} written to {self.experiment.results}."
        self._info(message + (f" {self.metrics.value}." if self.metrics.value else ""))

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
        self.status.value = "failed"
        self.message.value = f"Prediction failed: {type(e).__name__}: {e}"

    def _on_finished(self) -> None:
        self._worker = None
        self.predict_button.enabled, self.cancel_button.enabled = True, False
