"""What the docks' napari thread workers run. A user's mistake (InputError) or a cancel comes back to the GUI
thread as a value, not as an exception: napari would show an exception as a crash with a traceback."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from qtpy.QtCore import QObject, Signal

from ..engine.errors import Cancelled, InputError
from .shared import load_triton_safely, warm_imports

if TYPE_CHECKING:
    from .preview import Preview

log = logging.getLogger(__name__)


class TrainingFailed(str):
    """An InputError met in the worker (set-up checks), handed to the GUI as a value, not as a crash."""


class InputsNotSaved(str):
    """The layers trained on could not be written with the run (a warning: the training goes on)."""


SAVE_INPUTS_MAX_BYTES = 2 * 2**30  # layers copied into a run so that its config repeats it, at most


def save_inputs(trainer, inputs: dict) -> str | None:
    """Write the layer arrays a run trains on into its results folder, <results>/data/<field>/<stem>.tif (field:
    train_raw, train_label, val_raw, val_label), and rewrite the run's config file to read them, so that
    `napari-bioflow train <config>` repeats the run. Returns a warning when they could not be written."""
    from ..engine.data.io import write_tiff

    exp = trainer.experiment
    if not inputs or exp is None:
        return None
    total = sum(int(getattr(data, "nbytes", 0)) for items in inputs.values() for _, data in items)
    if total > SAVE_INPUTS_MAX_BYTES:  # a copy of big (dask, zarr) layers would cost disk and time, not just RAM
        return (
            f"The layers are {total / 2**30:.1f} GB, too large to copy into run {exp.run_name}: its config file "
            f"{exp.config_path} cannot repeat the run (train from folders for that)."
        )
    root = exp.results / "data"
    saved = trainer.cfg.model_copy(deep=True)  # the trainer's own config stays as it is
    try:
        for field, items in inputs.items():
            for stem, data in items:
                write_tiff(root / field / f"{stem}.tif", data)
            setattr(saved.data, field, root / field)
        saved.save(exp.config_path)
    except (OSError, ValueError) as e:
        return (
            f"The layers could not be saved with run {exp.run_name} ({e}): its config file {exp.config_path} "
            f"cannot repeat the run."
        )
    return None


class TrainingCrashed(str):
    """The training's process crashed or was killed (out of memory, ...): one sentence for the dock."""


def training_job(trainer, preview: Preview | None = None, inputs: dict | None = None):
    """Runs in the worker thread: relay the reports of a training in its own process (engine/train/child.py's
    TrainingProcess: the preview is computed there, between epochs); write the layers trained on with the run once
    it has its folder (see save_inputs). `inputs`: layer arrays by config data field."""
    from ..engine.train import StartReport
    from ..engine.train.child import ChildFailed, ChildStopped

    load_triton_safely()  # here, not on the GUI thread: importing it takes ~130 ms (see shared.py)
    for report in trainer.run():
        if isinstance(report, ChildFailed):
            if report.input_error:
                yield TrainingFailed(report.message)
            else:
                log.error("training failed in its process:\n%s", report.traceback)
                yield TrainingCrashed(report.message)
            continue
        if isinstance(report, ChildStopped):
            exp = trainer.experiment
            best = exp.best_checkpoint if exp is not None and exp.best_checkpoint.is_file() else None
            kept = f"; its best checkpoint so far is kept: {best}" if best is not None else ""
            yield TrainingCrashed(report.message.rstrip(".") + kept + ".")
            continue
        yield report
        if isinstance(report, StartReport) and inputs:
            warning = save_inputs(trainer, inputs)
            if warning:
                yield InputsNotSaved(warning)


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
    warm_imports()  # triton before a checkpoint's torch code runs, dask: off the GUI thread (~0.6 s)
    try:
        return create(*args)
    except InputError as e:
        return Stopped(e)


def batch_job(make_run):
    """Runs in the worker thread: set the BatchRun up (`make_run()`: its checks and the checkpoint opened, seconds),
    hand it to the GUI (for Cancel), then relay its reports. A user's mistake met there (a missing folder, no cluster
    at the scheduler address, ...) comes back as a TrainingFailed value."""
    warm_imports()  # off the GUI thread (~0.6 s)
    try:
        run = make_run()
        yield run
        yield from run.run()
    except InputError as e:
        yield TrainingFailed(str(e))
