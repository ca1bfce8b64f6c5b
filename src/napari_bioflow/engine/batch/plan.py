"""The planner: from a batch run's files, what to run. Files an earlier run of the folder finished (their marker
and every output it lists still there) are skipped; the others are opened (not loaded) for their shapes, the
unreadable ones set aside with the reason, and each readable one becomes a work unit: the file whole, or, when it
is bigger than the block size, its blocks (the chunks of one huge image, each with a halo of context)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from .records import BLOCK_CHUNK, Block, FileItem, marker_path, read_record
from .task import open_channels_last

DEFAULT_BLOCK = {2: 2048, 3: 256}  # dask: images bigger than this per axis are split into blocks over the workers


@dataclass
class WorkUnit:
    """One file to predict: whole (blocks None), or block by block into an output of chunks within `block_shape`."""

    item: FileItem
    blocks: list[Block] | None = None
    block_shape: list[int] | None = None


@dataclass
class Plan:
    earlier: list[FileItem]  # finished by an earlier run of the folder: skipped
    todo: list[FileItem]  # this run's files, in order (the unreadable ones among them)
    units: list[WorkUnit] = field(default_factory=list)  # the readable ones of `todo`, in order

    @property
    def unreadable(self) -> list[FileItem]:
        return [it for it in self.todo if it.error]


def is_finished(run_dir: Path, item: FileItem) -> bool:
    """A file is finished when its marker exists and every output it lists is still there."""
    path = marker_path(run_dir, item.stem)
    if not path.is_file():
        return False
    record = read_record(path)
    return record is not None and all(p.exists() for p in record.paths(run_dir))


def scan(item: FileItem, cfg, checkpoint: str) -> None:
    """Open a file (without loading it) for its shape; a file that cannot be read is marked failed."""
    try:
        image = open_channels_last(item.raw, cfg, item.raw, checkpoint)
        item.shape = tuple(int(s) for s in image.shape[:-1])
        item.pixels = int(np.prod(item.shape))
    except InputError as e:
        item.error = str(e)
    except Exception as e:
        item.error = f"{item.raw} cannot be read: {type(e).__name__}: {e}."


def block_shape(cfg, block_size: int) -> list[int]:
    """Blocks of `block_size` per axis (at least 16), rounded up to whole output chunks when bigger than one."""
    chunk = BLOCK_CHUNK[cfg.ndim]
    size = max(16, int(block_size))
    return [size if size <= chunk else -(-size // chunk) * chunk] * cfg.ndim


def plan_blocks(spatial: tuple[int, ...], block: list[int], halo: list[int]) -> list[Block]:
    out = []
    for index, origin in enumerate(itertools.product(*(range(0, s, b) for s, b in zip(spatial, block)))):
        core = tuple(slice(o, min(o + b, s)) for o, b, s in zip(origin, block, spatial))
        outer = tuple(slice(max(0, c.start - h), min(s, c.stop + h)) for c, h, s in zip(core, halo, spatial))
        out.append(Block(index, core, outer))
    return out


def splittable(wf) -> bool:
    """Dense workflows whose prediction input is the image itself can be predicted block by block (not crappify,
    whose degraded input and scores concern the whole image)."""
    from ..workflows.base import Workflow

    return getattr(wf, "dense", True) and type(wf).prediction_input is Workflow.prediction_input


def default_halo(cfg) -> list[int]:
    return [max(8, p // 2) for p in cfg.data.patch_size]


def run_block_shape(request, cfg) -> list[int] | None:
    """The block shape images larger than it are split into (None: never split): the request's block size, else
    DEFAULT_BLOCK on dask."""
    size = (
        request.block_size
        if request.block_size is not None
        else (DEFAULT_BLOCK[cfg.ndim] if request.distributed else 0)
    )
    return block_shape(cfg, size) if size else None


def unit_of(item: FileItem, request, loaded) -> WorkUnit:
    """The work unit of a scanned, readable file: whole, or its blocks when it is bigger than the block shape."""
    cfg = loaded.config
    block = run_block_shape(request, cfg)
    if block is None or not splittable(loaded.workflow) or not item.shape:
        return WorkUnit(item)
    if all(s <= b for s, b in zip(item.shape, block)):
        return WorkUnit(item)
    halo = [request.halo] * cfg.ndim if request.halo is not None else default_halo(cfg)
    return WorkUnit(item, plan_blocks(item.shape, block, halo), block)


def plan_run(items: list[FileItem], run_dir: Path, request, loaded, resumed: bool) -> Plan:
    """What a run predicts: the files not finished earlier (scanned), as work units."""
    earlier = [it for it in items if resumed and is_finished(run_dir, it)]
    earlier_names = {it.name for it in earlier}
    todo = [it for it in items if it.name not in earlier_names]
    for it in todo:
        scan(it, loaded.config, str(request.checkpoint))
    return Plan(earlier, todo, [unit_of(it, request, loaded) for it in todo if not it.error])
