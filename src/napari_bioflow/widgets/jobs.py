"""What the docks' napari thread workers run. A user's mistake (InputError) or a cancel comes back to the GUI
thread as a value, not as an exception: napari would show an exception as a crash with a traceback."""
from __future__ import annotations

import threading
import time
from typing import Optional

from qtpy.QtCore import QObject, Signal

from ..engine.errors import Cancelled, InputError


class TrainingFailed(str):
    """An InputError met in the worker (set-up checks), handed to the GUI as a value, not as a crash."""


def training_job(trainer, preview: Optional["Preview"]):
    """Runs in the worker thread: relay the trainer's reports; between epochs (trainer paused) maybe preview."""
    from ..engine.train import EpochReport, StartReport

    reports = trainer.run()
    training_seconds = 0.0
    try:
        while True:
            start = time.perf_counter()
            try:
                report = next(reports)
            except StopIteration:
                return
            training_seconds += time.perf_counter() - start
            yield report
            if preview is not None and isinstance(report, StartReport):
                preview.steps_per_epoch = report.steps_per_epoch
            elif preview is not None and isinstance(report, EpochReport):
                result = preview.maybe_predict(trainer, report, training_seconds)
                if result is not None:
                    yield result
    except InputError as e:
        yield TrainingFailed(str(e))
    finally:
        reports.close()


class ProgressRelay(QObject):
    """Carries tile progress from the worker thread to the GUI thread (queued signal)."""
    progress = Signal(int, int)


class Stopped:
    """An InputError or Cancelled met in a function worker, handed to the GUI as a value (`error`): the worker
    would raise an exception returned as such, and napari show it as a crash."""

    def __init__(self, error: Exception):
        self.error = error


def prediction_job(job, cancel: threading.Event, relay: ProgressRelay):
    """Runs in the worker thread. A user's mistake or a cancel comes back as a Stopped value, not as a crash."""
    try:
        return job.run(cancel=cancel.is_set, progress=relay.progress.emit)
    except (InputError, Cancelled) as e:
        return Stopped(e)


def setup_job(create, *args):
    """Runs in the worker thread: `create(*args)` (checks that read pixels, then set-up); a user's mistake comes
    back as a Stopped value."""
    try:
        return create(*args)
    except InputError as e:
        return Stopped(e)


def batch_job(run):
    """Runs in the worker thread: relay a BatchRun's reports. A user's mistake met there (no cluster at the
    scheduler address, ...) comes back as a TrainingFailed value."""
    try:
        yield from run.run()
    except InputError as e:
        yield TrainingFailed(str(e))
