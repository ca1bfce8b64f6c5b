"""Batch prediction of a folder with a checkpoint: every file through the checkpoint's workflow, into the
experiment layout, resumable, with typed reports and a cooperative cancel. No Qt or napari here.

    run = BatchRun(BatchRequest(checkpoint=..., input_dir=..., output_dir=...))   # checks; claims the run folder
    for report in run.run():          # BatchStarted, FileStarted, FileProgress, FileDone | FileFailed, ..., BatchSummary
        ...
    run.cancel()                      # from any thread: stops after the current tile batch

Layout (a new run id per plain run; `resume=` continues an earlier run's folder in place):

    <output_dir>/<name>/config_files/<name>_<run>.yaml      the checkpoint's config with this run's predict settings
    <output_dir>/<name>/results/<name>_<run>/
        per_image/<stem>.zarr, per_image/<stem>.tif, per_image_binarized/<stem>.tif   (as the workflow writes them)
        metrics.csv              per file and over the set, when labels are given
        predictions.csv          one row per file, for workflows that predict one value per image (classification)
        batch_summary.csv        every file: done | failed (why) | cancelled | not run
        batch/manifest.json      what the run predicts (checkpoint, folders, file -> stem)
        batch/done/<stem>.json   completion marker of one file, written last and atomically (metrics, outputs)

A file counts as finished only once its marker exists; a resumed run skips those and redoes the others from
scratch (their partial zarr store is removed first; TIFFs are written atomically anyway).

The per-file step dispatches on the workflow: dense workflows (every one so far) go through `ImagePrediction`;
a workflow with `dense = False` (classification) predicts one value per image through its own
`predict_file(loaded, image, name, run_dir, stem, device, target) -> {"prediction": {column: value},
"metrics": {...}}` (optional), and the rows go into predictions.csv.

Files run in this process (a helper thread, so tile progress can be reported while the generator waits), or on
`dask.distributed` (see engine/dask_executor.py) with `scheduler=` an address or `workers=` N local processes.
"""
from __future__ import annotations

import csv
import json
import logging
import os
import queue
import shutil
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np

from .errors import Cancelled, InputError
from .storage import discard, raise_if_disk_full, remove_parts
from .pairing import assign_stems  # noqa: F401  (output names: one rule with predict, engine/pairing.py)

log = logging.getLogger(__name__)

BATCH_DIR = "batch"
MANIFEST = "manifest.json"
DONE_DIR = "done"
BLOCKS_DIR = ".blocks"  # scratch space of the blocks of split images (dask over the chunks of one huge volume)
DEFAULT_BLOCK = {2: 2048, 3: 256}  # dask: images bigger than this per axis are split into blocks over the workers
BLOCK_CHUNK = {2: 512, 3: 64}  # the output chunk of split images; blocks are whole multiples of it


# --------------------------------------------------------------------------------------------------
# Request and reports
# --------------------------------------------------------------------------------------------------


@dataclass
class BatchRequest:
    checkpoint: Optional[Path] = None
    input_dir: Optional[Path] = None
    output_dir: Path = Path("bioflow_runs")
    labels_dir: Optional[Path] = None
    name: str = "batch"
    resume: Optional[Path] = None  # the results folder of an earlier batch run, continued in place
    device: str = "auto"
    overrides: list[str] = field(default_factory=list)  # "predict.FIELD=VALUE" applied to the checkpoint's config
    scheduler: Optional[str] = None  # a dask scheduler address (tcp://host:8786)
    workers: int = 0  # > 0: a dask LocalCluster of this many worker processes; 0 and no scheduler: this process
    block_size: Optional[int] = None  # per axis; images larger are split into blocks (None: DEFAULT_BLOCK with dask)
    halo: Optional[int] = None  # context added around each block, per axis (None: half the training patch)

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
    unfinished_earlier: Optional[tuple[Path, int, int]] = None

    def hint(self) -> str:
        if self.unfinished_earlier is None:
            return ""
        run, done, total = self.unfinished_earlier
        return (f"the earlier run {run} of this checkpoint and folder is unfinished ({done} of {total} files); "
                f"resume it to predict only the rest")


@dataclass
class FileStarted:
    index: int
    name: str
    stem: str
    tiles: int  # tiles (or blocks) to predict; 0 when unknown
    open_live: Optional[Callable[[], Any]] = field(default=None, repr=False)

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
    eta_seconds: Optional[float]


@dataclass
class FileDone:
    index: int
    name: str
    stem: str
    outputs: dict[str, Path]  # zarr arrays by output name (e.g. probabilities, labels)
    files: list[Path]  # the TIFFs written for this file
    metrics: dict[str, float]
    prediction: Optional[dict]  # per-image workflows: the predictions.csv row
    seconds: float
    overall: float
    eta_seconds: Optional[float]


