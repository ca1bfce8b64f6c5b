"""The batch's progress: what the executor sends (FileStarted, TilesDone, FileFinished) turned into the reports
(FileProgress, FileDone, FileFailed) with the fraction of the batch done, by pixels, and its ETA; what was done
and what failed is kept for the summary."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .events import FileDone, FileFailed, FileFinished, FileProgress, FileStarted, TilesDone
from .records import FileItem, FileRecord


class Progress:
    def __init__(self, run_dir: Path, todo: list[FileItem], start: float):
        self.run_dir = run_dir
        self.start = start
        self.records: dict[str, FileRecord] = {}  # by stem: the files this run finished
        self.failed: list[tuple[str, str]] = []  # (file, why)
        self.done: list[str] = []
        self._total_pixels = sum(it.pixels for it in todo if not it.error) or 1
        self._done_pixels = 0.0
        self._partial: dict[int, float] = {}  # files in flight (several at once on dask): pixels done

    def overall(self) -> tuple[float, float | None]:
        """(fraction of the batch's pixels done, ETA in seconds): finished files plus the part done of the files in
        flight."""
        done = self._done_pixels + sum(self._partial.values())
        fraction = min(1.0, done / self._total_pixels)
        elapsed = time.perf_counter() - self.start
        eta = elapsed * (1 - fraction) / fraction if fraction > 0 else None
        return fraction, eta

    def unreadable(self, item: FileItem) -> FileFailed:
        """A file the scan could not open: failed before anything ran."""
        self.failed.append((item.name, item.error))
        return FileFailed(item.index, item.name, item.error, *self.overall())

    def report(self, event: Any) -> Any:
        """The report of an executor's event (None: nothing to tell)."""
        if isinstance(event, FileStarted):
            return event
        if isinstance(event, TilesDone):
            return self._tiles(event.item, event.done, event.total)
        if isinstance(event, FileFinished):
            return self._finished(event.item, event.result)
        raise TypeError(f"not an executor event: {type(event).__name__}")

    def _tiles(self, item: FileItem, done: int, total: int) -> FileProgress:
        # tiles done is not the file done (its outputs are still to write): at most 95 % of it until it is
        self._partial[item.index] = 0.95 * item.pixels * done / max(1, total)
        return FileProgress(item.index, item.name, done, total, *self.overall())

    def _finished(self, item: FileItem, result) -> Any:
        self._partial.pop(item.index, None)
        if isinstance(result, FileRecord):
            self.records[item.stem] = result
            self.done.append(item.name)
            self._done_pixels += item.pixels
            return FileDone(
                item.index,
                item.name,
                item.stem,
                {k: self.run_dir / v for k, v in result.outputs.items()},
                [self.run_dir / p for p in result.files],
                result.metrics,
                result.prediction,
                result.seconds,
                *self.overall(),
            )
        if result.status == "failed":
            self.failed.append((item.name, result.reason))
            self._done_pixels += item.pixels  # it leaves the work still to do
            return FileFailed(item.index, item.name, result.reason, *self.overall())
        return None  # cancelled: left for a resumed run
