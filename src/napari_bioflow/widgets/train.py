"""The Train dock: builds a RunConfig and samples from its fields and layers, runs the engine's Trainer in a child
process (engine/train/child.py) driven from a napari thread worker, and turns its reports into progress, a live
chart and a preview layer. No training logic here.

The workflow chosen at the top decides which fields show: segmentation trains on (Image, Labels) pairs with classes;
image to image on (raw Image, target Image) pairs with target channels and an L1/MSE loss; self-supervision on raw
Image layers alone, with the crappify (noise, down-sampling) or masking (MAE token size, mask type and ratio) options.
The model list follows the workflow and the dimensions."""

from __future__ import annotations

import logging
import time

from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QWidget

from ..engine.errors import InputError
from ..engine.workflows import get_workflow
from .fields import fit_width, format_seconds, toast_if_shown
from .jobs import InputsNotSaved, TrainingCrashed, TrainingFailed, training_job
from .layers import (
    connect_while_alive,
    follow_layers,
    spatial_axes,
)
from .preview import Preview, PreviewFailed, PreviewResult, camera, visible_region
from .shared import last_trained
from .train_checks import TrainChecks
from .train_config import TrainConfigLoader
from .train_form import TrainForm
from .train_inputs import TrainInputs
from .train_view import TrainView

log = logging.getLogger(__name__)
STEP_UI_SECONDS = 0.25  # the progress bar and status line follow the steps at most this often (last step always)