@dataclass
class FileFailed:
    index: int
    name: str
    reason: str  # one sentence naming the file
    overall: float = 0.0
    eta_seconds: Optional[float] = None


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
    metrics_csv: Optional[Path] = None
    predictions_csv: Optional[Path] = None
    summary_csv: Optional[Path] = None

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
# Files and what runs for each of them (picklable: dask workers run the same functions)
# --------------------------------------------------------------------------------------------------


@dataclass
class FileItem:
    index: int
    raw: str  # absolute paths, so that workers elsewhere read the same files
    label: Optional[str]
    name: str  # the file name, for messages and tables
    stem: str  # output file names
    pixels: int = 0  # spatial pixels/voxels (for the ETA); 0 until scanned
    shape: tuple = ()  # spatial shape
    error: str = ""  # why the file cannot be predicted (found by the scan)
    true_class: Optional[int] = None  # classification: the class of the input's class sub-folder, if it has one


@dataclass
class TaskContext:
    checkpoint: str
    config: dict  # the run's RunConfig (checkpoint config + this run's predict settings), as JSON
    run_dir: str
    device: str  # "auto" is resolved where the task runs
    torch_threads: int = 0  # > 0: torch.set_num_threads in the task (local cluster workers share the cores)
    topic: str = ""  # dask: the event topic for progress
    cancel_event: str = ""  # dask: the name of the distributed.Event that cancels


_MODELS: dict[tuple, Any] = {}  # per process: a worker loads a checkpoint once


def load_for_task(ctx: TaskContext, loaded=None):
    """The model with the run's config: the one given (this process), else loaded once per process."""
    from ..config import RunConfig

    if loaded is not None:
        return loaded
    from .checkpoint import load_model
    from .train import resolve_device

    key = (ctx.checkpoint, os.stat(ctx.checkpoint).st_mtime_ns, ctx.device, json.dumps(ctx.config, sort_keys=True))
    if key not in _MODELS:
        _MODELS.clear()
        if ctx.torch_threads:
            import torch

            torch.set_num_threads(ctx.torch_threads)
        model = load_model(Path(ctx.checkpoint), resolve_device(ctx.device))
        model.config = RunConfig.model_validate(ctx.config)
        _MODELS[key] = model
    return _MODELS[key]


def open_channels_last(path: str, cfg, name: str, checkpoint: str = ""):
    """Open an image file as (Z,)Y,X,C without loading it; leading axes of length 1 (OME-Zarr's T, C) dropped."""
    from .io import open_image
    from .sources import lazy_array, to_channels_last

    arr = open_image(Path(path))
    if len(arr.shape) < 2 or 0 in tuple(arr.shape):
        raise InputError(f"File {path} cannot be read as an image: it holds no pixels (shape {tuple(arr.shape)}).")
    while len(arr.shape) > cfg.ndim + 1 and arr.shape[0] == 1:
        arr = lazy_array(arr)[0]
    return to_channels_last(arr, cfg.ndim, cfg.data.in_channels, name, f"checkpoint {checkpoint}" if checkpoint else "the checkpoint")


def _relative(run_dir: Path, path: Path) -> str:
    return str(Path(path).relative_to(run_dir))


def _zarr_path(arr) -> Optional[Path]:
    store = getattr(arr, "store", None)
    root = getattr(store, "root", None)
    if root is None:
        return None
    return Path(root) / (getattr(arr, "path", "") or "")


def _files_of(run_dir: Path, stem: str) -> list[Path]:
    """The files written for `stem` beside its zarr store (per_image/<stem>.tif, per_image_binarized/..., ...)."""
    out = []
    for sub in sorted(p for p in run_dir.iterdir() if p.is_dir() and p.name not in (BATCH_DIR, BLOCKS_DIR)):
        out += sorted(p for p in sub.iterdir() if p.is_file() and p.name.split(".")[0] == stem
                      and not p.name.endswith(".part"))
        if sub.name == "MAE_checks":
            out += sorted(p for p in sub.glob(f"{stem}_*.tif"))
    return out


def clear_partial(run_dir: Path, stem: str) -> None:
    """Remove what an unfinished earlier attempt at `stem` left (its zarr store and blocks)."""
    shutil.rmtree(run_dir / "per_image" / f"{stem}.zarr", ignore_errors=True)
    shutil.rmtree(run_dir / BLOCKS_DIR / stem, ignore_errors=True)


def _write_json(path: Path, data: dict) -> None:
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


def marker_path(run_dir: Path, stem: str) -> Path:
    return Path(run_dir) / BATCH_DIR / DONE_DIR / f"{stem}.json"


