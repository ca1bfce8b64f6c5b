"""N-D sliding-window prediction for 2D / 3D images that may be larger than RAM.

In the spirit of MONAI's ``sliding_window_inference``: the image is cut into overlapping tiles, the
model runs on batches of tiles, and the outputs are blended with a smooth weight map. The weights are
separable (a product of 1D ramps) and so is their total over all tiles, so every tile's weight is
normalised before it is added (``w / W``): the running sum *is* the blended result, no weight array is
kept and no division pass is needed. The result lives either in numpy or, for images larger than RAM,
in a zarr array on disk (:class:`ZarrAccumulator`), which also gives a GUI a lazy dask view of the
prediction while it is being computed.

Memory is bounded by the tiles, not by the image: the input is read by bands of tiles (one row of tiles
across the last axis, chunk by chunk, on a reader thread), and the zarr output is written by whole
chunks (aligned with the tiles) on a writer thread; chunks that some later tile still overlaps wait in
RAM, only over their overlap, up to ``CACHE_BYTES`` beyond which they are spilled to disk.

Axes conventions: input images are ``(Z,)Y,X,C`` (channel last, as napari shows them); outputs are
``(out_channels, (Z,)Y,X)`` float32 (channel first, as models produce them).

No Qt / napari imports here: this module runs in worker threads and headless scripts.
"""

from __future__ import annotations

import itertools
import math
import os
import queue
import shutil
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "PredictionCancelled",
    "TilePlan",
    "ZarrAccumulator",
    "argmax_labels",
    "chunk_regions",
    "plan_tiles",
    "sliding_window_predict",
    "write_labels_zarr",
]

# Weight of a pixel right at a tile border that touches another tile. Never 0, so that the total weight W
# is > 0 everywhere even if a rounding quirk ever left a pixel covered only by ramp starts.
WEIGHT_FLOOR = 1e-3
# RAM for zarr chunks that later tiles still add to (only their overlapping parts are held); beyond it the
# chunks needed furthest ahead are spilled to disk. The tile order keeps this small: see TilePlan.traversal.
CACHE_BYTES = 64 * 2**20
# Largest input band (one row of tiles across the last axis) read at once from a chunked (zarr / dask)
# image; above it, or for unchunked arrays (numpy, memory-mapped TIFF), tiles are read one by one.
BAND_BYTES = 128 * 2**20
WRITE_QUEUE = 2  # finished chunks waiting for the writer thread (each is one output chunk)


TRIM_SLACK = 64 * 2**20  # RSS allowed above its level after the last malloc_trim before trimming again


def _libc_malloc_trim():
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl)
        return None


_MALLOC_TRIM = _libc_malloc_trim()
try:
    _PAGE = os.sysconf("SC_PAGE_SIZE")
except (AttributeError, ValueError, OSError):
    _PAGE = 4096


