"""Training in its own process (no Qt): `TrainingProcess.run()` yields the same typed reports as `Trainer.run()`, but
the Trainer runs in a child Python (`python -m napari_bioflow.engine.train.child`), so a front end's GUI thread never
waits on the trainer's Python, a crash or an out-of-memory kill of the child leaves the front end running, and the
GPU memory goes back when the child exits.

Data: the samples (and the preview's image) are written once into a staging folder, arrays as .npy files that the
child maps from disk (`stash`/`unstash`), so nothing large goes through the pipe. Reports come back pickled over a
`multiprocessing.connection` over a socket pair; the parent sends "cancel" and the preview's field of view. Step
reports are thinned to one per `STEP_REPORT_SECONDS` (the last step of an epoch always comes).

Cancel: cooperative first (the trainer stops at the next batch, a DoneReport comes back); after `CANCEL_GRACE` s the
child is terminated (SIGTERM: its checkpoint writes clean up), then killed; the dock then gets a DoneReport built
from the run's folder (its best checkpoint, written at an epoch's end, stays valid).
"""

from __future__ import annotations

import math
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from . import DoneReport, EpochReport, StartReport, StepReport

STASH_MIN_BYTES = 64 * 1024  # arrays from this size go to .npy files, smaller ones into the pickle
STEP_REPORT_SECONDS = 0.05
CANCEL_GRACE = 0.5  # seconds a cancelled child has to stop by itself, then SIGTERM
KILL_GRACE = 0.3  # then SIGKILL
NICE = 5  # the child's CPU priority below the front end's: a GUI thread that wakes is not kept waiting by it


@dataclass
class ChildConfig:
    """The trainer's config once set up (e.g. the classes found in folders): the front end's copy follows it."""

    cfg: object


@dataclass
class ChildFailed:
    """The training raised: a user's mistake (`input`: one sentence) or a crash (`traceback` for the log)."""

    message: str
    input_error: bool
    traceback: str = ""


@dataclass
class ChildStopped:
    """The child ended without finishing (killed by a signal, e.g. out of memory, or a crash outside Python)."""

    message: str
    returncode: int


# --- the staging folder -------------------------------------------------------------------------------------
class _Stasher(pickle.Pickler):
    def __init__(self, file, folder: Path):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.folder, self.saved = folder, {}

    def persistent_id(self, obj):
        if type(obj) is not np.ndarray and not isinstance(obj, np.memmap):
            return None
        if obj.dtype.hasobject or obj.nbytes < STASH_MIN_BYTES:
            return None
        name = self.saved.get(id(obj))
        if name is None:
            name = self.saved[id(obj)] = f"array_{len(self.saved)}.npy"
            np.save(self.folder / name, obj, allow_pickle=False)
        return name


class _Unstasher(pickle.Unpickler):
    def __init__(self, file, folder: Path):
        super().__init__(file)
        self.folder, self.loaded = folder, {}

    def persistent_load(self, name):
        if name not in self.loaded:  # copy-on-write maps: read from disk as needed, never written back
            self.loaded[name] = np.load(self.folder / name, mmap_mode="c", allow_pickle=False)
        return self.loaded[name]


def stash(obj, folder: Path) -> Path:
    """Write `obj` into `folder` (its large numpy arrays as .npy files); returns the pickle's path."""
    path = folder / "inputs.pkl"
    with open(path, "wb") as f:
        _Stasher(f, folder).dump(obj)
    return path


def unstash(folder: Path):
    with open(folder / "inputs.pkl", "rb") as f:
        return _Unstasher(f, folder).load()


# --- the front end's side ----------------------------------------------------------------------------------
def signal_name(returncode: int) -> str:
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


def stopped_message(returncode: int) -> str:
    if returncode < 0:
        why = " (the system may have run out of memory)" if -returncode == signal.SIGKILL else ""
        return f"Training stopped: its process was killed by {signal_name(returncode)}{why}."
    return f"Training stopped: its process ended with exit code {returncode} before finishing."


