"""N-D sliding-window prediction for 2D / 3D images that may be larger than RAM.

In the spirit of MONAI's ``sliding_window_inference``: the image is cut into overlapping tiles, the
model runs on batches of tiles, and the outputs are blended with a smooth weight map into a running
sum and weight (result = sum / weight). The accumulators live either in numpy or, for images larger
than RAM, in zarr arrays on disk (:class:`ZarrAccumulator`), which also gives a GUI a lazy dask view
of the prediction while it is being computed.

Axes conventions: input images are ``(Z,)Y,X,C`` (channel last, as napari shows them); outputs are
``(out_channels, (Z,)Y,X)`` float32 (channel first, as models produce them).

No Qt / napari imports here: this module runs in worker threads and headless scripts.
"""

from __future__ import annotations

import itertools
import math
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

# Weight of a pixel right at a tile border that touches another tile. Never 0, so that sum / weight is
# defined everywhere even if a rounding quirk ever left a pixel covered only by ramp starts.
WEIGHT_FLOOR = 1e-3


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
        """Spatial chunk shape aligned to the tile step, so each tile touches ~2 chunks per axis
        (used for the on-disk accumulators)."""
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
    # Spread starts evenly over [0, length - t]; rounding keeps every gap <= t - ov (t - ov is an
    # integer >= the exact step), so the overlap never falls below ov.
    step = (length - t) / (n - 1)
    starts = [round(i * step) for i in range(n)]
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


def _weight_map(shape: tuple[int, ...], margins: list[tuple[int, int]]) -> np.ndarray:
    w = np.ones((), np.float32)
    for size, (lo, hi) in zip(shape, margins):
        w = np.multiply.outer(w, _ramp_profile(size, lo, hi))
    return w


# --------------------------------------------------------------------------------------------------
# Accumulators
# --------------------------------------------------------------------------------------------------


class _NumpyAccumulator:
    def __init__(self, shape: tuple[int, ...]):
        self.sum = np.zeros(shape, np.float32)
        self.weight = np.zeros(shape[1:], np.float32)  # shared by all channels

    def add(self, region: tuple[slice, ...], values: np.ndarray, weight: np.ndarray) -> None:
        self.sum[(slice(None), *region)] += values * weight
        self.weight[region] += weight

    def result(self) -> np.ndarray:
        # Every pixel is covered by some tile, so weight > 0 everywhere; divide in place to save RAM.
        self.sum /= self.weight
        return self.sum


class ZarrAccumulator:
    """Running sum and weight in zarr arrays on disk (``<root>/sum`` channel first and
    ``<root>/weight`` spatial), so memory stays bounded by a few tiles whatever the image size.

    Create it before prediction to hand :meth:`lazy` to a viewer while a worker fills it::

        plan = plan_tiles(image.shape[:-1], tile, overlap, divisor)
        acc = ZarrAccumulator.create(path, (n_classes, *image.shape[:-1]), plan.chunks)
        viewer.add_image(acc.lazy())                 # shows tiles as they land
        prob = sliding_window_predict(image, fwd, out=acc, ...)
    """

    def __init__(self, root: Path, sum_array, weight_array):
        self.root = Path(root)
        self.sum = sum_array
        self.weight = weight_array

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.sum.shape)

    @classmethod
    def create(cls, path: str | Path, shape: Sequence[int], chunks: Sequence[int] | None = None) -> ZarrAccumulator:
        """New accumulator of output ``shape`` (C, *spatial) with spatial ``chunks``
        (use ``TilePlan.chunks``). ``path`` must not exist yet."""
        import zarr

        root = Path(path)
        if root.exists():
            raise FileExistsError(f"{root} already exists")
        shape = tuple(int(s) for s in shape)
        chunks = tuple(int(c) for c in (chunks or shape[1:]))
        # No compression: the accumulators are rewritten on every tile and hold incompressible floats.
        common = dict(dtype="float32", fill_value=0.0, compressors=None)
        s = zarr.create_array(store=str(root / "sum"), shape=shape, chunks=(shape[0], *chunks), **common)
        w = zarr.create_array(store=str(root / "weight"), shape=shape[1:], chunks=chunks, **common)
        return cls(root, s, w)

    @classmethod
    def open(cls, path: str | Path) -> ZarrAccumulator:
        import zarr

        root = Path(path)
        return cls(root, zarr.open_array(store=str(root / "sum"), mode="r+"),
                   zarr.open_array(store=str(root / "weight"), mode="r+"))

    def add(self, region: tuple[slice, ...], values: np.ndarray, weight: np.ndarray) -> None:
        # Read-modify-write of just the tile region; zarr touches only the chunks under it.
        full = (slice(None), *region)
        self.sum[full] = self.sum[full] + values * weight
        self.weight[region] = self.weight[region] + weight

    def lazy(self):
        """sum / weight as a dask array (0 where nothing is written yet). Valid at any time, also
        while tiles are being written; a pixel mid-update may briefly show a blend of old and new."""
        import dask.array as da

        s = da.from_zarr(self.sum)
        w = da.from_zarr(self.weight)[None]
        return da.where(w > 0, s / da.maximum(w, np.float32(1e-30)), np.float32(0)).astype(np.float32)

    def finalize(self, path: str | Path):
        """Write the normalised result chunk by chunk to a zarr array at ``path`` and return it."""
        import zarr

        out = zarr.open_array(store=str(path), mode="w", shape=self.shape, chunks=self.sum.chunks, dtype="float32")
        for region in chunk_regions(self.shape[1:], self.sum.chunks[1:]):
            s = self.sum[(slice(None), *region)]
            w = self.weight[region]
            out[(slice(None), *region)] = np.where(w > 0, s / np.maximum(w, 1e-30), 0).astype(np.float32)
        return out

    def result(self):
        return self.finalize(self.root / "prob")


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