def _rss() -> int:
    """Resident set size in bytes (0 where /proc is missing)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


class _Trimmer:
    """Returns the free pages of every malloc arena to the system when the RSS has grown TRIM_SLACK above
    its level after the last trim. glibc serves tile-sized buffers (tens of MB) from its heaps once such
    sizes have been freed a few times, and keeps what is freed in the middle of a heap (every thread has
    its own): without this the RSS of a long prediction creeps up by hundreds of MB. Trimming after every
    batch would cost page faults on every new buffer; this trims only when garbage has piled up."""

    def __init__(self):
        self.enabled = _MALLOC_TRIM is not None and _rss() > 0
        self.level = _rss()

    def __call__(self) -> None:
        if self.enabled and _rss() > self.level + TRIM_SLACK:
            _MALLOC_TRIM(0)
            self.level = _rss()


class PredictionCancelled(Exception):
    """Raised by :func:`sliding_window_predict` when its ``cancel`` callback returned True."""


# --------------------------------------------------------------------------------------------------
# Tile planning
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TilePlan:
    """Where the tiles go. All coordinates are in the padded frame, which equals the image frame
    except that axes smaller than a tile are extended at their far end (and cropped back later)."""

    shape: tuple[int, ...]  # spatial shape of the image
    padded_shape: tuple[int, ...]  # shape after padding small axes up to the tile
    tile_shape: tuple[int, ...]  # the (shrunken) tile actually used, multiple of divisor
    starts: tuple[tuple[int, ...], ...]  # per axis: tile start positions
    tiles: list[tuple[slice, ...]] = field(repr=False)  # every tile, C order over the tile grid

    @property
    def chunks(self) -> tuple[int, ...]:
        """Spatial chunk shape equal to the tile step (used for the on-disk results). Tiles start on chunk
        boundaries (but the last one, flush with the image end), so a chunk is covered by its own tile and
        the overlap of the tile before it per axis, and is finished as soon as its own tile is done."""
        out = []
        for length, tile, st in zip(self.shape, self.tile_shape, self.starts):
            step = max(b - a for a, b in zip(st, st[1:])) if len(st) > 1 else tile
            out.append(max(1, min(step, length)))
        return tuple(out)

    def margins(self, index: tuple[int, ...]) -> list[tuple[int, int]]:
        """Per axis (low, high) overlap with the neighbouring tiles of tile grid position ``index``
        (0 where the border is the image edge)."""
        res = []
        for i, st, t in zip(index, self.starts, self.tile_shape):
            lo = st[i - 1] + t - st[i] if i > 0 else 0
            hi = st[i] + t - st[i + 1] if i < len(st) - 1 else 0
            res.append((lo, hi))
        return res

    @property
    def grid(self) -> list[tuple[int, ...]]:
        """Tile grid index of every tile, same order as :attr:`tiles`."""
        return list(itertools.product(*(range(len(s)) for s in self.starts)))

    @property
    def axis_order(self) -> tuple[int, ...]:
        """Loop order over the tile grid, outermost first: the last axis innermost (rows of tiles are
        contiguous bands of the image), the others by decreasing image extent. Results still waiting for
        the next row / layer of tiles cover the overlap across the two smaller axes, not the largest."""
        nd = len(self.shape)
        return (*sorted(range(nd - 1), key=lambda a: -self.shape[a]), nd - 1)

    @property
    def traversal(self) -> list[int]:
        """Indices into :attr:`tiles` in the order they are predicted (see :attr:`axis_order`)."""
        counts = [len(s) for s in self.starts]
        order = self.axis_order
        idx = np.indices(counts).reshape(len(counts), -1)  # C order == tiles order
        keys = idx[list(order)]
        return np.lexsort(keys[::-1]).tolist()  # lexsort: last key is primary

    def axis_weights(self, axis: int) -> list[np.ndarray]:
        """Per tile index along ``axis``: its 1D blending weight divided by the total weight of all tiles
        there. The weight map of a tile is the outer product of these, and they sum to 1 at every voxel."""
        starts, t = self.starts[axis], self.tile_shape[axis]
        profiles = []
        total = np.zeros(self.padded_shape[axis], np.float64)
        for i, s in enumerate(starts):
            lo = starts[i - 1] + t - s if i > 0 else 0
            hi = s + t - starts[i + 1] if i < len(starts) - 1 else 0
            p = _ramp_profile(t, lo, hi)
            profiles.append(p)
            total[s : s + t] += p
        return [(p / total[s : s + t]).astype(np.float32) for p, s in zip(profiles, starts)]


def _plan_axis(length: int, tile: int, overlap: float, divisor: int, min_tile: int = 0):
    """Returns (tile, starts, padded_length) for one axis; the tile is at least ``min_tile``."""
    tile = max(divisor, tile // divisor * divisor)  # the max tile itself must respect the divisor
    if length <= tile:
        # One tile; pad the image up to the next multiple of divisor instead of running a big tile.
        t = max(math.ceil(length / divisor) * divisor, min_tile)
        return t, [0], t
    ov = min(round(overlap * tile), tile - 1)
    n = math.ceil((length - ov) / (tile - ov))
    # Smallest tile (multiple of divisor) for which n tiles cover the axis with >= ov overlap:
    # n*t - (n-1)*ov >= length. It is <= tile because n tiles of `tile` already cover it.
    t = max(math.ceil((length + (n - 1) * ov) / n / divisor) * divisor, min_tile)
    # One integer step (the output chunk size, so tiles start on chunk boundaries), the last tile flush
    # with the end. step <= t - ov (an integer >= the exact step (length - t) / (n - 1)), so the overlap
    # never falls below ov; the last gap is <= step.
    step = math.ceil((length - t) / (n - 1))
    starts = [min(i * step, length - t) for i in range(n)]
    if len(set(starts)) < n:  # tiny axes where whole steps overshoot: spread the starts evenly instead
        exact = (length - t) / (n - 1)
        starts = [round(i * exact) for i in range(n)]
    return t, starts, length


def plan_tiles(
    shape: Sequence[int],
    tile_size: int | Sequence[int],
    overlap: float = 0.0625,
    divisor: int = 1,
    *,
    square_yx: bool = False,
) -> TilePlan:
    """Plan tiles over a spatial ``shape``: per axis n = ceil((L - ov) / (T - ov)) tiles, shrunk to
    the smallest multiple of ``divisor`` that covers L with n tiles and >= ``overlap`` * T overlap.
    ``square_yx``: give Y and X the same tile (for rotation TTA) when that costs at most 1.5x."""
    shape = tuple(int(s) for s in shape)
    if isinstance(tile_size, int):
        tile_size = (tile_size,) * len(shape)
    tile_size = tuple(int(t) for t in tile_size)
    if len(tile_size) != len(shape):
        raise ValueError(f"tile_size {tile_size} does not match spatial shape {shape}")
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if divisor < 1 or min(shape) < 1 or min(tile_size) < 1:
        raise ValueError("divisor, shape and tile_size must be positive")
    axes = [_plan_axis(L, T, overlap, divisor) for L, T in zip(shape, tile_size)]
    ty, tx = (axes[-2][0], axes[-1][0]) if len(axes) >= 2 else (1, 1)
    if square_yx and ty != tx and max(ty, tx) <= 1.5 * min(ty, tx):
        # Growing the smaller tile keeps the tile count and only adds overlap (or padding).
        axes[-2:] = [_plan_axis(L, T, overlap, divisor, max(ty, tx)) for L, T in zip(shape[-2:], tile_size[-2:])]
    tile_shape = tuple(a[0] for a in axes)
    starts = tuple(tuple(a[1]) for a in axes)
    tiles = [
        tuple(slice(s, s + t) for s, t in zip(origin, tile_shape)) for origin in itertools.product(*starts)
    ]
    return TilePlan(shape, tuple(a[2] for a in axes), tile_shape, starts, tiles)


# --------------------------------------------------------------------------------------------------
# Blending weights
# --------------------------------------------------------------------------------------------------


def _ramp_profile(size: int, lo: int, hi: int) -> np.ndarray:
    """1D weight: cosine ramp (floor WEIGHT_FLOOR) over the lo / hi overlap margins, 1 elsewhere."""
    w = np.ones(size, np.float32)
    for margin, side in ((lo, 0), (hi, 1)):
        m = min(margin, size // 2)  # ramps of both sides must not cross on tiny tiles
        if m <= 0:
            continue
        r = 0.5 - 0.5 * np.cos(np.pi * (np.arange(m) + 0.5) / m)
        r = np.maximum(r, WEIGHT_FLOOR).astype(np.float32)
        if side == 0:
            w[:m] = np.minimum(w[:m], r)
        else:
            w[-m:] = np.minimum(w[-m:], r[::-1])
    return w


def _apply_weights(values: np.ndarray, profiles: Sequence[np.ndarray]) -> None:
    """values (C, *spatial) *= outer product of the 1D profiles, in place, one axis at a time and only over
    the overlap margins (the normalised weights are exactly 1 elsewhere)."""
    nd = len(profiles)
    for axis, p in enumerate(profiles):
        ones = np.flatnonzero(p == 1.0)
        lo, hi = (int(ones[0]), int(ones[-1]) + 1) if len(ones) else (len(p), len(p))
        if hi - lo != len(ones):  # not a plateau of ones between two ramps: weigh the whole axis
            lo = hi = len(p)
        shape = (-1,) + (1,) * (nd - 1 - axis)
        for a, b in ((0, lo), (hi, len(p))):
            if b > a:
                index = (slice(None),) * (axis + 1) + (slice(a, b),)
                values[index] *= p[a:b].reshape(shape)


# --------------------------------------------------------------------------------------------------
# Accumulators
# --------------------------------------------------------------------------------------------------


class _NumpyAccumulator:
    """The whole result in RAM; tiles arrive already weighted by w / W, so the sum is the result."""

    def __init__(self, shape: tuple[int, ...]):
        self.sum = np.zeros(shape, np.float32)

    def begin(self, plan: TilePlan) -> None:
        pass

    def add(self, index: tuple[int, ...], region: tuple[slice, ...], values: np.ndarray) -> None:
        self.sum[(slice(None), *region)] += values

    def close(self, ok: bool) -> None:
        pass

    def result(self) -> np.ndarray:
        return self.sum


def _axis_pieces(starts, tile: int, length: int, chunk: int):
    """Per axis: for each tile index the (chunk index, tile-local slice, chunk-local slice) it covers, and
    for each chunk index the tile indices covering it."""
    n_chunks = -(-length // chunk)
    pieces, touch = [], [[] for _ in range(n_chunks)]
    for i, s in enumerate(starts):
        a, b = s, min(s + tile, length)
        row = []
        for j in range(a // chunk, (b - 1) // chunk + 1):
            lo, hi = max(a, j * chunk), min(b, (j + 1) * chunk)
            row.append((j, slice(lo - s, hi - s), slice(lo - j * chunk, hi - j * chunk)))
            touch[j].append(i)
        pieces.append(row)
    return pieces, touch


class _Pending:
    """The part of one output chunk that tiles have added so far: a few boxes (chunk-local lo, hi, data),
    e.g. a thin slab where the previous row of tiles overlaps it, instead of the whole chunk."""

    __slots__ = ("boxes", "landed", "spill")

    def __init__(self):
        self.boxes: list[list] = []  # [lo, hi, data (C, *(hi - lo)) float32]
        self.landed: list[tuple[int, ...]] = []  # tile grid indices added (for the live view's weights)
        self.spill: Path | None = None  # where the boxes are while spilled to disk

    @property
    def nbytes(self) -> int:
        return sum(b[2].nbytes for b in self.boxes)

    def add(self, csl: tuple[slice, ...], src: np.ndarray) -> int:
        """Add src at chunk-local slices csl; returns the bytes newly allocated."""
        lo = tuple(s.start for s in csl)
        hi = tuple(s.stop for s in csl)
        for blo, bhi, data in self.boxes:
            if all(a >= c and b <= d for a, b, c, d in zip(lo, hi, blo, bhi)):
                data[(slice(None), *(slice(a - c, b - c) for a, b, c in zip(lo, hi, blo)))] += src
                return 0
        new = np.array(src, dtype=np.float32, copy=True, order="C")
        keep, freed = [], 0
        for blo, bhi, data in self.boxes:  # fold the boxes the new one contains
            if all(a <= c and b >= d for a, b, c, d in zip(lo, hi, blo, bhi)):
                new[(slice(None), *(slice(c - a, d - a) for a, c, d in zip(lo, blo, bhi)))] += data
                freed += data.nbytes
            else:
                keep.append([blo, bhi, data])
        self.boxes = keep + [[lo, hi, new]]
        return new.nbytes - freed

    def compose(self, shape: tuple[int, ...]) -> np.ndarray:
        """The chunk (C, *shape) with zeros where no tile has landed yet."""
        if len(self.boxes) == 1 and self.boxes[0][0] == (0,) * len(shape) and self.boxes[0][1] == tuple(shape):
            return self.boxes[0][2]
        c = self.boxes[0][2].shape[0]
        out = np.zeros((c, *shape), np.float32)
        for lo, hi, data in self.boxes:
            out[(slice(None), *(slice(a, b) for a, b in zip(lo, hi)))] += data
        return out


class _Run:
    """Bookkeeping of one sliding-window pass over a ZarrAccumulator: which tiles cover which chunks,
    how many tiles each chunk still waits for, and when each tile comes (for spilling)."""

    def __init__(self, plan: TilePlan, chunks: tuple[int, ...]):
        self.plan = plan
        self.chunks = chunks
        axes = [_axis_pieces(st, t, L, c) for st, t, L, c in zip(plan.starts, plan.tile_shape, plan.shape, chunks)]
        self.pieces = [a[0] for a in axes]
        self.touch = [a[1] for a in axes]
        counts = [np.array([len(t) for t in touch], np.int64) for touch in self.touch]
        remaining = counts[0]
        for c in counts[1:]:
            remaining = np.multiply.outer(remaining, c)
        self.remaining = remaining  # per chunk: tiles still to come
        grid_shape = tuple(len(s) for s in plan.starts)
        self.rank = np.empty(grid_shape, np.int64)  # per tile: its position in the traversal
        self.rank.reshape(-1)[np.asarray(plan.traversal, np.int64)] = np.arange(len(plan.tiles))
        self.position = -1  # rank of the last tile added
        self.weights = [plan.axis_weights(a) for a in range(len(plan.shape))]

    def next_use(self, key: tuple[int, ...]) -> int:
        ranks = self.rank[np.ix_(*(self.touch[a][j] for a, j in enumerate(key)))]
        later = ranks[ranks > self.position]
        return int(later.min()) if later.size else -1

    def weight_sum(self, key: tuple[int, ...], shape: tuple[int, ...], landed) -> np.ndarray:
        """Sum of the normalised weights of the landed tiles over chunk `key` (1 where all have landed)."""
        out = np.zeros(shape, np.float32)
        for index in landed:
            profiles, sl = [], []
            for a, (i, j) in enumerate(zip(index, key)):
                for jj, tsl, csl in self.pieces[a][i]:
                    if jj == j:
                        profiles.append(self.weights[a][i][tsl])
                        sl.append(csl)
            w = profiles[0]
            for p in profiles[1:]:
                w = np.multiply.outer(w, p)
            out[tuple(sl)] += w
        return out


class _LiveView:
    """Array-like over a ZarrAccumulator for dask: finished chunks from disk, chunks still being blended
    from RAM (normalised by the weight of the tiles landed so far, so they show the right values)."""

    def __init__(self, acc: ZarrAccumulator):
        self.acc = acc
        self.shape = acc.shape
        self.dtype = np.dtype(np.float32)
        self.ndim = len(self.shape)

    def __getitem__(self, key):
        """Any mix of slices (any step), integers and (orthogonal) index arrays, as numpy."""
        key = key if isinstance(key, tuple) else (key,)
        if any(k is Ellipsis for k in key):
            i = next(i for i, k in enumerate(key) if k is Ellipsis)
            key = key[:i] + (slice(None),) * (self.ndim - len(key) + 1) + key[i + 1 :]
        key = key + (slice(None),) * (self.ndim - len(key))
        box, post = [], []
        for k, n in zip(key, self.shape):
            if isinstance(k, slice) and k.indices(n)[2] == 1:
                a, b, _ = k.indices(n)
                box.append(slice(a, max(a, b)))
                post.append(slice(None))
                continue
            if isinstance(k, slice):
                idx = np.arange(*k.indices(n))
            elif isinstance(k, (int, np.integer)):
                idx = np.array(int(k) % n if int(k) < 0 else int(k))
            else:
                idx = np.asarray(k)
                idx = np.flatnonzero(idx) if idx.dtype == bool else np.where(idx < 0, idx + n, idx)
            if idx.size == 0:
                box.append(slice(0, 0))
                post.append(slice(None))
                continue
            lo = int(idx.min())
            box.append(slice(lo, int(idx.max()) + 1))
            post.append(idx - lo)
        out = self._read(box)
        for axis in reversed(range(self.ndim)):  # orthogonal indexing, one axis at a time
            if not isinstance(post[axis], slice):
                out = np.take(out, post[axis], axis=axis)
        return out

    def _read(self, sel: list[slice]) -> np.ndarray:
        acc = self.acc
        chunks = acc.chunks
        spatial = sel[1:]
        keys = list(itertools.product(*(range(s.start // c, max(s.start, s.stop - 1) // c + 1)
                                        for s, c in zip(spatial, chunks))))
        overlays = {}
        with acc._lock:  # snapshot what is still in RAM before reading the disk (a chunk moves RAM -> disk)
            for k in keys:
                if k in acc._writing:
                    overlays[k] = acc._writing[k]
                elif k in acc._pending and acc._pending[k].spill is None and acc._run is not None:
                    entry = acc._pending[k]
                    shape = acc._chunk_shape(k)
                    data = entry.compose(shape).copy()
                    w = acc._run.weight_sum(k, shape, entry.landed)
                    np.divide(data, w, out=data, where=w > 0)
                    overlays[k] = data
        out = np.asarray(acc.sum[tuple(sel)], dtype=np.float32)
        for k, data in overlays.items():
            origin = [j * c for j, c in zip(k, chunks)]
            dst, src = [slice(None)], [sel[0]]
            for s, o, n in zip(spatial, origin, data.shape[1:]):
                a, b = max(s.start, o), min(s.stop, o + n)
                if a >= b:
                    break
                dst.append(slice(a - s.start, b - s.start))
                src.append(slice(a - o, b - o))
            else:
                out[tuple(dst)] = data[tuple(src)]
        return out


class ZarrAccumulator:
    """The blended result in a zarr array on disk (``<root>/prob``, channel first, float32, Blosc LZ4),
    written by whole chunks, so memory stays bounded by a few tiles whatever the image size.

    Tiles arrive weighted by their share of the total blending weight, so the array holds the final
    result once every tile covering a chunk is done; a chunk is written once, when its last tile lands,
    by a writer thread. Until then its overlapping parts wait in RAM (at most ``CACHE_BYTES``, beyond
    which they are spilled to ``<root>/spill``).

    Create it before prediction to hand :meth:`lazy` to a viewer while a worker fills it::

        plan = plan_tiles(image.shape[:-1], tile, overlap, divisor)
        acc = ZarrAccumulator.create(path, (n_classes, *image.shape[:-1]), plan.chunks)
        viewer.add_image(acc.lazy())                 # shows tiles as they land
        prob = sliding_window_predict(image, fwd, out=acc, ...)

    Accumulators written by earlier versions (``<root>/sum`` and ``<root>/weight``) can still be opened,
    viewed and finalized.
    """

    def __init__(self, root: Path, sum_array, weight_array=None, path: str | Path | None = None):
        self.root = Path(root)
        self.sum = sum_array
        self.weight = weight_array  # only in accumulators of earlier versions
        self.path = Path(path) if path is not None else self.root / ("sum" if weight_array is not None else "prob")
        self._lock = threading.RLock()
        self._pending: dict[tuple[int, ...], _Pending] = {}
        self._writing: dict[tuple[int, ...], np.ndarray] = {}
        self._pending_bytes = 0
        self._run: _Run | None = None
        self._writer: _Writer | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.sum.shape)

    @property
    def chunks(self) -> tuple[int, ...]:
        """Spatial chunk shape."""
        return tuple(self.sum.chunks[1:])

    @classmethod
    def create(cls, path: str | Path, shape: Sequence[int], chunks: Sequence[int] | None = None, *,
               array_path: str | Path | None = None) -> ZarrAccumulator:
        """New accumulator of output ``shape`` (C, *spatial) with spatial ``chunks`` (use ``TilePlan.chunks``).
        The result array is ``<path>/prob`` unless ``array_path`` puts it elsewhere (then ``path`` is only
        created if chunks must be spilled). Neither may exist yet."""
        import zarr

        root = Path(path)
        array_path = Path(array_path) if array_path is not None else root / "prob"
        for p in (root, array_path):
            if p.exists():
                raise FileExistsError(f"{p} already exists")
        shape = tuple(int(s) for s in shape)
        chunks = tuple(int(c) for c in (chunks or shape[1:]))
        arr = zarr.create_array(store=str(array_path), shape=shape, chunks=(shape[0], *chunks), dtype="float32",
                                fill_value=0.0, compressors=_fast_codec())
        return cls(root, arr, None, array_path)

    @classmethod
    def open(cls, path: str | Path) -> ZarrAccumulator:
        import zarr

        root = Path(path)
        if (root / "weight").exists():  # written by an earlier version: running sum and weight
            return cls(root, zarr.open_array(store=str(root / "sum"), mode="r+"),
                       zarr.open_array(store=str(root / "weight"), mode="r+"), root / "sum")
        return cls(root, zarr.open_array(store=str(root / "prob"), mode="r+"), None, root / "prob")

    # --- filling (called by sliding_window_predict) ------------------------------------------------
    def _chunk_shape(self, key: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(min(c, n - j * c) for j, c, n in zip(key, self.chunks, self.shape[1:]))

    def _region(self, key: tuple[int, ...]) -> tuple[slice, ...]:
        return tuple(slice(j * c, min((j + 1) * c, n)) for j, c, n in zip(key, self.chunks, self.shape[1:]))

    def begin(self, plan: TilePlan) -> None:
        if self.weight is not None:
            raise ValueError(f"{self.root} is an accumulator of an earlier version: it can be finalized, not filled")
        self._run = _Run(plan, self.chunks)
        self._writer = _Writer(self)

    def add(self, index: tuple[int, ...], region: tuple[slice, ...], values: np.ndarray) -> None:
        """Add the weighted values of tile ``index`` (covering ``region``) chunk by chunk; write the chunks
        it finishes."""
        run = self._run
        run.position = int(run.rank[index])
        for combo in itertools.product(*(run.pieces[a][i] for a, i in enumerate(index))):
            key = tuple(p[0] for p in combo)
            src = values[(slice(None), *(p[1] for p in combo))]
            finished = None
            with self._lock:
                run.remaining[key] -= 1
                last = run.remaining[key] == 0
                entry = self._pending.get(key)
                if entry is None and last:  # the only tile over this chunk: straight to disk
                    finished = np.array(src, dtype=np.float32, copy=True, order="C")
                else:
                    if entry is None:
                        entry = self._pending[key] = _Pending()
                    if entry.spill is not None:
                        self._unspill(entry)
                    self._pending_bytes += entry.add(tuple(p[2] for p in combo), src)
                    entry.landed.append(index)
                    if last:
                        finished = entry.compose(self._chunk_shape(key))
                        self._pending_bytes -= entry.nbytes
                        del self._pending[key]
                if finished is not None:
                    self._writing[key] = finished
            if finished is not None:
                self._writer.put(key, finished)
        if self._pending_bytes > CACHE_BYTES:
            self._spill_some()

    def _spill_some(self) -> None:
        """Spill the chunks needed furthest ahead until the RAM held is 3/4 of CACHE_BYTES."""
        with self._lock:
            live = [(self._run.next_use(k), k) for k, e in self._pending.items() if e.spill is None]
            for _, key in sorted(live, reverse=True):
                if self._pending_bytes <= CACHE_BYTES * 3 // 4:
                    break
                entry = self._pending[key]
                folder = self.root / "spill"
                folder.mkdir(parents=True, exist_ok=True)
                entry.spill = folder / ("_".join(map(str, key)) + ".npz")
                arrays = {}
                for n, (lo, hi, data) in enumerate(entry.boxes):
                    arrays[f"d{n}"], arrays[f"lo{n}"], arrays[f"hi{n}"] = data, np.array(lo), np.array(hi)
                np.savez(entry.spill, **arrays)
                self._pending_bytes -= entry.nbytes
                entry.boxes = []

    def _unspill(self, entry: _Pending) -> None:
        with np.load(entry.spill) as f:
            n = len([k for k in f.files if k.startswith("d")])
            entry.boxes = [[tuple(int(v) for v in f[f"lo{i}"]), tuple(int(v) for v in f[f"hi{i}"]), f[f"d{i}"]]
                           for i in range(n)]
        entry.spill.unlink()
        entry.spill = None
        self._pending_bytes += entry.nbytes

    def close(self, ok: bool) -> None:
        """End of a pass: wait for the writer. After an error or a cancel, the partly blended chunks are
        written too, so the array keeps every tile computed so far."""
        try:
            if self._run is not None and not ok:
                with self._lock:
                    keys = list(self._pending)
                for key in keys:
                    entry = self._pending[key]
                    if entry.spill is not None:
                        self._unspill(entry)
                    data = entry.compose(self._chunk_shape(key))
                    with self._lock:
                        self._writing[key] = data
                        self._pending_bytes -= entry.nbytes
                        del self._pending[key]
                    self._writer.put(key, data)
            if self._writer is not None:
                self._writer.close()
        finally:
            self._writer = None
            self._run = None
            self._pending.clear()
            self._pending_bytes = 0
            shutil.rmtree(self.root / "spill", ignore_errors=True)

    # --- reading ---------------------------------------------------------------------------------
    def lazy(self):
        """The result as a dask array (0 where nothing is written yet). Valid at any time, also while
        tiles are being written: chunks still being blended are read from RAM."""
        import dask.array as da

        if self.weight is not None:
            s = da.from_zarr(self.sum)
            w = da.from_zarr(self.weight)[None]
            return da.where(w > 0, s / da.maximum(w, np.float32(1e-30)), np.float32(0)).astype(np.float32)
        return da.from_array(_LiveView(self), chunks=self.sum.chunks, name=f"bioflow-prediction-{uuid.uuid4().hex}",
                             asarray=True, fancy=False, meta=np.empty((0,) * len(self.shape), np.float32))

    def finalize(self, path: str | Path):
        """The result as a zarr array at ``path``: the array itself when ``path`` is where it lives, else a
        chunk by chunk copy."""
        import zarr

        if self.weight is None and Path(path).absolute() == self.path.absolute():
            return self.sum
        out = zarr.create_array(store=str(path), shape=self.shape, chunks=self.sum.chunks, dtype="float32",
                                fill_value=0.0, compressors=_fast_codec(), overwrite=True)
        for region in chunk_regions(self.shape[1:], self.chunks):
            s = self.sum[(slice(None), *region)]
            if self.weight is not None:
                w = self.weight[region]
                s = np.where(w > 0, s / np.maximum(w, 1e-30), 0).astype(np.float32)
            out[(slice(None), *region)] = s
        return out

    def result(self):
        return self.finalize(self.path)


def _fast_codec():
    """Blosc LZ4 with byte shuffle: costs less CPU than writing the raw bytes (fewer of them), shrinks noisy
    probabilities by ~1.3x and the flat background of real predictions by 100x or more (zstd would compress
    better but costs ~8x the CPU of the whole write)."""
    from zarr.codecs import BloscCodec

    return BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")


class _Writer:
    """Writes finished chunks to the accumulator's zarr array on a thread, at most WRITE_QUEUE waiting."""

    def __init__(self, acc: ZarrAccumulator):
        self.acc = acc
        self.queue: queue.Queue = queue.Queue(maxsize=WRITE_QUEUE)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._work, daemon=True, name="bioflow-chunk-writer")
        self.thread.start()

    def _work(self) -> None:
        acc = self.acc
        while True:
            item = self.queue.get()
            if item is None:
                return
            key, data = item
            try:
                if self.error is None:
                    acc.sum[(slice(None), *acc._region(key))] = data
            except BaseException as e:  # handed to the predicting thread at its next put / close
                self.error = e
            finally:
                with acc._lock:
                    if acc._writing.get(key) is data:
                        del acc._writing[key]

    def put(self, key, data) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put((key, data))

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error


