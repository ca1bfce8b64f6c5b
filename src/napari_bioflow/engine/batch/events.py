"""What a batch run is asked for (BatchRequest) and what it tells (the reports: BatchStarted, FileStarted,
FileProgress, FileDone | FileFailed, ..., BatchSummary), and what an executor tells the run (FileStarted,
TilesDone, FileFinished), which the run turns into reports with the batch's overall progress."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from .records import FileItem, TaskResult


@dataclass
class BatchRequest:
    checkpoint: Path | None = None
    input_dir: Path | None = None
    output_dir: Path = Path("bioflow_runs")
    labels_dir: Path | None = None
    name: str = "batch"
    resume: Path | None = None  # the results folder of an earlier batch run, continued in place
    device: str = "auto"
    overrides: list[str] = field(default_factory=list)  # "predict.FIELD=VALUE" applied to the checkpoint's config
    scheduler: str | None = None  # a dask scheduler address (tcp://host:8786)
    workers: int = 0  # > 0: a dask LocalCluster of this many worker processes; 0 and no scheduler: this process
    block_size: int | None = None  # per axis; images larger are split into blocks (None: DEFAULT_BLOCK with dask)
    halo: int | None = None  # context added around each block, per axis (None: half the training patch)

    @property
    def distributed(self) -> bool:
        return bool(self.scheduler) or self.workers > 0


@dataclass
class BatchStarted:
    run_dir: Path
    config_path: Path
    names: list[str]  # every file of the folder, in order
    to_do: list[str]  # the files this run predicts
    finished_earlier: list[str]  # resumed: the files an earlier run of this folder finished (skipped)
    resumed: bool
    mode: str  # "this process" or the dask cluster
    # a new run whose checkpoint, folders and settings equal those of an earlier, unfinished run: that run's folder
    # and how many of its files were finished (it can be continued with `resume` instead)
    unfinished_earlier: tuple[Path, int, int] | None = None

    def hint(self) -> str:
        if self.unfinished_earlier is None:
            return ""
        run, done, total = self.unfinished_earlier
        return (
            f"the earlier run {run} of this checkpoint and folder is unfinished ({done} of {total} files); "
            f"resume it to predict only the rest"
        )


@dataclass
class FileStarted:
    index: int
    name: str
    stem: str
    tiles: int  # tiles (or blocks) to predict; 0 when unknown
    open_live: Callable[[], Any] | None = field(default=None, repr=False)

    @property
    def live(self):
        """A dask array over the prediction being written (channel first), or None; built on first use, so a
        consumer that shows nothing (the CLI) pays nothing for it."""
        if self.open_live is None:
            return None
        if not hasattr(self, "_live"):
            self._live = self.open_live()
        return self._live


@dataclass
class FileProgress:
    index: int
    name: str
    done: int
    total: int
    overall: float  # 0..1 over the whole batch (by pixels)
    eta_seconds: float | None


@dataclass
class FileDone:
    index: int
    name: str
    stem: str
    outputs: dict[str, Path]  # zarr arrays by output name (e.g. probabilities, labels)
    files: list[Path]  # the TIFFs written for this file
    metrics: dict[str, float]
    prediction: dict | None  # per-image workflows: the predictions.csv row
    seconds: float
    overall: float
    eta_seconds: float | None


@dataclass
class FileFailed:
    index: int
    name: str
    reason: str  # one sentence naming the file
    overall: float = 0.0
    eta_seconds: float | None = None


@dataclass
class BatchSummary:
    run_dir: Path
    done: list[str]  # predicted by this run
    finished_earlier: list[str]
    failed: list[tuple[str, str]]  # (file, why)
    not_run: list[str]  # left by a cancel: a resumed run predicts them
    cancelled: bool
    seconds: float
    megapixels: float  # of the files this run predicted
    metrics_csv: Path | None = None
    predictions_csv: Path | None = None
    summary_csv: Path | None = None

    @property
    def files_per_second(self) -> float:
        return len(self.done) / self.seconds if self.seconds > 0 else 0.0

    @property
    def megapixels_per_second(self) -> float:
        return self.megapixels / self.seconds if self.seconds > 0 else 0.0

    def text(self) -> str:
        parts = [f"{len(self.done)} predicted"]
        if self.finished_earlier:
            parts.append(f"{len(self.finished_earlier)} finished earlier")
        if self.failed:
            parts.append(f"{len(self.failed)} failed ({', '.join(Path(n).name for n, _ in self.failed)})")
        if self.not_run:
            parts.append(f"{len(self.not_run)} left by the cancel")
        head = "Batch cancelled" if self.cancelled else "Batch done"
        return f"{head}: {', '.join(parts)} in {self.seconds:.1f} s; results in {self.run_dir}"


# --------------------------------------------------------------------------------------------------
# What executors send the run
# --------------------------------------------------------------------------------------------------


@dataclass
class TilesDone:
    """Progress of a file in flight: tiles (or blocks) done of total."""

    item: FileItem
    done: int
    total: int


@dataclass
class FileFinished:
    """A file's task ended: its record (done) or Unfinished (failed, cancelled)."""

    item: FileItem
    result: TaskResult


ExecutorEvent = Union[FileStarted, TilesDone, FileFinished]