class TrainWidget(TrainForm, TrainView, TrainInputs, TrainChecks, TrainConfigLoader, QWidget):
    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = viewer = napari_viewer
        self.trainer = None
        self.preview: Preview | None = None
        self.result = None  # the DoneReport of the last training
        self._step_shown = 0.0  # when a step report last reached the progress bar (monotonic seconds)
        self._worker = None
        self._adapted = (None, None)
        self._running: dict = {"trainer": None}  # a closed dock stops its training (the best checkpoint stays)
        self.destroyed.connect(lambda *_, running=self._running: running["trainer"] and running["trainer"].cancel())
        self._build_form(viewer)
        f = self.form
        self.source.changed.connect(self._update_visibility)
        self.validation.changed.connect(self._update_visibility)
        f["workflow"].changed.connect(self._on_workflow)
        for path in self.variant_fields:
            f[path].changed.connect(self._on_workflow)
        f["model.name"].changed.connect(self._update_visibility)
        for path in ("train.optimizer", "train.scheduler", "data.normalization"):  # their own options follow them
            f[path].changed.connect(self._update_visibility)
        for key in self.followed_fields():  # a choice of the user's: kept when the workflow changes
            f[key].changed.connect(lambda *_, key=key: self._on_followed(key))
        f["ndim"].changed.connect(self._on_ndim)
        self.pairs.changed.connect(self._adapt)
        self.class_layers.changed.connect(self._adapt)
        self.validation.changed.connect(self._adapt)
        self.val_pair.changed.connect(self._adapt)
        for chooser in (self.pairs, self.val_pair):  # a deleted layer empties its chooser: say so
            chooser.lost.connect(self._on_lost)
        self._check_timer = QTimer(self)
        self._check_timer.setSingleShot(True)
        self._check_timer.setInterval(150)
        self._check_timer.timeout.connect(self.run_check)
        for widget in [*f.widgets.values(), self.patch_z, self.patch_yx, self.token_size, self.feature_maps]:
            widget.changed.connect(self._schedule_check)
        for widget in (self.source, self.validation, self.pairs, self.val_pair, self.class_layers, self.model_options):
            widget.changed.connect(self._schedule_check)
        self.train_button.changed.connect(self.start)
        self.cancel_button.changed.connect(self.cancel)
        self.load_button.changed.connect(self.choose_config)
        follow_layers(self, viewer, self.reset_choices)
        follow_layers(self, viewer, self._schedule_check)
        cam = camera(viewer)  # the preview follows the field of view
        events = [cam.events.center, cam.events.zoom, viewer.dims.events.current_step, viewer.dims.events.ndisplay]
        if hasattr(getattr(viewer, "canvas", None), "events"):
            events.append(viewer.canvas.events.size)
        connect_while_alive(self, [(e, self._capture_view) for e in events])
        self._on_workflow()
        self._adapt()
        self._on_ndim(f["ndim"].value)
        self.run_check()

    def showEvent(self, event) -> None:
        fit_width(self._scroll)
        super().showEvent(event)

    # --- messages: the last one stays in the dock, in full; a notification shows it too ---------------------
    def _error(self, text: str) -> None:
        self.message.value = text = self.in_words(text)
        show_error(text)

    def _warn(self, text: str) -> None:
        self.message.value = text
        show_warning(text)

    def _on_lost(self, text: str) -> None:
        if text != self.message.value:  # the same layer in two choosers: said once
            self.message.value = text
            toast_if_shown(self, text)

    def _info(self, text: str) -> None:
        self.message.value = text
        show_info(text)

    # --- fields -----------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._worker is not None

    def reset_choices(self, *_) -> None:
        self.pairs.reset_choices()
        self.class_layers.reset_choices()
        self.val_pair.reset_choices()

    # --- run --------------------------------------------------------------------------------------------
    def start(self, *_) -> None:
        from napari.qt.threading import create_worker

        from ..engine.train.child import TrainingProcess

        if self.running:
            return
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
            self._error(str(e))
            return
        for note in notes:
            self._info(note)
        self.preview = preview = self._make_preview(cfg, train)
        self.trainer = TrainingProcess(  # the trainer runs in a child process (engine/train/child.py)
            cfg,
            train=train,
            val=val,
            preview_image=preview.image if preview is not None else None,
            preview_ms=self.preview_ms.value,
            preview_every=self.preview_every.value,
        )
        if preview is not None:
            preview.sink = self.trainer.set_view
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
                self.viewer,
                preview.source,
                spatial_axes(preview.source, cfg.ndim, cfg.data.in_channels, cfg.data.axes),
                cfg.data.patch_size,
            )
        except Exception:  # the view is a nicety; never break the viewer over it
            log.exception("could not read the field of view")

    def _on_report(self, r) -> None:
        from ..engine.train.trainer import DoneReport, EpochReport, StartReport, StepReport

        if isinstance(r, StepReport):
            now = time.monotonic()
            if r.step != r.steps and now - self._step_shown < STEP_UI_SECONDS:
                return  # each repaint composites the whole window (slow under software OpenGL): a few per second
            self._step_shown = now
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
                self._info(note)
        elif isinstance(r, DoneReport):
            self.result = r
            self.status.value = f"{r.reason.replace('_', ' ')} after {r.epochs_run} epoch(s); best epoch {r.best_epoch}"
            if r.checkpoint is not None:
                last_trained.set(r.checkpoint)
            self._info(
                f"Training {r.reason.replace('_', ' ')}. Best checkpoint: {r.checkpoint or 'none (no epoch finished)'}"
            )
        elif isinstance(r, PreviewFailed):
            self._warn(r.message)
        elif isinstance(r, InputsNotSaved):
            self._warn(str(r))
        elif isinstance(r, TrainingFailed):
            self.status.value = "not started"
            self._error(str(r))
        elif isinstance(r, TrainingCrashed):  # the training's process crashed or was killed: napari goes on
            self.status.value = "failed"
            self._error(str(r))

    def _on_error(self, e: BaseException) -> None:
        # napari's worker already shows the error as a notification with its traceback; log it as well
        log.error("training failed", exc_info=(type(e), e, e.__traceback__))
        self.status.value = "failed"
        self.message.value = f"Training failed: {type(e).__name__}: {e}"

    def _on_finished(self) -> None:
        self._worker = self._running["trainer"] = None
        if self.preview is not None:  # the preview layer goes, unless the user keeps it
            self.preview.finish(self.viewer, self.keep_preview.value)
        self.train_button.enabled, self.cancel_button.enabled = True, False
