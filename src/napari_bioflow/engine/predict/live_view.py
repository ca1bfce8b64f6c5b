"""The live view of a ZarrAccumulator: an array-like dask reads while tiles land (finished chunks from disk,
chunks still being blended from RAM, normalised by the weight of the tiles landed so far)."""

from __future__ import annotations

import itertools

import numpy as np


class _LiveView:
    """Array-like over a ZarrAccumulator for dask: finished chunks from disk, chunks still being blended
    from RAM (normalised by the weight of the tiles landed so far, so they show the right values)."""

    def __init__(self, acc):
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
        keys = list(
            itertools.product(
                *(range(s.start // c, max(s.start, s.stop - 1) // c + 1) for s, c in zip(spatial, chunks))
            )
        )
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