def _finish_record(run_dir: Path, item: FileItem, outputs: dict, metrics: dict, counts, prediction, seconds: float,
                   pixels: int) -> dict:
    """Write the completion marker of a file (last, atomically) and return it."""
    arrays = {}
    for key, value in outputs.items():
        path = _zarr_path(value)
        if path is not None and path.exists():
            arrays[key] = _relative(run_dir, path)
    fallback = run_dir / "per_image" / f"{item.stem}.zarr" / "prediction"
    if not arrays and fallback.exists():  # outputs held in memory only (self-supervision): the blended prediction
        arrays["prediction"] = _relative(run_dir, fallback)
    record = {"status": "done", "name": item.name, "raw": item.raw, "label": item.label, "stem": item.stem,
              "outputs": arrays, "files": [_relative(run_dir, p) for p in _files_of(run_dir, item.stem)],
              "metrics": {k: float(v) for k, v in (metrics or {}).items()},
              "counts": [np.asarray(c).tolist() for c in counts] if counts is not None else None,
              "prediction": prediction, "seconds": seconds, "pixels": pixels}
    _write_json(marker_path(run_dir, item.stem), record)
    return record


def predict_item(ctx: TaskContext, item: FileItem, loaded=None, cancel: Optional[Callable[[], bool]] = None,
                 progress: Optional[Callable[[int, int], None]] = None,
                 on_start: Optional[Callable[[Any], None]] = None) -> dict:
    """Predict one file into the run folder and mark it finished; the per-file step of every executor.
    Returns the record (status done), or {"status": "failed"|"cancelled", "reason": ...}: never raises for a
    file's own problem, so one bad file never stops a batch."""
    start = time.perf_counter()
    try:
        loaded = load_for_task(ctx, loaded)
        cfg, wf = loaded.config, loaded.workflow
        run_dir = Path(ctx.run_dir)
        device = loaded_device(loaded, ctx.device)
        image = open_channels_last(item.raw, cfg, item.raw, ctx.checkpoint)
        target = None
        if item.true_class is not None:
            target = item.true_class
        elif item.label:
            from .io import open_image

            target = open_image(Path(item.label))
        pixels = int(np.prod(image.shape[:-1]))
        if not getattr(wf, "dense", True):  # one value per image (classification): the workflow's own step
            clear_partial(run_dir, item.stem)
            if on_start is not None:
                on_start(None)
            out = wf.predict_file(loaded, image, item.raw, run_dir, item.stem, device, target) or {}
            return _finish_record(run_dir, item, {}, out.get("metrics", {}), None, out.get("prediction"),
                                  time.perf_counter() - start, pixels)
        from .predictor import Predictor

        clear_partial(run_dir, item.stem)
        job = Predictor.of(loaded, ctx.checkpoint).image(image, item.raw, run_dir, item.stem, target, item.label or "")
        if on_start is not None:
            on_start(job)
        result = job.run(cancel=cancel, progress=progress)
        job.cleanup()
        counts = result.outputs.pop("counts", None)
        return _finish_record(run_dir, item, result.outputs, result.metrics, counts, None,
                              time.perf_counter() - start, pixels)
    except Cancelled:
        return {"status": "cancelled", "name": item.name}
    except InputError as e:
        raise_if_disk_full(e, Path(ctx.run_dir), f"the results of {item.raw}")  # a full disk stops the batch
        return {"status": "failed", "name": item.name, "reason": str(e)}
    except Exception as e:  # a bug or an I/O error on one file: reported, the batch goes on
        raise_if_disk_full(e, Path(ctx.run_dir), f"the results of {item.raw}")
        log.exception("batch: %s failed", item.raw)
        return {"status": "failed", "name": item.name, "reason": f"{item.raw} failed: {type(e).__name__}: {e}"}


def loaded_device(loaded, requested: str) -> str:
    from .train import resolve_device

    try:
        return str(next(loaded.model.parameters()).device)
    except (StopIteration, AttributeError):
        return resolve_device(requested)


# --------------------------------------------------------------------------------------------------
# Blocks: the chunks of one huge image, each predicted with a halo of context, written into one zarr
# --------------------------------------------------------------------------------------------------


@dataclass
class Block:
    index: int
    core: tuple  # slices of the output this block writes (whole chunks of the output array)
    outer: tuple  # core plus the halo, clipped to the image: what the block predicts