def chunk_regions(shape: Sequence[int], chunks: Sequence[int]):
    """Slices of the chunks of an array of `shape`, in C order."""
    for origin in itertools.product(*(range(0, s, c) for s, c in zip(shape, chunks))):
        yield tuple(slice(o, min(o + c, s)) for o, c, s in zip(origin, chunks, shape))


# --------------------------------------------------------------------------------------------------
# Test-time augmentation
# --------------------------------------------------------------------------------------------------


def _tta_transforms(tile_shape: tuple[int, ...]) -> list[tuple[int, tuple[int, ...]]]:
    """(k rot90 in YX, flipped dims) pairs: the dihedral group of the YX plane (only the 4 flips when
    the YX tile is not square, since a rotation would change its shape), times a Z flip in 3D."""
    if tile_shape[-1] == tile_shape[-2]:
        yx = [(k, f) for k in range(4) for f in ((), (-1,))]
    else:
        yx = [(0, f) for f in ((), (-2,), (-1,), (-2, -1))]
    if len(tile_shape) == 3:
        yx = yx + [(k, (-3, *f)) for k, f in yx]
    return yx


def _forward_tta(forward: Callable, x: torch.Tensor, tta: bool) -> torch.Tensor:
    if not tta:
        return forward(x)
    acc = None
    transforms = _tta_transforms(tuple(x.shape[2:]))
    for k, dims in transforms:
        xt = torch.rot90(torch.flip(x, dims) if dims else x, k, dims=(-2, -1))
        y = forward(xt)
        y = torch.rot90(y, -k, dims=(-2, -1))
        y = torch.flip(y, dims) if dims else y
        acc = y.float() if acc is None else acc + y
    return acc / len(transforms)


