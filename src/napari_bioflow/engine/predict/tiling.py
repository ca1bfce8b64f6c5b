"""Where the tiles of a sliding window go (a plan that starts tiles on chunk boundaries and orders them so
few overlaps wait), and their separable blending weights. No torch, Qt or napari here."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

# Weight of a pixel right at a tile border that touches another tile. Never 0, so that the total weight W
# is > 0 everywhere even if a rounding quirk ever left a pixel covered only by ramp starts.
WEIGHT_FLOOR = 1e-3

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
    tiles = [tuple(slice(s, s + t) for s, t in zip(origin, tile_shape)) for origin in itertools.product(*starts)]
    return TilePlan(shape, tuple(a[2] for a in axes), tile_shape, starts, tiles)


def prediction_plan(
    shape: Sequence[int], tile_size: int | Sequence[int], overlap: float = 0.0625, divisor: int = 1, tta: bool = False
) -> TilePlan:
    """The tile plan of one prediction: with TTA (engine/predict/tta.py turns square Y-X tiles) the Y-X tiles are made square
    when the requested tile is square in Y-X. Made once per image, for the tiles run and the result's chunks alike."""
    tile_yx = (tile_size, tile_size) if isinstance(tile_size, int) else tuple(tile_size)[-2:]
    return plan_tiles(shape, tile_size, overlap, divisor, square_yx=tta and tile_yx[0] == tile_yx[1])


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
