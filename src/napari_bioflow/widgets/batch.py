"""The Batch dock: a checkpoint (or the model just trained), an input folder (TIFF, PNG, zarr, OME-Zarr), optional
labels and an output folder in; every file predicted by the engine's BatchRun (engine/batch/) into a new run of
the experiment layout, or into an earlier run it continues (resume), here or on dask.distributed.

The dock only turns fields into a BatchRequest, runs the BatchRun generator in a napari thread worker and turns its
reports into progress bars (the current file's tiles, the batch with its ETA), notifications (a file that fails:
one sentence naming it; the summary) and layers: the current file's result as it is produced (a dask array over the
zarr being written), and, on request, every result of the run (dask arrays over the written files, stacked along a
file axis where the shapes agree)."""

from __future__ import annotations

import logging
import threading

from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtWidgets import QWidget

from ..engine.batch import BatchStarted, BatchSummary, FileDone, FileFailed, FileProgress, FileStarted
from ..engine.errors import InputError
from .batch_form import FROM_FILE, HERE, JUST_TRAINED, LOCAL_DASK, SCHEDULER, BatchForm  # noqa: F401 (public names)
from .batch_layers import BatchLayers
from .fields import format_seconds, in_dock_words
from .jobs import TrainingFailed, batch_job
from .layers import connect_while_alive
from .shared import last_trained

log = logging.getLogger(__name__)
MAX_ERROR_NOTES = 5  # failed files shown one by one; beyond, the summary lists them