# --------------------------------------------------------------------------------------------------
# Prediction
# --------------------------------------------------------------------------------------------------


def _clip(tile: tuple[slice, ...], shape: tuple[int, ...]) -> tuple[slice, ...]:
    return tuple(slice(s.start, min(s.stop, L)) for s, L in zip(tile, shape))


def _finish_tile(x, tile: tuple[slice, ...], clipped: tuple[slice, ...], preprocess) -> np.ndarray:
    """A tile read as far as the image goes (channel last) -> float32, preprocessed, padded to the tile."""
    x = np.asarray(x, dtype=np.float32)
    if preprocess is not None:
        x = np.asarray(preprocess(x), dtype=np.float32)
    pad = [(0, s.stop - c.stop) for s, c in zip(tile, clipped)]
    if any(p for _, p in pad):
        # Reflect looks like more image to a conv net; it needs pad < length, else fall back to edge.
        mode = "reflect" if all(p < c.stop - c.start for (_, p), c in zip(pad, clipped)) else "edge"
        x = np.pad(x, [*pad, (0, 0)], mode=mode)
    return x


def _read_tile(image, tile: tuple[slice, ...], shape: tuple[int, ...], preprocess) -> np.ndarray:
    """Read one tile (channel last) as float32, padding axes the image is too small for."""
    clipped = _clip(tile, shape)
    return _finish_tile(image[(*clipped, slice(None))], tile, clipped, preprocess)