class TrainingProcess:
    """The front end's handle on a training in a child process. `run()` (in a worker thread) starts the child and
    yields its reports; `cancel()` and `view` may be called from another thread (the GUI's)."""

    def __init__(self, cfg, train=None, val=None, preview_image=None, preview_ms: float = 0, preview_every: int = 1):
        self.cfg = cfg
        self._given = (train, val, preview_image)
        self._preview = (preview_ms, preview_every)
        self._cancel = threading.Event()
        self._send_lock = threading.Lock()
        self._conn = None
        self._view = None
        self.process: subprocess.Popen | None = None
        self.experiment = None  # the run's Experiment, from its StartReport
        self.epochs_run = 0
        self._best = (0, float("inf"))  # (epoch, loss) of the last improvement
        self._cancel_time = 0.0

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def cancel(self) -> None:
        if not self._cancel.is_set():
            self._cancel_time = time.monotonic()
            self._cancel.set()
        self._send(("cancel", None))

    def set_view(self, region) -> None:
        """The field of view to preview (a ViewRegion, or None): kept and sent to the child."""
        self._view = region
        self._send(("view", region))

    def _send(self, message) -> None:
        with self._send_lock:
            if self._conn is not None:
                try:
                    self._conn.send(message)
                except OSError:  # the child is gone: its end is reported by run()
                    pass

    def run(self):
        import socket
        from multiprocessing.connection import Connection

        staging = Path(tempfile.mkdtemp(prefix="bioflow_training_"))
        ours, theirs = socket.socketpair()
        try:
            stash(self._given, staging)
            self.process = subprocess.Popen(
                [sys.executable, "-m", "napari_bioflow.engine.train.child", str(staging), str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
            )
            theirs.close()
            conn = Connection(ours.detach())
            from ..workflows.base import added_workflows

            conn.send(list(sys.path))  # first, so that the workflows added here (a plugin's) unpickle there
            conn.send((self.cfg, self._preview, self._view, added_workflows()))
            with self._send_lock:
                self._conn = conn
            if self._cancel.is_set():
                self._send(("cancel", None))
            yield from self._relay(conn)
        finally:
            self._stop()
            theirs.close()
            ours.close()
            with self._send_lock:
                if self._conn is not None:
                    self._conn.close()
                self._conn = None
            shutil.rmtree(staging, ignore_errors=True)

    def _relay(self, conn):
        while True:
            if self._cancel.is_set() and time.monotonic() - self._cancel_time > CANCEL_GRACE:
                yield from self._end_cancelled()
                return
            try:
                if not conn.poll(0.05):
                    continue
                message = conn.recv()
            except (EOFError, OSError):  # the child is gone without a last report
                code = self._wait(5.0)
                if self._cancel.is_set():
                    yield from self._end_cancelled()
                else:
                    yield ChildStopped(stopped_message(code), code)
                return
            if isinstance(message, StartReport):
                self._start(message)
            elif isinstance(message, EpochReport):
                self.epochs_run = message.epoch
                if message.improved:
                    monitor = message.val_loss if not math.isnan(message.val_loss) else message.train_loss
                    self._best = (message.epoch, monitor)
            elif isinstance(message, ChildConfig):
                self.cfg = message.cfg
                continue
            yield message
            if isinstance(message, (DoneReport, ChildFailed)):
                self._wait(5.0)  # the child exits by itself (its GPU memory goes with it)
                return

    def _wait(self, seconds: float) -> int:
        try:
            return self.process.wait(seconds)
        except subprocess.TimeoutExpired:
            self._stop()
            return self.process.returncode

    def _start(self, report: StartReport) -> None:
        from ..experiment import Experiment

        name, _, run = report.run_name.rpartition("_")
        self.experiment = Experiment(Path(report.experiment_dir), name, int(run))

    def _end_cancelled(self):
        """The child did not stop in time after a cancel: end it; report the run as cancelled."""
        self._stop()
        exp = self.experiment
        if exp is None:
            return
        best = exp.best_checkpoint if exp.best_checkpoint.is_file() else None
        epoch, loss = self._best if best is not None else (0, float("inf"))
        yield DoneReport("cancelled", self.epochs_run, epoch, loss, best, exp.root)

    def _stop(self) -> None:
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, KILL_GRACE), (signal.SIGKILL, 5.0)):
            proc.send_signal(sig)
            try:
                proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue


# --- the child's side --------------------------------------------------------------------------------------
def _listen(conn, trainer, preview) -> None:
    """The child's second thread: cancel and field-of-view messages from the front end; a closed connection (the
    front end is gone) cancels."""
    while True:
        try:
            kind, value = conn.recv()
        except (EOFError, OSError):
            trainer.cancel()
            return
        if kind == "cancel":
            trainer.cancel()
        elif kind == "view" and preview is not None:
            preview.view = value


def _train(conn, trainer, preview) -> None:
    last_step = 0.0
    for report in trainer.run():
        if isinstance(report, StepReport):
            now = time.monotonic()
            if report.step != report.steps and now - last_step < STEP_REPORT_SECONDS:
                continue
            last_step = now
        if isinstance(report, StartReport):
            conn.send(ChildConfig(trainer.cfg))  # first: the front end's copy is set up when the run starts
        conn.send(report)
        if isinstance(report, StartReport):
            if preview is not None:
                preview.steps_per_epoch = report.steps_per_epoch
        elif isinstance(report, EpochReport) and preview is not None:
            result = preview.maybe_predict(trainer, report)
            if result is not None:
                conn.send(result)


def main(folder: str, fd: int) -> int:
    import socket
    from multiprocessing.connection import Connection

    from . import Trainer
    from .live_preview import LivePreview, PreviewBudget

    def terminated(*_):
        raise SystemExit(128 + signal.SIGTERM)

    signal.signal(signal.SIGTERM, terminated)  # unwinds: checkpoint writes take their .part files away
    try:
        os.nice(NICE)
    except OSError:  # not allowed here: train at the same priority
        pass
    from ..workflows.base import register_workflow, workflow_classes

    conn = Connection(socket.socket(fileno=fd).detach())
    sys.path.extend(p for p in conn.recv() if p not in sys.path)
    cfg, (preview_ms, preview_every), view, added = conn.recv()
    known = set(workflow_classes())
    for cls in added:
        if cls not in known:
            register_workflow(cls)
    train, val, image = unstash(Path(folder))
    trainer = Trainer(cfg, train=train, val=val)
    preview = LivePreview(image, PreviewBudget(preview_ms, preview_every)) if image is not None else None
    if preview is not None:
        preview.view = view
    threading.Thread(target=_listen, args=(conn, trainer, preview), daemon=True).start()
    try:
        _train(conn, trainer, preview)
    except InputError as e:
        conn.send(ChildFailed(str(e), True))
    except Exception as e:  # noqa: BLE001  (reported to the front end in one sentence, the traceback logged)
        conn.send(ChildFailed(f"Training failed: {type(e).__name__}: {e}", False, traceback.format_exc()))
        return 1
    finally:
        conn.close()
    return 0


if __name__ == "__main__":  # run by its module name, so that its reports unpickle as this module's classes
    from napari_bioflow.engine.train import child

    sys.exit(child.main(sys.argv[1], int(sys.argv[2])))
