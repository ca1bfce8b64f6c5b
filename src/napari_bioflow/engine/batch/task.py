"""The work of a batch, the same whichever executor runs it (this process or a dask worker): one file predicted
into the run folder (predict_item), or one block of a split image (predict_block) and, once every block is in,
the image's outputs (finish_blocks); each ends by writing the file's completion marker. A file's own problem never
raises: it comes back as Unfinished, so one bad file never stops a batch (a full disk does: DiskFull)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import Cancelled, InputError
from ..storage import raise_if_disk_full
from .records import (
    BLOCK_CHUNK,
    BLOCKS_DIR,
    Block,
    BlockDone,
    BlockResult,
    FileItem,
    FileRecord,
    TaskContext,
    TaskResult,
    Unfinished,
    marker_path,
    write_json,
)

log = logging.getLogger(__name__)
_MODELS: dict[tuple, Any] = {}  # per process: a worker loads a checkpoint once


def load_for_task(ctx: TaskContext, loaded=None):
    """The model with the run's config: the one given (this process), else loaded once per process."""
    from ...config import RunConfig

    if loaded is not None:
        return loaded
    from ..train.checkpoint import load_model
    from ..train.trainer import resolve_device

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


def loaded_device(loaded, requested: str) -> str:
    from ..train.trainer import resolve_device

    try:
        return str(next(loaded.model.parameters()).device)
    except (StopIteration, AttributeError):
        return resolve_device(requested)


def open_channels_last(path: str, cfg, name: str, checkpoint: str = ""):
    """Open an image file as (Z,)Y,X,C without loading it; leading axes of length 1 (OME-Zarr's T, C) dropped."""
    from ..data.io import open_image
    from ..data.sources import lazy_array, to_channels_last

    arr = open_image(Path(path))
    if len(arr.shape) < 2 or 0 in tuple(arr.shape):
        raise InputError(f"File {path} cannot be read as an image: it holds no pixels (shape {tuple(arr.shape)}).")
    while len(arr.shape) > cfg.ndim + 1 and arr.shape[0] == 1:
        arr = lazy_array(arr)[0]
    return to_channels_last(
        arr,
        cfg.ndim,
        cfg.data.in_channels,
        name,
        f"checkpoint {checkpoint}" if checkpoint else "the checkpoint",
        cfg.data.axes,
    )


def clear_partial(run_dir: Path, stem: str) -> None:
    """Remove what an unfinished earlier attempt at `stem` left (its zarr stores, OME-Zarr images and blocks)."""
    from ..predict.writer import remove_partial

    remove_partial(run_dir, stem)
    shutil.rmtree(run_dir / BLOCKS_DIR / stem, ignore_errors=True)


# --------------------------------------------------------------------------------------------------
# The completion marker
# --------------------------------------------------------------------------------------------------


def _relative(run_dir: Path, path: Path) -> str:
    return str(Path(path).relative_to(run_dir))


def finish_record(
    run_dir: Path, item: FileItem, paths: dict, metrics: dict, counts, prediction, seconds: float, pixels: int
) -> FileRecord:
    """Write the completion marker of a file (last, atomically) and return its record: the paths the output writer
    returned (`paths`: {output key: [array or OME-Zarr image, files...]}), nothing rescanned."""
    arrays, files = {}, []
    for key, written in paths.items():
        for path in written:
            path = Path(path)
            if path.name.endswith(".ome.zarr"):  # an OME-Zarr image: its full resolution is the array
                arrays[key] = _relative(run_dir, path / "0")
            elif path.suffix in (".tif", ".tiff") or path.is_file():
                files.append(_relative(run_dir, path))
            else:
                arrays[key] = _relative(run_dir, path)
    record = FileRecord(
        item.name,
        item.raw,
        item.label,
        item.stem,
        arrays,
        sorted(dict.fromkeys(files)),
        {k: float(v) for k, v in (metrics or {}).items()},
        [np.asarray(c).tolist() for c in counts] if counts is not None else None,
        prediction,
        seconds,
        pixels,
    )
    write_json(marker_path(run_dir, item.stem), record.to_json())
    return record