def _chunk_grid(image) -> tuple[tuple[int, ...], ...] | None:
    """Per axis the chunk boundaries of a chunked array (zarr, dask), None for numpy and other arrays."""
    chunks = getattr(image, "chunks", None)
    if chunks is None or isinstance(image, np.ndarray):
        return None
    try:
        out = []
        for c, n in zip(chunks, image.shape):
            if isinstance(c, (tuple, list)):  # dask: sizes of every chunk
                out.append(tuple(np.cumsum((0, *c)).tolist()))
            else:
                out.append((*range(0, int(n), int(c)), int(n)))
        return tuple(out)
    except (TypeError, ValueError):
        return None


def _read_region(image, region: tuple[slice, ...], grid) -> np.ndarray:
    """image[region] as numpy, reading a zarr-like array chunk by chunk (one decoded chunk in memory at a
    time) and a dask array on the calling thread (no scheduler threads, no more than one chunk at a time)."""
    if type(image).__module__.startswith("dask"):
        import dask.array as da

        part = image[region]
        out = np.empty(part.shape, part.dtype)
        da.store(part, out, lock=False, scheduler="synchronous")  # block by block into `out`, no concatenation
        return out
    if grid is None:
        return np.asarray(image[region])
    out = None
    per_axis = []
    for s, bounds in zip(region, grid):
        cuts = [b for b in bounds if s.start < b < s.stop]
        edges = [s.start, *cuts, s.stop]
        per_axis.append([slice(a, b) for a, b in zip(edges, edges[1:])])
    for piece in itertools.product(*per_axis):
        block = np.asarray(image[piece])
        if out is None:
            out = np.empty(tuple(s.stop - s.start for s in region), block.dtype)
        out[tuple(slice(p.start - s.start, p.stop - s.start) for p, s in zip(piece, region))] = block
    return out


