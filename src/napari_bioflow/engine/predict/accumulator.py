"""Where a sliding window's blended tiles go: numpy for small images, or a zarr array on disk written by whole
chunks on a writer thread, with the overlaps that later tiles still add to held in RAM (spilled to disk beyond
CACHE_BYTES), a live dask view of it, and glibc's freed pages returned as the prediction goes (see
engine/predict/sliding_window.py for the whole flow). No torch, Qt or napari here."""

from __future__ import annotations

import itertools
import shutil
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .chunk_bookkeeping import _axis_pieces, _Pending, _Run  # noqa: F401
from .chunk_writer import WRITE_QUEUE, _fast_codec, _Writer, chunk_regions  # noqa: F401
from .live_view import _LiveView
from .memory_trim import TRIM_SLACK, _rss, _Trimmer  # noqa: F401
from .tiling import TilePlan

# RAM for zarr chunks that later tiles still add to (only their overlapping parts are held); beyond it the
# chunks needed furthest ahead are spilled to disk. The tile order keeps this small: see TilePlan.traversal.
CACHE_BYTES = 64 * 2**20

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
    def create(
        cls,
        path: str | Path,
        shape: Sequence[int],
        chunks: Sequence[int] | None = None,
        *,
        array_path: str | Path | None = None,
    ) -> ZarrAccumulator:
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
        arr = zarr.create_array(
            store=str(array_path),
            shape=shape,
            chunks=(shape[0], *chunks),
            dtype="float32",
            fill_value=0.0,
            compressors=_fast_codec(),
        )
        return cls(root, arr, None, array_path)

    @classmethod
    def open(cls, path: str | Path) -> ZarrAccumulator:
        import zarr

        root = Path(path)
        if (root / "weight").exists():  # written by an earlier version: running sum and weight
            return cls(
                root,
                zarr.open_array(store=str(root / "sum"), mode="r+"),
                zarr.open_array(store=str(root / "weight"), mode="r+"),
                root / "sum",
            )
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
            entry.boxes = [
                [tuple(int(v) for v in f[f"lo{i}"]), tuple(int(v) for v in f[f"hi{i}"]), f[f"d{i}"]] for i in range(n)
            ]
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
        return da.from_array(
            _LiveView(self),
            chunks=self.sum.chunks,
            name=f"bioflow-prediction-{uuid.uuid4().hex}",
            asarray=True,
            fancy=False,
            meta=np.empty((0,) * len(self.shape), np.float32),
        )

    def finalize(self, path: str | Path):
        """The result as a zarr array at ``path``: the array itself when ``path`` is where it lives, else a
        chunk by chunk copy."""
        import zarr

        if self.weight is None and Path(path).absolute() == self.path.absolute():
            return self.sum
        out = zarr.create_array(
            store=str(path),
            shape=self.shape,
            chunks=self.sum.chunks,
            dtype="float32",
            fill_value=0.0,
            compressors=_fast_codec(),
            overwrite=True,
        )
        for region in chunk_regions(self.shape[1:], self.chunks):
            s = self.sum[(slice(None), *region)]
            if self.weight is not None:
                w = self.weight[region]
                s = np.where(w > 0, s / np.maximum(w, 1e-30), 0).astype(np.float32)
            out[(slice(None), *region)] = s
        return out

    def result(self):
        return self.finalize(self.path)