class BatchWidget(BatchForm, BatchLayers, QWidget):
    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.run = None  # the engine's BatchRun
        self.started: BatchStarted | None = None
        self.summary: BatchSummary | None = None
        self.failures: list[FileFailed] = []
        self.current_layer = None  # the current file's result, as it is produced
        self.result_layers: list = []
        self._worker = None
        self._cancelled = False
        self._errors_shown = 0
        self._last_refresh = self._refresh_cost = 0.0
        self._closed = threading.Event()
        self.destroyed.connect(self._on_destroyed)
        self._build_form()

        self.model_source.changed.connect(self._update_visibility)
        self.where.changed.connect(self._update_visibility)
        self.run_button.changed.connect(self.start)
        self.cancel_button.changed.connect(self.cancel)
        self.open_button.changed.connect(self.open_results)
        connect_while_alive(self, [(last_trained.changed, self._on_trained)])
        if last_trained.checkpoint is not None:
            self._on_trained(last_trained.checkpoint)
        self._update_visibility()

    # --- messages: the last one stays in the dock, in full; a notification shows it too ---------------------
    def _error(self, text: str) -> None:
        words = {path: w.label for path, w in self.form.widgets.items()}
        self.message.value = text = in_dock_words(text, words, config_is="the model is")
        show_error(text)

    def _info(self, text: str) -> None:
        self.message.value = text
        show_info(text)

    @property
    def running(self) -> bool:
        return self._worker is not None

    # --- run ----------------------------------------------------------------------------------------------
    def start(self, *_) -> None:
        from napari.qt.threading import create_worker

        if self.running:
            return
        try:
            make_run = self._make_run()  # the fields, read here; the checkpoint is opened in the worker
        except InputError as e:
            self._error(str(e))
            return
        self.started, self.summary, self.failures, self._errors_shown = None, None, [], 0  # self.run: as it comes
        self._cancelled = False
        self.status.value, self.summary_label.value = "opening the checkpoint…", ""
        self.file_progress.value, self.overall.value = 0, 0
        self.classes.setRowCount(0)
        worker = create_worker(batch_job, make_run, _start_thread=False, _ignore_errors=True)
        worker.yielded.connect(self._on_report)
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self.run_button.enabled, self.cancel_button.enabled, self.open_button.enabled = False, True, False
        worker.start()

    def cancel(self, *_) -> None:
        if self.running:
            self._cancelled = True  # a run still being set up is cancelled as it arrives
            if self.run is not None:
                self.run.cancel()
            self.cancel_button.enabled = False
            self.status.value = "cancelling after the current tile…"

    def _on_destroyed(self, *_) -> None:
        if self.run is not None:
            self.run.cancel()  # a closed dock stops its batch

    def _on_report(self, r) -> None:
        from ..engine.batch.run import BatchRun

        if isinstance(r, BatchRun):  # set up in the worker
            self.run = r
            self.status.value = f"starting: {r.run_dir}"
            self.classes.setVisible(not getattr(r.loaded.workflow, "dense", True))
            if self._cancelled:
                r.cancel()
        elif isinstance(r, BatchStarted):
            self.started = r
            earlier = f" ({len(r.finished_earlier)} finished earlier)" if r.finished_earlier else ""
            self.status.value = f"{len(r.to_do)} file(s) to predict on {r.mode}{earlier}"
            if r.unfinished_earlier is not None:
                self._info(f"Note: {r.hint()}: choose its folder as 'resume run'.")
            self.open_button.enabled = True
        elif isinstance(r, FileStarted):
            self.file_progress.max, self.file_progress.value = max(1, r.tiles), 0
            self.status.value = f"{self._position(r.index)}: {r.name}"
            if self.show_current.value and r.live is not None:
                self._show_current(r.live, r.name, final=False)
        elif isinstance(r, FileProgress):
            self.file_progress.max, self.file_progress.value = r.total, r.done
            self._show_overall(r.overall, r.eta_seconds, r.name, r.index)
            self._refresh()
        elif isinstance(r, FileDone):
            self.file_progress.value = self.file_progress.max
            self._show_overall(r.overall, r.eta_seconds, r.name, r.index)
            if r.prediction:  # classification: the file's class and confidence
                self.classes.add(r.name, str(r.prediction["class"]), float(r.prediction["confidence"]))
            if self.show_current.value:
                self._show_done(r)
        elif isinstance(r, FileFailed):
            self.failures.append(r)
            self._show_overall(r.overall, r.eta_seconds, r.name, r.index)
            if self._errors_shown < MAX_ERROR_NOTES:
                self._errors_shown += 1
                self._error(r.reason)
        elif isinstance(r, BatchSummary):
            self._on_summary(r)
        elif isinstance(r, TrainingFailed):
            self.status.value = "failed"
            self._error(str(r))

    def _position(self, index: int) -> str:
        names = self.started.names if self.started else []
        return f"file {index + 1}/{len(names)}" if names else f"file {index + 1}"

    def _show_overall(self, fraction: float, eta: float | None, name: str, index: int) -> None:
        self.overall.value = int(round(1000 * fraction))
        eta_text = f", ETA {format_seconds(eta)}" if eta is not None and fraction < 1 else ""
        self.status.value = f"{self._position(index)}: {name} · {fraction:.0%} of the batch{eta_text}"

    def _on_summary(self, s: BatchSummary) -> None:
        self.summary = s
        self.overall.value = 1000 if not s.cancelled else self.overall.value
        lines = [s.text() + "."]
        lines.append(f"{s.files_per_second:.2f} files/s, {s.megapixels_per_second:.2f} megapixels/s")
        for name, why in s.failed:
            lines.append(f"failed: {name}: {why}")
        if s.cancelled:
            self.resume.value = str(s.run_dir)  # Run batch again continues this run
            lines.append("Run batch again to continue this run (resume run is set); clear it for a new run.")
        self.summary_label.value = "\n".join(lines)
        self.status.value = "cancelled" if s.cancelled else f"done: {s.run_dir}"
        if s.failed:
            self.message.value = f"{s.text()}; see {s.summary_csv}."
            show_warning(self.message.value)
        else:
            self._info(s.text() + ".")

    def _on_error(self, e: BaseException) -> None:
        log.error("batch failed", exc_info=(type(e), e, e.__traceback__))
        self.status.value = "failed"
        self.message.value = f"Batch failed: {type(e).__name__}: {e}"

    def _on_finished(self) -> None:
        self._worker = None
        self.run_button.enabled, self.cancel_button.enabled = True, False
        self.open_button.enabled = self.run is not None