def _shared_mmap(image):
    """The shared (not copy-on-write) mmap under a numpy memmap or a view of one, else None."""
    seen = 0
    obj = image
    while obj is not None and seen < 16:
        if isinstance(obj, np.memmap):
            m = getattr(obj, "_mmap", None)
            return m if m is not None and getattr(obj, "mode", "c") in ("r", "r+", "w+", "readonly", "readwrite",
                                                                          "write") else None
        obj = getattr(obj, "base", None)
        seen += 1
    return None


def _drop_pages(mapping) -> None:
    import mmap

    try:
        mapping.madvise(mmap.MADV_DONTNEED)
    except (AttributeError, ValueError, OSError):  # no madvise (not Linux), or a closed mapping
        pass


class _TileReader:
    """Reads the tiles of a plan in traversal order. A chunked image (zarr, dask) is read by bands (a row
    of tiles across the last axis: every input chunk is decoded once per row instead of once per tile);
    other images, or bands above BAND_BYTES, tile by tile."""

    def __init__(self, image, plan: TilePlan, spatial: tuple[int, ...], preprocess):
        self.image, self.plan, self.spatial, self.preprocess = image, plan, spatial, preprocess
        self.grid = _chunk_grid(image)
        band = [min(t, L) for t, L in zip(plan.tile_shape[:-1], spatial[:-1])] + [spatial[-1]]
        nbytes = int(np.prod(band)) * int(image.shape[-1]) * np.dtype(image.dtype).itemsize
        self.bands = self.grid is not None and nbytes <= BAND_BYTES
        self.band_key, self.band, self.band_origin = None, None, None
        self.mapped = _shared_mmap(image)
        self.row = None

    def read(self, k: int) -> np.ndarray:
        """Tile k of plan.tiles as (C, *tile) float32."""
        tile = self.plan.tiles[k]
        clipped = _clip(tile, self.spatial)
        key = tuple((s.start, s.stop) for s in clipped[:-1])
        if self.mapped is not None and key != self.row:
            # A memory-mapped file (e.g. a TIFF) counts in the RSS for every page ever read through the mapping:
            # drop our mappings of the rows done (the pages stay in the page cache, and in the file).
            self.row = key
            _drop_pages(self.mapped)
        if not self.bands:
            x = _read_tile(self.image, tile, self.spatial, self.preprocess)
        else:
            if key != self.band_key:
                self.band = None  # drop the old band before reading the next
                region = (*clipped[:-1], slice(0, self.spatial[-1]), slice(0, int(self.image.shape[-1])))
                self.band = _read_region(self.image, region, self.grid)
                self.band_key = key
                self.band_origin = [s.start for s in clipped[:-1]]
            local = tuple(slice(s.start - o, s.stop - o) for s, o in zip(clipped[:-1], self.band_origin))
            x = _finish_tile(self.band[(*local, clipped[-1])], tile, clipped, self.preprocess)
        return np.moveaxis(x, -1, 0)


