"""Training patches: random (optionally foreground-centred) crops read from array-likes, never whole folders.

A background thread prepares the next batches while the model trains (torch releases the GIL in its kernels),
so reading, normalizing and stacking patches costs the training loop almost nothing.
"""

from __future__ import annotations

import itertools
import math
import queue
import threading
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from .sources import Sample

FOREGROUND_POINTS = 100_000  # foreground coordinates kept per image for centred sampling


def grid_starts(length: int, patch: int) -> list[int]:
    """Evenly spread starts of the fewest patches covering [0, length)."""
    if length <= patch:
        return [0]
    n = math.ceil(length / patch)
    return [round(i * (length - patch) / (n - 1)) for i in range(n)]


class PatchSampler:
    def __init__(
        self,
        samples: Sequence[Sample],
        patch_size: Sequence[int],
        normalize: Callable,
        seed: int = 0,
        foreground: float = 0.0,
        read_target: Callable | None = None,
        cover: bool = False,
    ):
        self.samples = list(samples)
        self.patch = tuple(patch_size)
        self.normalize = normalize
        self.rng = np.random.default_rng(seed)
        self.foreground = foreground
        self.read_target = read_target or (lambda s, sl, x: s.read_label(sl))
        sizes = np.array([np.prod(s.spatial_shape) for s in self.samples], dtype=float)
        self.weights = sizes / sizes.sum()  # bigger images give proportionally more patches
        self._fg: dict[int, np.ndarray] = {}
        # cover: draw images from a shuffled deck holding each image once per patch it spans (at least once), so
        # an epoch's batches see every part of small data without repeats; else independently by area
        self.cover = cover
        self._deck: list[int] = []

    def _foreground_points(self, i: int) -> np.ndarray:
        if i not in self._fg:
            s = self.samples[i]
            blocks = _label_blocks(s.label)
            if blocks is None:  # in memory (numpy, memory-mapped TIFF) or a single chunk
                lab = np.asarray(s.label)
                pts = np.argwhere(lab > 0)
                if len(pts) > FOREGROUND_POINTS:
                    pts = pts[self.rng.choice(len(pts), FOREGROUND_POINTS, replace=False)]
            else:
                pts = _foreground_by_chunks(s.label, blocks, self.rng)
            self._fg[i] = pts
        return self._fg[i]

    def _start(self, i: int) -> tuple[int, ...]:
        shape = self.samples[i].spatial_shape
        if self.foreground > 0 and self.samples[i].label is not None and self.rng.random() < self.foreground:
            pts = self._foreground_points(i)
            if len(pts):
                c = pts[self.rng.integers(len(pts))]
                return tuple(int(np.clip(ci - p // 2, 0, d - p)) for ci, p, d in zip(c, self.patch, shape))
        return tuple(int(self.rng.integers(0, d - p + 1)) for d, p in zip(shape, self.patch))

    def probability_map(self, i: int) -> np.ndarray:
        """The chance (float32, sums to 1) that a patch of image i is centred on each pixel, as `_start` draws:
        uniform over the centres a patch can have, and with probability `foreground` on a foreground pixel (moved
        inwards as `_start` clips it) when the image has labels with foreground."""
        s = self.samples[i]
        shape, half = tuple(s.spatial_shape), [p // 2 for p in self.patch]
        uniform = np.zeros(shape, np.float64)
        uniform[tuple(slice(h, d - p + h + 1) for h, p, d in zip(half, self.patch, shape))] = 1.0
        uniform /= uniform.sum()
        if self.foreground <= 0 or s.label is None:
            return uniform.astype(np.float32)
        lab = s.label.compute() if hasattr(s.label, "compute") else np.asarray(s.label)
        pts = np.argwhere(np.asarray(lab).reshape(shape) > 0)
        if not len(pts):
            return uniform.astype(np.float32)
        high = np.array(shape) - np.array(self.patch)
        centres = np.clip(pts - np.array(half), 0, high) + np.array(half)
        fg = np.zeros(shape, np.float64)
        np.add.at(fg, tuple(centres.T), 1.0 / len(pts))
        return ((1 - self.foreground) * uniform + self.foreground * fg).astype(np.float32)

    def read(self, i: int, start: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        s = self.samples[i]
        _, x, target = self.read_region(s, tuple(slice(a, a + p) for a, p in zip(start, self.patch)))
        return x, target

    def read_region(self, s: Sample, sl: tuple[slice, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(raw (Z,)Y,X,C in memory, normalized channels-first input, target) of region `sl` of sample `s`."""
        raw = s.raw[sl]
        raw = raw.compute() if hasattr(raw, "compute") else np.asarray(raw)
        x = np.ascontiguousarray(np.moveaxis(self.normalize(raw), -1, 0))  # channels first for torch
        return raw, x, self.read_target(s, sl, x)

    def _draw(self, batch_size: int) -> list[int]:
        if not self.cover:
            return [int(i) for i in self.rng.choice(len(self.samples), size=batch_size, p=self.weights)]
        out: list[int] = []
        while len(out) < batch_size:
            if not self._deck:
                area = float(np.prod(self.patch))
                per = [max(1, round(float(np.prod(s.spatial_shape)) / area)) for s in self.samples]
                self._deck = [int(i) for i in self.rng.permutation(np.repeat(np.arange(len(per)), per))]
            out.append(self._deck.pop())
        return out

    def batch(self, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        idx = self._draw(batch_size)
        pairs = [self.read(int(i), self._start(int(i))) for i in idx]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def _label_blocks(label) -> list[tuple[slice, ...]] | None:
    """The chunk regions of a chunked (dask, zarr) label array with more than one chunk, else None."""
    if label is None or isinstance(label, np.ndarray):
        return None
    chunks = getattr(label, "chunks", None)
    if not chunks:
        return None
    per_axis = []
    for c, n in zip(chunks, label.shape):
        sizes = list(c) if isinstance(c, (tuple, list)) else [min(int(c), n - o) for o in range(0, n, int(c))]
        edges = np.cumsum([0, *sizes])
        per_axis.append([slice(int(a), int(b)) for a, b in zip(edges, edges[1:])])
    blocks = list(itertools.product(*per_axis))
    return blocks if len(blocks) > 1 else None


def _foreground_by_chunks(label, blocks, rng: np.random.Generator) -> np.ndarray:
    """Foreground coordinates of a label array larger than RAM, read chunk by chunk: a uniform random subset of at
    most FOREGROUND_POINTS of them (every point is kept with the same probability, halved whenever the pool grows
    past twice the target), so memory stays a chunk plus the points."""
    keep = 1.0
    pool: list[np.ndarray] = []
    size = 0
    for region in blocks:
        block = label[region]
        block = block.compute() if hasattr(block, "compute") else np.asarray(block)
        pts = np.argwhere(block > 0)
        del block
        if keep < 1.0 and len(pts):
            pts = pts[rng.random(len(pts)) < keep]
        if len(pts):
            pool.append(pts + np.array([r.start for r in region]))
            size += len(pts)
        while size > 2 * FOREGROUND_POINTS:  # thin what is kept so far to the new probability
            keep /= 2
            pool = [p[rng.random(len(p)) < 0.5] for p in pool]
            size = sum(len(p) for p in pool)
    if not pool:
        return np.zeros((0, len(blocks[0])), np.int64)
    pts = np.concatenate(pool)
    if len(pts) > FOREGROUND_POINTS:
        pts = pts[rng.choice(len(pts), FOREGROUND_POINTS, replace=False)]
    return pts


def validation_patches(
    samples: Sequence[Sample], patch_size: Sequence[int], max_patches: int = 64
) -> list[tuple[int, tuple[int, ...]]]:
    """Fixed (sample index, start) pairs tiling the validation images; evenly thinned to at most max_patches."""
    out = []
    for i, s in enumerate(samples):
        starts = [grid_starts(d, p) for d, p in zip(s.spatial_shape, patch_size)]
        for pos in np.stack(np.meshgrid(*starts, indexing="ij"), -1).reshape(-1, len(patch_size)):
            out.append((i, tuple(int(v) for v in pos)))
    if len(out) > max_patches:
        keep = np.linspace(0, len(out) - 1, max_patches).round().astype(int)
        out = [out[k] for k in keep]
    return out


def prefetch(make: Callable[[], tuple], count: int, depth: int = 2) -> Iterator[tuple]:
    """Yield `count` results of `make()` computed ahead on a daemon thread. Closing the generator (or abandoning
    it) stops the thread and waits for it: no thread of an epoch outlives it (nor runs on while the interpreter
    exits, where a thread stopped inside a library call aborts the process)."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work():
        try:
            for _ in range(count):
                item = make()
                while not stop.is_set():
                    try:
                        q.put(("ok", item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
        except BaseException as e:  # hand the error to the consumer, which re-raises it (unless it has stopped)
            while not stop.is_set():
                try:
                    q.put(("error", e), timeout=0.1)
                    break
                except queue.Full:
                    continue

    t = threading.Thread(target=work, daemon=True, name="bioflow-prefetch")
    t.start()
    try:
        for _ in range(count):
            kind, item = q.get()
            if kind == "error":
                raise item
            yield item
    finally:
        stop.set()
        t.join()  # at most the batch being made: the thread checks `stop` between batches