def _failure(ctx: TaskContext, item: FileItem, error: Exception, what: str = "", doing: str = "") -> Unfinished:
    """A file's own problem as Unfinished, the reason naming `what` (the file, or its block); a full disk raises
    instead (every later file would fail the same way). A bug or an I/O error is logged with its traceback."""
    raise_if_disk_full(error, Path(ctx.run_dir), f"the results of {item.raw}")
    if isinstance(error, InputError):
        return Unfinished.failed(item.name, str(error))
    what = what or item.raw
    log.exception("batch: %s%s failed", doing, what)
    return Unfinished.failed(item.name, f"{what} failed: {type(error).__name__}: {error}")


# --------------------------------------------------------------------------------------------------
# One file
# --------------------------------------------------------------------------------------------------


def predict_item(
    ctx: TaskContext,
    item: FileItem,
    loaded=None,
    cancel: Callable[[], bool] | None = None,
    progress: Callable[[int, int], None] | None = None,
    on_start: Callable[[Any], None] | None = None,
) -> TaskResult:
    """Predict one file into the run folder and mark it finished; the per-file step of every executor.
    Returns its FileRecord, or Unfinished (failed or cancelled)."""
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
            from ..data.io import open_image

            target = open_image(Path(item.label))
        pixels = int(np.prod(image.shape[:-1]))
        if not getattr(wf, "dense", True):  # one value per image (classification): the workflow's own step
            clear_partial(run_dir, item.stem)
            if on_start is not None:
                on_start(None)
            out = wf.predict_file(loaded, image, item.raw, run_dir, item.stem, device, target) or {}
            return finish_record(
                run_dir,
                item,
                {key: [path] for key, path in (out.get("paths") or {}).items()},
                out.get("metrics", {}),
                None,
                out.get("prediction"),
                time.perf_counter() - start,
                pixels,
            )
        from ..predict.predictor import Predictor
        from ..predict.scale import resolve_scale

        clear_partial(run_dir, item.stem)
        job = Predictor.of(loaded, ctx.checkpoint).image(
            image, item.raw, run_dir, item.stem, target, item.label or "", scale=resolve_scale(cfg, path=item.raw)
        )
        if on_start is not None:
            on_start(job)
        result = job.run(cancel=cancel, progress=progress)
        job.cleanup()
        counts = result.outputs.pop("counts", None)
        return finish_record(
            run_dir, item, result.paths, result.metrics, counts, None, time.perf_counter() - start, pixels
        )
    except Cancelled:
        return Unfinished.cancelled(item.name)
    except Exception as e:  # a bug or an I/O error on one file: reported, the batch goes on
        return _failure(ctx, item, e)


# --------------------------------------------------------------------------------------------------
# The blocks of one split image, each predicted with a halo of context, written into one zarr
# --------------------------------------------------------------------------------------------------


def create_block_store(run_dir: Path, item: FileItem, loaded, block: list[int]):
    """The output zarr array of a split image (chunks within blocks, so workers write disjoint chunks)."""
    import zarr

    from ..predict.writer import OutputWriter

    cfg = loaded.config
    chunk = BLOCK_CHUNK[cfg.ndim]
    store = OutputWriter(cfg, run_dir, item.stem).store
    channels = loaded.workflow.prediction_channels(cfg)
    chunks = (channels, *(min(chunk, b, s) for b, s in zip(block, item.shape)))
    return zarr.create_array(
        store=str(store / "prediction"), shape=(channels, *item.shape), chunks=chunks, dtype="float32", fill_value=0.0
    )