class _Prefetch:
    """Batches of tiles read one batch ahead on a thread (reading overlaps the forward pass)."""

    def __init__(self, reader: _TileReader, batches: list[list[int]]):
        self.queue: queue.Queue = queue.Queue(maxsize=1)
        self.stop = threading.Event()
        self.reader, self.batches = reader, batches
        self.thread = threading.Thread(target=self._work, daemon=True, name="bioflow-tile-reader")
        self.thread.start()

    def _put(self, item) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _work(self) -> None:
        try:
            for batch in self.batches:
                x = None
                for b, k in enumerate(batch):
                    tile = self.reader.read(k)
                    if x is None:
                        x = np.empty((len(batch), *tile.shape), np.float32)
                    x[b] = tile
                    del tile
                if not self._put(("ok", batch, x)) or self.stop.is_set():
                    return
        except BaseException as e:  # handed to the consumer, which re-raises it
            self._put(("error", e, None))
        finally:
            self.reader.band = None
            if self.reader.mapped is not None:
                _drop_pages(self.reader.mapped)

    def __iter__(self):
        for _ in self.batches:
            kind, batch, x = self.queue.get()
            if kind == "error":
                raise batch
            yield batch, x

    def close(self) -> None:
        self.stop.set()
        while True:  # unblock a pending put
            try:
                self.queue.get_nowait()
            except queue.Empty:
                break
        self.thread.join()


