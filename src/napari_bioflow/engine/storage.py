"""A full disk is the user's problem to solve, not a crash: one sentence naming the folder (DiskFull, an InputError:
the CLI exits 2, a dock shows it), space reserved before a memory-mapped file is written (a write through a mapping
onto a full disk kills the process with SIGBUS instead of raising), and no `.part` file left behind.

    check_free(folder, nbytes, what)        before writing an output whose size is known
    reserve(fd, nbytes, folder, what)       allocate a file's blocks before memory-mapping it
    with writing(folder, what): ...         ENOSPC (and a spent quota) inside -> DiskFull naming `folder`
    raise_if_disk_full(error, folder, what) a batch's per-file handler: a full disk stops the run
    remove_parts(folder), remove_run_parts(experiment)    the `.part` files a failed or interrupted run left
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import InputError

FULL_ERRNOS = frozenset(e for e in (errno.ENOSPC, getattr(errno, "EDQUOT", None)) if e is not None)
# below this much free space a write is refused before it starts (file system metadata, logs, the next chunk)
MARGIN_BYTES = 1 * 2**20
PART_SUFFIXES = (".part", ".part.png")


class DiskFull(InputError):
    """The disk (or the user's quota) under an output folder has no room for what must be written."""

    ADVICE = "free some space or choose another output folder"

    def __init__(self, folder: Path | None, what: str, detail: str = "", advice: str = ADVICE):
        self.folder, self.what, self.detail, self.advice = folder, what, detail, advice
        disk = f"The disk holding {Path(folder)}" if folder is not None else "The disk of the output folder"
        super().__init__(f"{disk} is full: {what} could not be written{detail}; {advice}.")

    def __reduce__(self):  # raised on a dask worker, re-raised here
        return type(self), (self.folder, self.what, self.detail, self.advice)

    def advise(self, advice: str) -> DiskFull:
        """The same sentence with other advice (e.g. how to resume)."""
        return DiskFull(self.folder, self.what, self.detail, advice)


def _size(nbytes: int) -> str:
    for unit, scale in (("GB", 2**30), ("MB", 2**20), ("kB", 2**10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes} bytes"


def _existing(folder: Path) -> Path:
    probe = Path(folder).absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe


def free_bytes(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(_existing(folder)).free
    except OSError:
        return None


def disk_full(folder: Path, what: str, need: int | None = None) -> DiskFull:
    """The sentence: which folder, what could not be written, and the space it needs (and is free) when known."""
    free = free_bytes(folder) if need is not None else None  # after a failed write the free space says little
    detail = f" (it needs {_size(need)}{f', {_size(free)} are free' if free is not None else ''})" if need else ""
    return DiskFull(folder, what, detail)


def _full_error(error: BaseException | None) -> OSError | None:
    for _ in range(8):  # the error, what caused it, ... (torch.save wraps its file's OSError in a RuntimeError)
        if error is None or isinstance(error, OSError) and error.errno in FULL_ERRNOS:
            return error
        error = error.__cause__ or error.__context__
    return None


def is_disk_full(error: BaseException) -> bool:
    """ENOSPC or EDQUOT in `error` or in what caused it."""
    return _full_error(error) is not None


def disk_full_from(error: BaseException) -> DiskFull | None:
    """The DiskFull sentence for an unguarded error caused by a full disk (the folder of the file it names), or None."""
    error = _full_error(error)
    if error is None:
        return None
    name = error.filename
    if not name:
        return DiskFull(None, "a file of the run")
    return disk_full(Path(os.fsdecode(name)).parent, Path(os.fsdecode(name)).name)


def check_free(folder: Path, nbytes: int, what: str) -> None:
    """Refuse to start writing `nbytes` into `folder` when its disk has not that much free plus a margin (what is
    written next: logs, metadata)."""
    free, need = free_bytes(folder), int(nbytes) + MARGIN_BYTES
    if free is not None and free < need:
        raise disk_full(folder, what, need)


def reserve(fd: int, nbytes: int, folder: Path, what: str) -> None:
    """Allocate the first `nbytes` of an open file on disk, so that writing them later (through a memory mapping)
    cannot fail. Where the file system cannot allocate ahead, the free space is checked instead."""
    try:
        os.posix_fallocate(fd, 0, int(nbytes))
        return
    except AttributeError:  # not on this platform (macOS, Windows)
        pass
    except OSError as e:
        if e.errno in FULL_ERRNOS:
            raise disk_full(folder, what, int(nbytes)) from None
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS, getattr(errno, "ENOTSUP", -1)):
            raise
    check_free(folder, nbytes, what)  # the file is still sparse: its blocks are not taken yet


def raise_if_disk_full(error: BaseException, folder: Path, what: str) -> None:
    """In a handler that would report `error` and go on (a batch's failed file): a full disk stops the run instead,
    as DiskFull naming `folder` (every later file would fail the same way)."""
    if isinstance(error, DiskFull):
        raise error
    if is_disk_full(error):
        raise disk_full(folder, what) from None


@contextmanager
def writing(folder: Path, what: str) -> Iterator[None]:
    """Turn a full disk met while writing `what` into `folder` into DiskFull naming the folder."""
    try:
        yield
    except DiskFull:
        raise
    except Exception as e:
        if is_disk_full(e):
            raise disk_full(folder, what) from None
        raise


def remove_parts(folder: Path, prefix: str = "") -> list[Path]:
    """Remove the `.part` files (of names starting with `prefix`) under `folder`: unfinished writes of an interrupted
    run, never a finished file (those are renamed into place)."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for path in folder.rglob(f"{prefix}*.part*"):
        if path.is_file() and path.name.endswith(PART_SUFFIXES):
            try:
                path.unlink()
                removed.append(path)
            except OSError:
                pass
    return removed


def remove_run_parts(experiment) -> None:
    """After a run failed or was interrupted: the `.part` files of this run (engine/experiment.py's Experiment), not
    those of another run of the experiment writing beside it."""
    if experiment is None:
        return
    remove_parts(experiment.results)
    remove_parts(experiment.root / "checkpoints", f"{experiment.run_name}-")
    remove_parts(experiment.root / "config_files", f"{experiment.run_name}.")


def discard(path: Path) -> None:
    """Remove a temporary file after a failed write (nothing if it is gone already)."""
    try:
        Path(path).unlink()
    except OSError:
        pass