def predict_block(
    ctx: TaskContext, item: FileItem, blk: Block, loaded=None, cancel: Callable[[], bool] | None = None
) -> BlockResult:
    """Predict one block (with its halo) through ImagePrediction and copy its core into the image's zarr."""
    import zarr

    from ..predict.inference import ImagePrediction

    start = time.perf_counter()
    try:
        loaded = load_for_task(ctx, loaded)
        cfg = loaded.config
        run_dir = Path(ctx.run_dir)
        image = open_channels_last(item.raw, cfg, item.raw, ctx.checkpoint)
        crop = image[(*blk.outer, slice(None))]
        quiet = replace(
            loaded, config=cfg.model_copy(update={"predict": cfg.predict.model_copy(update={"save_tiff": False})})
        )
        scratch = run_dir / BLOCKS_DIR / item.stem / f"b{blk.index}"
        shutil.rmtree(scratch, ignore_errors=True)
        job = ImagePrediction(
            quiet, crop, f"{item.raw} (block {blk.index})", scratch, "block", loaded_device(loaded, ctx.device)
        )
        job.run(cancel=cancel)
        prediction = zarr.open_array(store=str(job.store / "prediction"), mode="r")
        inner = tuple(slice(c.start - o.start, c.stop - o.start) for c, o in zip(blk.core, blk.outer))
        from ..predict.writer import OutputWriter

        store = OutputWriter(cfg, run_dir, item.stem).store
        out = zarr.open_array(store=str(store / "prediction"), mode="r+")
        out[(slice(None), *blk.core)] = np.asarray(prediction[(slice(None), *inner)])
        shutil.rmtree(scratch, ignore_errors=True)
        return BlockDone(blk.index, time.perf_counter() - start, int(np.prod([s.stop - s.start for s in blk.core])))
    except Cancelled:
        return Unfinished.cancelled(item.name)
    except Exception as e:
        return _failure(ctx, item, e, f"{item.raw} (block {blk.index})")


def finish_blocks(ctx: TaskContext, item: FileItem, results: list[BlockResult], loaded=None) -> TaskResult:
    """After all blocks of an image: the workflow's outputs from the assembled prediction, then the marker."""
    import zarr

    start = time.perf_counter()
    bad = [r for r in results if isinstance(r, Unfinished)]
    if bad:
        failed = [r for r in bad if r.status == "failed"]
        return failed[0] if failed else bad[0]
    try:
        loaded = load_for_task(ctx, loaded)
        cfg, wf = loaded.config, loaded.workflow
        from ..predict.scale import resolve_scale
        from ..predict.writer import OutputWriter

        run_dir = Path(ctx.run_dir)
        writer = OutputWriter(cfg, run_dir, item.stem, resolve_scale(cfg, path=item.raw))
        store = writer.store
        prediction = zarr.open_array(store=str(store / "prediction"), mode="r")
        target = None
        if item.label:  # as ImagePrediction reads a target
            from ..data.io import open_image
            from ..data.sources import lazy_array

            raw_target = lazy_array(open_image(Path(item.label)))
            flags = wf.check_target(raw_target, item.label, tuple(item.shape), cfg, [])
            raw_target = flags.get("label", raw_target)
            target = lambda region: wf.full_target(raw_target, region, flags)  # noqa: E731
        outputs = wf.write_outputs(prediction, store, run_dir, item.stem, cfg, target, {"writer": writer})
        if not writer.arrays:
            writer.arrays["prediction"] = store / "prediction"
        paths = writer.finish(labels_keys=tuple(o.key for o in wf.outputs if o.layer == "labels"))
        shutil.rmtree(run_dir / BLOCKS_DIR / item.stem, ignore_errors=True)
        try:
            (run_dir / BLOCKS_DIR).rmdir()  # once no other image is being split
        except OSError:
            pass
        metrics = outputs.pop("metrics", {})
        counts = outputs.pop("counts", None)
        seconds = sum(r.seconds for r in results) + time.perf_counter() - start
        return finish_record(run_dir, item, paths, metrics, counts, None, seconds, int(np.prod(item.shape)))
    except Exception as e:
        return _failure(ctx, item, e, doing="assembling ")