def sliding_window_predict(
    image,
    forward: Callable[[torch.Tensor], torch.Tensor],
    *,
    out_channels: int,
    tile_size: int | Sequence[int],
    overlap: float = 0.0625,
    batch_size: int = 4,
    tta: bool = False,
    device: str | torch.device = "cpu",
    divisor: int = 1,
    preprocess: Callable[[np.ndarray], np.ndarray] | None = None,
    out: str | Path | ZarrAccumulator | None = None,
    cancel: Callable[[], bool] | None = None,
    progress: Callable[[int, int], None] | None = None,
):
    """Predict ``image`` ((Z,)Y,X,C; numpy, dask, zarr or any array with .shape and slicing) tile by
    tile and blend. Returns (out_channels, (Z,)Y,X) float32: a numpy array when ``out`` is None,
    else a zarr array at ``<out>/prob`` (``out`` being a new directory) or the ZarrAccumulator's array.

    Tiles are predicted in ``TilePlan.traversal`` order; a reader thread prepares the next batch while the
    model runs, a writer thread writes finished zarr chunks. Only a few tiles, one input band and the
    overlaps still waiting for their next tile are in memory, whatever the image size."""
    spatial = tuple(int(s) for s in image.shape[:-1])
    if len(spatial) not in (2, 3):
        raise ValueError(f"expected a (Z,)Y,X,C image, got shape {tuple(image.shape)}")
    # Rotation TTA needs square YX tiles; plan them square if the caller asked for square ones.
    tile_yx = (tile_size, tile_size) if isinstance(tile_size, int) else tuple(tile_size)[-2:]
    plan = plan_tiles(spatial, tile_size, overlap, divisor, square_yx=tta and tile_yx[0] == tile_yx[1])
    out_shape = (out_channels, *spatial)

    if out is None:
        acc = _NumpyAccumulator(out_shape)
    elif isinstance(out, ZarrAccumulator):
        acc = out
        if acc.shape != out_shape:
            raise ValueError(f"accumulator shape {acc.shape} != expected {out_shape}")
    else:
        acc = ZarrAccumulator.create(out, out_shape, plan.chunks)

    device = torch.device(device)
    grid = plan.grid
    weights = [plan.axis_weights(a) for a in range(len(spatial))]
    order = plan.traversal
    total = len(order)
    batches = [order[b : b + batch_size] for b in range(0, total, batch_size)]
    trim = _Trimmer() if isinstance(acc, ZarrAccumulator) else None  # big images: keep the RSS near the live memory
    acc.begin(plan)
    reader = _Prefetch(_TileReader(image, plan, spatial, preprocess), batches)
    ok, done = False, 0
    try:
        for batch, x in reader:
            if cancel is not None and cancel():
                raise PredictionCancelled(f"cancelled after {done}/{total} tiles")
            x = torch.from_numpy(x).to(device)  # (B, C, *tile)
            with torch.inference_mode():
                y = _forward_tta(forward, x, tta)
            del x
            y = y.float().cpu().numpy()  # leave the compute device right away
            expected = (len(batch), out_channels, *plan.tile_shape)
            if y.shape != expected:
                raise ValueError(f"forward returned shape {y.shape}, expected {expected}")
            for k, yt in zip(batch, y):
                tile, index = plan.tiles[k], grid[k]
                region = _clip(tile, spatial)
                crop = tuple(slice(0, r.stop - r.start) for r in region)  # drop the padding again
                values = yt[(slice(None), *crop)]
                _apply_weights(values, [w[i][c] for w, i, c in zip(weights, index, crop)])
                acc.add(index, region, values)
            del y, values
            done += len(batch)
            if trim is not None:
                trim()
            if progress is not None:
                progress(done, total)
        ok = True
    finally:
        reader.close()
        acc.close(ok)
    return acc.result()


# --------------------------------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------------------------------


def _labels_dtype(n_channels: int):
    return np.uint8 if n_channels <= 256 else np.uint16


def argmax_labels(prob):
    """Class labels from (C, (Z,)Y,X) probabilities: argmax over C, or prob > 0.5 when C == 1
    (sigmoid output). numpy in -> numpy out; dask or zarr in -> lazy dask out."""
    if type(prob).__module__.startswith("zarr"):
        import dask.array as da

        prob = da.from_zarr(prob)
    if type(prob).__module__.startswith("dask"):
        import dask.array as da

        # Channel axis in one chunk, so the argmax is a blockwise map (no cross-chunk reduction).
        prob = prob.rechunk({0: -1})
        return da.map_blocks(_argmax_block, prob, drop_axis=0, dtype=_labels_dtype(prob.shape[0]))
    return _argmax_block(np.asarray(prob))


ARGMAX_SLAB = 2**20  # voxels per np.argmax call: its int64 result is 8 bytes per voxel


def _argmax_block(p: np.ndarray) -> np.ndarray:
    if p.shape[0] == 1:
        return (p[0] > 0.5).astype(np.uint8)
    out = np.empty(p.shape[1:], _labels_dtype(p.shape[0]))
    if out.ndim == 0 or out.size <= ARGMAX_SLAB:
        out[...] = np.argmax(p, axis=0)
        return out
    step = max(1, ARGMAX_SLAB // int(np.prod(out.shape[1:])))  # slabs along the first spatial axis
    for a in range(0, out.shape[0], step):
        out[a : a + step] = np.argmax(p[:, a : a + step], axis=0)
    return out


def write_labels_zarr(prob_zarr, path: str | Path):
    """Chunk by chunk argmax of a (C, (Z,)Y,X) zarr array into a new zarr label array at ``path``."""
    import zarr

    shape = tuple(prob_zarr.shape[1:])
    chunks = tuple(prob_zarr.chunks[1:])
    out = zarr.open_array(store=str(path), mode="w", shape=shape, chunks=chunks,
                          dtype=_labels_dtype(prob_zarr.shape[0]), fill_value=0)

    def one(region) -> None:
        out[region] = _argmax_block(np.asarray(prob_zarr[(slice(None), *region)]))

    # Two chunks at a time (reading, decompressing and argmax of one overlap the writing of another), at most
    # four in flight, so memory stays a few chunks.
    from concurrent.futures import ThreadPoolExecutor

    trim = _Trimmer()
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="bioflow-labels") as pool:
        flying: list = []
        for region in chunk_regions(shape, chunks):
            flying.append(pool.submit(one, region))
            if len(flying) >= 4:
                flying.pop(0).result()
                trim()
        for f in flying:
            f.result()
    return out
