"""The bookkeeping of a sliding-window pass over a ZarrAccumulator: which tiles cover which output chunks
(_axis_pieces, _Run) and the part of a chunk the tiles have added so far (_Pending)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .tiling import TilePlan


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