def block_shape(cfg, block_size: int) -> list[int]:
    """Blocks of `block_size` per axis (at least 16), rounded up to whole output chunks when bigger than one."""
    chunk = BLOCK_CHUNK[cfg.ndim]
    size = max(16, int(block_size))
    return [size if size <= chunk else -(-size // chunk) * chunk] * cfg.ndim


def plan_blocks(spatial: tuple[int, ...], block: list[int], halo: list[int]) -> list[Block]:
    import itertools

    out = []
    for index, origin in enumerate(itertools.product(*(range(0, s, b) for s, b in zip(spatial, block)))):
        core = tuple(slice(o, min(o + b, s)) for o, b, s in zip(origin, block, spatial))
        outer = tuple(slice(max(0, c.start - h), min(s, c.stop + h)) for c, h, s in zip(core, halo, spatial))
        out.append(Block(index, core, outer))
    return out


def splittable(wf) -> bool:
    """Dense workflows whose prediction input is the image itself can be predicted block by block (not crappify,
    whose degraded input and scores concern the whole image)."""
    from .workflows.base import Workflow

    return getattr(wf, "dense", True) and type(wf).prediction_input is Workflow.prediction_input


def default_halo(cfg) -> list[int]:
    return [max(8, p // 2) for p in cfg.data.patch_size]


def create_block_store(run_dir: Path, item: FileItem, loaded, block: list[int]):
    """The output zarr array of a split image (chunks within blocks, so workers write disjoint chunks)."""
    import zarr

    cfg = loaded.config
    chunk = BLOCK_CHUNK[cfg.ndim]
    store = run_dir / "per_image" / f"{item.stem}.zarr"
    channels = loaded.workflow.prediction_channels(cfg)
    chunks = (channels, *(min(chunk, b, s) for b, s in zip(block, item.shape)))
    return zarr.create_array(store=str(store / "prediction"), shape=(channels, *item.shape), chunks=chunks,
                             dtype="float32", fill_value=0.0)


def predict_block(ctx: TaskContext, item: FileItem, blk: Block, loaded=None,
                  cancel: Optional[Callable[[], bool]] = None) -> dict:
    """Predict one block (with its halo) through ImagePrediction and copy its core into the image's zarr."""
    import zarr

    from .inference import ImagePrediction

    start = time.perf_counter()
    try:
        loaded = load_for_task(ctx, loaded)
        cfg = loaded.config
        run_dir = Path(ctx.run_dir)
        image = open_channels_last(item.raw, cfg, item.raw, ctx.checkpoint)
        crop = image[(*blk.outer, slice(None))]
        quiet = replace(loaded, config=cfg.model_copy(update={"predict": cfg.predict.model_copy(update={"save_tiff": False})}))
        scratch = run_dir / BLOCKS_DIR / item.stem / f"b{blk.index}"
        shutil.rmtree(scratch, ignore_errors=True)
        job = ImagePrediction(quiet, crop, f"{item.raw} (block {blk.index})", scratch, "block",
                              loaded_device(loaded, ctx.device))
        job.run(cancel=cancel)
        prediction = zarr.open_array(store=str(job.store / "prediction"), mode="r")
        inner = tuple(slice(c.start - o.start, c.stop - o.start) for c, o in zip(blk.core, blk.outer))
        out = zarr.open_array(store=str(run_dir / "per_image" / f"{item.stem}.zarr" / "prediction"), mode="r+")
        out[(slice(None), *blk.core)] = np.asarray(prediction[(slice(None), *inner)])
        shutil.rmtree(scratch, ignore_errors=True)
        return {"status": "done", "block": blk.index, "seconds": time.perf_counter() - start,
                "pixels": int(np.prod([s.stop - s.start for s in blk.core]))}
    except Cancelled:
        return {"status": "cancelled", "name": item.name}
    except InputError as e:
        raise_if_disk_full(e, Path(ctx.run_dir), f"the results of {item.raw}")
        return {"status": "failed", "name": item.name, "reason": str(e)}
    except Exception as e:
        raise_if_disk_full(e, Path(ctx.run_dir), f"the results of {item.raw}")
        log.exception("batch: block %d of %s failed", blk.index, item.raw)
        return {"status": "failed", "name": item.name, "reason": f"{item.raw} (block {blk.index}) failed: {type(e).__name__}: {e}"}


def finish_blocks(ctx: TaskContext, item: FileItem, results: list[dict], loaded=None) -> dict:
    """After all blocks of an image: the workflow's outputs from the assembled prediction, then the marker."""
    import zarr

    start = time.perf_counter()
    bad = [r for r in results if r.get("status") != "done"]
    if bad:
        failed = [r for r in bad if r.get("status") == "failed"]
        return failed[0] if failed else bad[0]
    try:
        loaded = load_for_task(ctx, loaded)
        cfg, wf = loaded.config, loaded.workflow
        run_dir = Path(ctx.run_dir)
        store = run_dir / "per_image" / f"{item.stem}.zarr"
        prediction = zarr.open_array(store=str(store / "prediction"), mode="r")
        target = None
        if item.label:  # as ImagePrediction reads a target
            from .io import open_image
            from .sources import lazy_array

            raw_target = lazy_array(open_image(Path(item.label)))
            flags = wf.check_target(raw_target, item.label, tuple(item.shape), cfg, [])
            raw_target = flags.get("label", raw_target)
            target = lambda region: wf.full_target(raw_target, region, flags)  # noqa: E731
        outputs = wf.write_outputs(prediction, store, run_dir, item.stem, cfg, target)
        shutil.rmtree(run_dir / BLOCKS_DIR / item.stem, ignore_errors=True)
        try:
            (run_dir / BLOCKS_DIR).rmdir()  # once no other image is being split
        except OSError:
            pass
        metrics = outputs.pop("metrics", {})
        counts = outputs.pop("counts", None)
        seconds = sum(r["seconds"] for r in results) + time.perf_counter() - start
        return _finish_record(run_dir, item, outputs, metrics, counts, None, seconds, int(np.prod(item.shape)))
    except InputError as e:
        raise_if_disk_full(e, Path(ctx.run_dir), f"the results of {item.raw}")
        return {"status": "failed", "name": item.name, "reason": str(e)}
    except Exception as e:
        raise_if_disk_full(e, Path(ctx.run_dir), f"the results of {item.raw}")
        log.exception("batch: assembling %s failed", item.raw)
        return {"status": "failed", "name": item.name, "reason": f"{item.raw} failed: {type(e).__name__}: {e}"}


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------


def _same(a, b) -> bool:
    return Path(a).resolve() == Path(b).resolve()


class BatchRun:
    """A batch run, set up by the constructor (every global check, before anything is written; then the run
    folder is claimed, or the resumed one read) and run by `run()`, a generator of reports."""

    def __init__(self, request: BatchRequest, loaded=None):
        from .experiment import new_experiment
        from .io import check_writable
        from .pairing import image_name
        from .predictor import Predictor
        from .train import resolve_device

        self.request = req = replace(request)
        self._cancel = threading.Event()
        manifest = None
        if req.resume is not None:
            manifest = self._read_manifest(Path(req.resume))
            for key, given in (("checkpoint", req.checkpoint), ("input_dir", req.input_dir), ("labels_dir", req.labels_dir)):
                earlier = manifest.get(key)
                if given is not None and (earlier is None or not _same(given, earlier)):
                    what = {"checkpoint": "checkpoint", "input_dir": "input folder", "labels_dir": "labels folder"}[key]
                    raise InputError(f"Batch run {req.resume} was started with {what} {earlier or 'none'}, not {given}; "
                                     f"resume it with the same {what} or start a new run.")
            req.checkpoint = Path(manifest["checkpoint"])
            req.input_dir = Path(manifest["input_dir"])
            req.labels_dir = Path(manifest["labels_dir"]) if manifest.get("labels_dir") else None
            if req.overrides and list(req.overrides) != list(manifest.get("overrides", [])):
                raise InputError(f"Batch run {req.resume} keeps the prediction settings it was started with "
                                 f"({', '.join(manifest.get('overrides', [])) or 'the checkpoint defaults'}); "
                                 f"start a new run to change them.")
            req.overrides = list(manifest.get("overrides", []))
        if req.checkpoint is None:
            raise InputError("No checkpoint: choose the checkpoint (.pth) to predict with.")
        if req.input_dir is None:
            raise InputError("No input folder: choose the folder of images to predict.")
        if req.scheduler and req.workers:
            raise InputError("Give either a dask scheduler address or a number of local workers, not both.")
        if req.workers < 0:
            raise InputError(f"The number of dask workers must be positive, not {req.workers}.")
        # on dask the workers resolve the device (a GPU node's "cuda" need not exist where the batch is started);
        # here the model is only read for its settings
        self.device = "cpu" if req.distributed else resolve_device(req.device)
        bad = [o for o in req.overrides if not o.startswith("predict.")]
        if bad:
            raise InputError(f"Only prediction settings (predict.FIELD=VALUE) can be changed for a batch, not {bad[0]}.")
        settings = {"name": req.name, "output_dir": str(req.output_dir),
                    "data": {"test_raw": str(Path(req.input_dir).absolute()),
                             "test_label": str(Path(req.labels_dir).absolute()) if req.labels_dir else None},
                    "predict": {"checkpoint": str(Path(req.checkpoint).absolute())}}
        predictor = Predictor(req.checkpoint, self.device, settings, req.overrides, source="batch settings",
                              loaded=loaded)
        self.loaded, self.cfg = predictor.loaded, predictor.config
        # dense: raw images paired with label files by name; one class per file: a flat folder or class sub-folders
        # (then the metrics and the confusion matrix), and no labels folder
        found = predictor.folder_items(Path(req.input_dir), Path(req.labels_dir) if req.labels_dir else None,
                                       "the labels folder", "input")
        pairs = found if self.loaded.workflow.dense else [(p, None) for p, _ in found]
        classes = {} if self.loaded.workflow.dense else {str(p): c for p, c in found if c is not None}
        cfg = self.cfg
        # class sub-folders may repeat file names: name the files by their path inside the input folder
        names = [str(Path(p).relative_to(req.input_dir)) if classes else image_name(p) for p, _ in pairs]
        stems = assign_stems(names, manifest.get("stems") if manifest else None)
        self.items = [FileItem(i, str(Path(raw).absolute()), str(Path(label).absolute()) if label else None,
                               name, stems[name], true_class=classes.get(str(raw)))
                      for i, ((raw, label), name) in enumerate(zip(pairs, names))]
        if manifest is not None:
            self.run_dir = Path(req.resume)
            self.config_path = Path(manifest["config_path"])
            check_writable(self.run_dir)
            remove_parts(self.run_dir)  # what the interrupted run was writing: redone from scratch
        else:
            self.unfinished_earlier = self._unfinished_earlier(req)
            experiment = new_experiment(Path(req.output_dir), req.name)
            self.run_dir = experiment.results
            self.config_path = experiment.config_path
            cfg.save(self.config_path)
        _write_json(self.run_dir / BATCH_DIR / MANIFEST, {
            "format": "napari-bioflow-batch/1", "checkpoint": str(Path(req.checkpoint).absolute()),
            "input_dir": str(Path(req.input_dir).absolute()),
            "labels_dir": str(Path(req.labels_dir).absolute()) if req.labels_dir else None,
            "overrides": list(req.overrides), "config_path": str(self.config_path.absolute()),
            "stems": {**(manifest.get("stems", {}) if manifest else {}), **stems}})
        self.resumed = manifest is not None

    def _unfinished_earlier(self, req: BatchRequest) -> Optional[tuple[Path, int, int]]:
        """The newest earlier run in the same experiment with this checkpoint, these folders and settings that did
        not finish every file of the folder as it is now: (its folder, files finished, files in all)."""
        found = []
        for path in Path(req.output_dir, req.name, "results").glob(f"*/{BATCH_DIR}/{MANIFEST}"):
            try:
                m = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            same = (_same(m.get("checkpoint", ""), req.checkpoint) and _same(m.get("input_dir", ""), req.input_dir)
                    and (m.get("labels_dir") is None) == (req.labels_dir is None)
                    and (req.labels_dir is None or _same(m["labels_dir"], req.labels_dir))
                    and list(m.get("overrides", [])) == list(req.overrides))
            if not same:
                continue
            run_dir = path.parent.parent
            stems = m.get("stems", {})
            done = sum(marker_path(run_dir, stems[it.name]).is_file() for it in self.items if it.name in stems)
            if done < len(self.items):
                found.append((path.stat().st_mtime, run_dir, done))
        if not found:
            return None
        _, run_dir, done = max(found, key=lambda f: f[0])
        return run_dir, done, len(self.items)

    @staticmethod
    def _read_manifest(run_dir: Path) -> dict:
        path = run_dir / BATCH_DIR / MANIFEST
        if not run_dir.is_dir():
            raise InputError(f"The batch run folder {run_dir} to resume does not exist.")
        if not path.is_file():
            raise InputError(f"{run_dir} is not a batch run folder (it has no {BATCH_DIR}/{MANIFEST}); "
                             f"resume the results folder of a batch run (such as bioflow_runs/batch/results/batch_1).")
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise InputError(f"The batch manifest {path} cannot be read: {e}.") from None

    # --- state -----------------------------------------------------------------------------------------
    def finished(self, item: FileItem) -> bool:
        """A file is finished when its marker exists and every output it lists is still there."""
        path = marker_path(self.run_dir, item.stem)
        if not path.is_file():
            return False
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            return False
        paths = list(record.get("outputs", {}).values()) + list(record.get("files", []))
        return all((self.run_dir / p).exists() for p in paths)

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def context(self, torch_threads: int = 0, topic: str = "", cancel_event: str = "") -> TaskContext:
        return TaskContext(str(Path(self.request.checkpoint).absolute()), self.loaded.config.model_dump(mode="json"),
                           str(self.run_dir.absolute()), self.request.device if self.request.distributed else self.device,
                           torch_threads, topic, cancel_event)

    def scan(self, item: FileItem) -> None:
        """Open a file (without loading it) for its shape; a file that cannot be read is marked failed."""
        try:
            image = open_channels_last(item.raw, self.loaded.config, item.raw, str(self.request.checkpoint))
            item.shape = tuple(int(s) for s in image.shape[:-1])
            item.pixels = int(np.prod(item.shape))
        except InputError as e:
            item.error = str(e)
        except Exception as e:
            item.error = f"{item.raw} cannot be read: {type(e).__name__}: {e}."

    @property
    def block(self) -> Optional[list[int]]:
        """The block shape images larger than it are split into (None: never split)."""
        req, cfg = self.request, self.loaded.config
        size = req.block_size if req.block_size is not None else (DEFAULT_BLOCK[cfg.ndim] if req.distributed else 0)
        return block_shape(cfg, size) if size else None

    def blocks_of(self, item: FileItem) -> Optional[list[Block]]:
        """The blocks of an image to split, or None to predict it whole."""
        req, cfg = self.request, self.loaded.config
        block = self.block
        if block is None or not splittable(self.loaded.workflow) or not item.shape:
            return None
        if all(s <= b for s, b in zip(item.shape, block)):
            return None
        halo = [req.halo] * cfg.ndim if req.halo is not None else default_halo(cfg)
        return plan_blocks(item.shape, block, halo)

    # --- the generator -----------------------------------------------------------------------------------
    def run(self) -> Iterator[Any]:
        start = time.perf_counter()
        earlier = [it for it in self.items if self.resumed and self.finished(it)]
        earlier_names = {it.name for it in earlier}
        todo = [it for it in self.items if it.name not in earlier_names]
        for it in todo:
            self.scan(it)
        self._records: dict[str, dict] = {}
        self._failed: list[tuple[str, str]] = []
        self._done: list[str] = []
        self._total_pixels = sum(it.pixels for it in todo if not it.error) or 1
        self._done_pixels = 0.0
        self._partial: dict[int, float] = {}
        self._start = start
        executor = None
        if self.request.distributed:
            from .dask_executor import DaskExecutor

            try:
                executor = DaskExecutor(self)
            except InputError:  # no cluster: a new run folder with nothing in it goes again
                if not self.resumed:
                    shutil.rmtree(self.run_dir, ignore_errors=True)
                    self.config_path.unlink(missing_ok=True)
                raise
            mode = executor.describe()
        else:
            mode = "this process"
        yield BatchStarted(self.run_dir, self.config_path, [it.name for it in self.items], [it.name for it in todo],
                           [it.name for it in earlier], self.resumed, mode, getattr(self, "unfinished_earlier", None))
        for it in todo:
            if it.error:
                self._failed.append((it.name, it.error))
                yield FileFailed(it.index, it.name, it.error, *self._overall())
        runnable = [it for it in todo if not it.error]
        try:
            if executor is not None:
                yield from executor.run(runnable)
            else:
                yield from self._run_here(runnable)
        finally:
            if executor is not None:
                executor.close()
            remove_parts(self.run_dir)  # a write cut short (a full disk, Ctrl-C) leaves no .part file
        yield self._summary(start, earlier, todo)

    def _overall(self) -> tuple[float, Optional[float]]:
        """(fraction of the batch's pixels done, ETA in seconds): finished files plus the part done of the files in
        flight (several at once on dask)."""
        done = self._done_pixels + sum(self._partial.values())
        fraction = min(1.0, done / self._total_pixels)
        elapsed = time.perf_counter() - self._start
        eta = elapsed * (1 - fraction) / fraction if fraction > 0 else None
        return fraction, eta

    def report_progress(self, item: FileItem, done: int, total: int) -> FileProgress:
        # tiles done is not the file done (its outputs are still to write): at most 95 % of it until it is
        self._partial[item.index] = 0.95 * item.pixels * done / max(1, total)
        return FileProgress(item.index, item.name, done, total, *self._overall())

    def report_record(self, item: FileItem, record: dict) -> Any:
        """Turn a task's record into a report (and keep it for the summary)."""
        status = record.get("status")
        self._partial.pop(item.index, None)
        if status == "done":
            self._records[item.stem] = record
            self._done.append(item.name)
            self._done_pixels += item.pixels
            return FileDone(item.index, item.name, item.stem,
                            {k: self.run_dir / v for k, v in record.get("outputs", {}).items()},
                            [self.run_dir / p for p in record.get("files", [])], record.get("metrics", {}),
                            record.get("prediction"), record.get("seconds", 0.0), *self._overall())
        if status == "failed":
            self._failed.append((item.name, record.get("reason", "")))
            self._done_pixels += item.pixels  # it leaves the work still to do
            return FileFailed(item.index, item.name, record.get("reason", ""), *self._overall())
        return None  # cancelled: left for a resumed run

    def _run_here(self, items: list[FileItem]) -> Iterator[Any]:
        """In this process: a helper thread predicts, this generator relays its reports as they come."""
        events: queue.Queue = queue.Queue()
        end = object()

        def work():
            try:
                ctx = self.context()
                for item in items:
                    if self.cancelled:
                        break
                    blocks = self.blocks_of(item)
                    if blocks is None:
                        def started(job, item=item):
                            tiles = len(job.plan.tiles) if job is not None else 0
                            events.put(FileStarted(item.index, item.name, item.stem, tiles,
                                                   job.lazy if job is not None else None))

                        def progress(done, total, item=item):
                            events.put(("progress", item, done, total))

                        record = predict_item(ctx, item, self.loaded, self._cancel.is_set, progress, started)
                    else:
                        clear_partial(self.run_dir, item.stem)
                        import dask.array as da

                        arr = create_block_store(self.run_dir, item, self.loaded, self.block)
                        events.put(FileStarted(item.index, item.name, item.stem, len(blocks), lambda a=arr: da.from_zarr(a)))
                        results = []
                        for blk in blocks:
                            results.append(predict_block(ctx, item, blk, self.loaded, self._cancel.is_set))
                            if results[-1].get("status") != "done":
                                break
                            events.put(("progress", item, len(results), len(blocks)))
                        record = finish_blocks(ctx, item, results, self.loaded)
                    events.put((item, record))
            except BaseException as e:  # a bug outside any file: re-raised in the generator
                events.put(e)
            finally:
                events.put(end)

        thread = threading.Thread(target=work, name="bioflow-batch", daemon=True)
        thread.start()
        try:
            while True:
                event = events.get()
                if event is end:
                    break
                if isinstance(event, BaseException):
                    raise event
                if isinstance(event, FileStarted):
                    yield event
                elif event[0] == "progress":
                    _, item, done, total = event
                    yield self.report_progress(item, done, total)
                else:
                    report = self.report_record(*event)
                    if report is not None:
                        yield report
        finally:
            if thread.is_alive():  # the consumer stopped early: stop the helper too
                self._cancel.set()
                thread.join()

    # --- summary -------------------------------------------------------------------------------------------
    def _summary(self, start: float, earlier: list[FileItem], todo: list[FileItem]) -> BatchSummary:
        failed_names = {n for n, _ in self._failed}
        not_run = [it.name for it in todo if it.name not in failed_names and it.stem not in self._records]
        records = []
        for it in self.items:  # every finished file of the run folder, earlier ones included
            rec = self._records.get(it.stem)
            if rec is None and it in earlier:
                try:
                    rec = json.loads(marker_path(self.run_dir, it.stem).read_text())
                except (OSError, ValueError):
                    rec = None
            if rec is not None:
                records.append((it, rec))
        metrics_csv = write_metrics_csv(self.run_dir, records)
        wf = self.loaded.workflow  # e.g. classification: rows named "file", metrics and confusion matrix over the set
        predictions_csv = write_predictions_csv(self.run_dir, records, wf.rows_column)
        metrics_csv = wf.write_set_metrics(self.run_dir, [rec["prediction"] for _, rec in records if rec.get("prediction")],
                                           self.loaded.config) or metrics_csv
        reasons = dict(self._failed)
        rows = []
        for it in self.items:
            if it.name in reasons:
                rows.append({"image": it.name, "status": "failed", "seconds": "", "reason": reasons[it.name]})
            elif it.stem in self._records:
                rows.append({"image": it.name, "status": "done", "seconds": f"{self._records[it.stem]['seconds']:.3f}", "reason": ""})
            elif it in earlier:
                rows.append({"image": it.name, "status": "done earlier", "seconds": "", "reason": ""})
            else:
                rows.append({"image": it.name, "status": "not run", "seconds": "", "reason": "cancelled: a resumed run predicts it"})
        summary_csv = _write_csv(self.run_dir / "batch_summary.csv", rows)
        megapixels = sum(it.pixels for it in todo if it.stem in self._records) / 1e6
        return BatchSummary(self.run_dir, list(self._done), [it.name for it in earlier], list(self._failed), not_run,
                            self.cancelled and bool(not_run), time.perf_counter() - start, megapixels,
                            metrics_csv, predictions_csv, summary_csv)


def _write_csv(path: Path, rows: list[dict]) -> Path:
    tmp = path.with_name(path.name + ".part")
    try:
        with open(tmp, "w", newline="") as f:
            fields: list[str] = []
            for r in rows:
                fields += [k for k in r if k not in fields]
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(rows)
        os.replace(tmp, path)
    except BaseException:
        discard(tmp)
        raise
    return path


def write_metrics_csv(run_dir: Path, records: list[tuple[FileItem, dict]]) -> Optional[Path]:
    """metrics.csv as predict_files writes it: one row per file, then the set (IoU from pooled pixel counts)."""
    rows = [{"image": it.name, **rec["metrics"]} for it, rec in records if rec.get("metrics")]
    if not rows:
        return None
    counts = [rec.get("counts") for it, rec in records if rec.get("metrics")]
    if all(c is not None for c in counts):
        from .metrics import iou_from_counts

        inter = sum(np.asarray(c[0], np.int64) for c in counts)
        union = sum(np.asarray(c[1], np.int64) for c in counts)
        rows.append({"image": "ALL (pixels pooled)", **iou_from_counts(inter, union)})
    else:
        keys = [k for k in rows[0] if k != "image"]
        rows.append({"image": "ALL (mean)", **{k: float(np.mean([r[k] for r in rows if k in r])) for k in keys}})
    return _write_csv(run_dir / "metrics.csv", rows)


def write_predictions_csv(run_dir: Path, records: list[tuple[FileItem, dict]], column: str = "image") -> Optional[Path]:
    """predictions.csv of a per-image workflow: a row per file, named in `column` by its path inside the input folder."""
    rows = [{column: it.name, **rec["prediction"]} for it, rec in records if rec.get("prediction")]
    return _write_csv(run_dir / "predictions.csv", rows) if rows else None


def run_batch(request: BatchRequest, loaded=None) -> Iterator[Any]:
    """Set up and run a batch: the reports, ending with a BatchSummary."""
    yield from BatchRun(request, loaded).run()
