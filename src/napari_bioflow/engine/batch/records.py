"""What batch work is made of and what it gives back, picklable (dask workers get and return them): the files
(FileItem), the settings every task needs (TaskContext), the blocks of a split image (Block), and the results of
a task: a finished file's FileRecord (also its completion marker, batch/done/<stem>.json), a finished block
(BlockDone) or a file left unfinished (Unfinished: failed, with the reason, or cancelled).

The marker's JSON keeps the format every earlier run wrote, so that a resumed run of any of them reads it."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import numpy as np

from ..storage import discard

BATCH_DIR = "batch"
MANIFEST = "manifest.json"
DONE_DIR = "done"
BLOCKS_DIR = ".blocks"  # scratch space of the blocks of split images (dask over the chunks of one huge volume)
BLOCK_CHUNK = {2: 512, 3: 64}  # the output chunk of split images; blocks are whole multiples of it


@dataclass
class FileItem:
    index: int
    raw: str  # absolute paths, so that workers elsewhere read the same files
    label: str | None
    name: str  # the file name, for messages and tables
    stem: str  # output file names
    pixels: int = 0  # spatial pixels/voxels (for the ETA); 0 until scanned
    shape: tuple = ()  # spatial shape
    error: str = ""  # why the file cannot be predicted (found by the scan)
    true_class: int | None = None  # classification: the class of the input's class sub-folder, if it has one


@dataclass
class TaskContext:
    checkpoint: str
    config: dict  # the run's RunConfig (checkpoint config + this run's predict settings), as JSON
    run_dir: str
    device: str  # "auto" is resolved where the task runs
    torch_threads: int = 0  # > 0: torch.set_num_threads in the task (local cluster workers share the cores)
    topic: str = ""  # dask: the event topic for progress
    cancel_event: str = ""  # dask: the name of the distributed.Event that cancels


@dataclass
class Block:
    index: int
    core: tuple  # slices of the output this block writes (whole chunks of the output array)
    outer: tuple  # core plus the halo, clipped to the image: what the block predicts


@dataclass
class FileRecord:
    """What a finished file produced; paths relative to the run folder."""

    name: str
    raw: str
    label: str | None
    stem: str
    outputs: dict[str, str] = field(default_factory=dict)  # zarr arrays by output name (probabilities, labels)
    files: list[str] = field(default_factory=list)  # the TIFFs (and checks) written for the file
    metrics: dict[str, float] = field(default_factory=dict)
    counts: list | None = None  # per-class pixel counts (intersection, union): IoU pooled over the set
    prediction: dict | None = None  # per-image workflows: the predictions.csv row
    seconds: float = 0.0
    pixels: int = 0
    status = "done"

    def to_json(self) -> dict:
        return {
            "status": "done",
            "name": self.name,
            "raw": self.raw,
            "label": self.label,
            "stem": self.stem,
            "outputs": dict(self.outputs),
            "files": list(self.files),
            "metrics": dict(self.metrics),
            "counts": self.counts,
            "prediction": self.prediction,
            "seconds": self.seconds,
            "pixels": self.pixels,
        }

    @classmethod
    def from_json(cls, data: dict) -> FileRecord:
        """A marker as any run wrote it (keys an older run lacks take their defaults)."""
        return cls(
            name=data.get("name", ""),
            raw=data.get("raw", ""),
            label=data.get("label"),
            stem=data.get("stem", ""),
            outputs=dict(data.get("outputs") or {}),
            files=list(data.get("files") or []),
            metrics=dict(data.get("metrics") or {}),
            counts=data.get("counts"),
            prediction=data.get("prediction"),
            seconds=float(data.get("seconds") or 0.0),
            pixels=int(data.get("pixels") or 0),
        )

    def paths(self, run_dir: Path) -> list[Path]:
        """Every output and file the record lists, as paths."""
        return [Path(run_dir) / p for p in [*self.outputs.values(), *self.files]]


@dataclass
class BlockDone:
    block: int
    seconds: float
    pixels: int
    status = "done"


@dataclass
class Unfinished:
    """A file a task did not finish: failed (the reason, one sentence naming the file) or cancelled (left for a
    resumed run)."""

    status: str  # "failed" | "cancelled"
    name: str
    reason: str = ""

    @classmethod
    def failed(cls, name: str, reason: str) -> Unfinished:
        return cls("failed", name, reason)

    @classmethod
    def cancelled(cls, name: str) -> Unfinished:
        return cls("cancelled", name)


TaskResult = Union[FileRecord, Unfinished]
BlockResult = Union[BlockDone, Unfinished]


def marker_path(run_dir: Path, stem: str) -> Path:
    return Path(run_dir) / BATCH_DIR / DONE_DIR / f"{stem}.json"


def read_record(path: Path) -> FileRecord | None:
    """The completion marker at `path`, or None when it is missing or unreadable."""
    try:
        return FileRecord.from_json(json.loads(Path(path).read_text()))
    except (OSError, ValueError, AttributeError, TypeError):
        return None


def write_json(path: Path, data: dict) -> None:
    """Write JSON atomically (a .part file renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    try:
        tmp.write_text(json.dumps(data, indent=1, default=_json_default))
        os.replace(tmp, path)
    except BaseException:
        discard(tmp)
        raise


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(type(value).__name__)