def _read_tile(image, tile: tuple[slice, ...], shape: tuple[int, ...], preprocess) -> np.ndarray:
    """Read one tile (channel last) as float32, padding axes the image is too small for."""
    clipped = tuple(slice(s.start, min(s.stop, L)) for s, L in zip(tile, shape))
    x = np.asarray(image[(*clipped, slice(None))], dtype=np.float32)
    if preprocess is not None:
        x = np.asarray(preprocess(x), dtype=np.float32)
    pad = [(0, s.stop - c.stop) for s, c in zip(tile, clipped)]
    if any(p for _, p in pad):
        # Reflect looks like more image to a conv net; it needs pad < length, else fall back to edge.
        mode = "reflect" if all(p < c.stop - c.start for (_, p), c in zip(pad, clipped)) else "edge"
        x = np.pad(x, [*pad, (0, 0)], mode=mode)
    return x


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
    else a zarr array at ``<out>/prob`` (``out`` being a new directory or a ZarrAccumulator)."""
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
    weights: dict[tuple, np.ndarray] = {}  # few distinct margin patterns (corner / edge / interior)
    total = len(plan.tiles)
    for b0 in range(0, total, batch_size):
        if cancel is not None and cancel():
            raise PredictionCancelled(f"cancelled after {b0}/{total} tiles")
        batch = plan.tiles[b0 : b0 + batch_size]
        # Only this batch is ever in memory: dask / zarr inputs are read tile by tile.
        x = np.stack([_read_tile(image, t, spatial, preprocess) for t in batch])
        x = torch.from_numpy(np.moveaxis(x, -1, 1).copy()).to(device)  # -> (B, C, *spatial)
        with torch.inference_mode():
            y = _forward_tta(forward, x, tta)
        y = y.float().cpu().numpy()  # leave the compute device right away
        expected = (len(batch), out_channels, *plan.tile_shape)
        if y.shape != expected:
            raise ValueError(f"forward returned shape {y.shape}, expected {expected}")

        for tile, index, yt in zip(batch, grid[b0 : b0 + batch_size], y):
            region = tuple(slice(s.start, min(s.stop, L)) for s, L in zip(tile, spatial))
            crop = tuple(slice(0, r.stop - r.start) for r in region)  # drop the padding again
            key = tuple(plan.margins(index))
            if key not in weights:
                weights[key] = _weight_map(plan.tile_shape, list(key))
            w = weights[key][crop]
            acc.add(region, yt[(slice(None), *crop)], w)
        if progress is not None:
            progress(min(b0 + batch_size, total), total)
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


def _argmax_block(p: np.ndarray) -> np.ndarray:
    if p.shape[0] == 1:
        return (p[0] > 0.5).astype(np.uint8)
    return np.argmax(p, axis=0).astype(_labels_dtype(p.shape[0]))


def write_labels_zarr(prob_zarr, path: str | Path):
    """Chunk by chunk argmax of a (C, (Z,)Y,X) zarr array into a new zarr label array at ``path``."""
    import zarr

    shape = tuple(prob_zarr.shape[1:])
    chunks = tuple(prob_zarr.chunks[1:])
    out = zarr.open_array(store=str(path), mode="w", shape=shape, chunks=chunks,
                          dtype=_labels_dtype(prob_zarr.shape[0]), fill_value=0)
    for region in chunk_regions(shape, chunks):
        out[region] = _argmax_block(np.asarray(prob_zarr[(slice(None), *region)]))
    return out
