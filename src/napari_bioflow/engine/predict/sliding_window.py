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

The pieces: engine/predict/tiling.py (the tile plan and the weights), engine/predict/accumulator.py (numpy and zarr results,
the writer thread, spills, the live view), engine/predict/tta.py (test-time augmentation), this module (reading tiles,
the loop, argmax labels).

Axes conventions: input images are ``(Z,)Y,X,C`` (channel last, as napari shows them); outputs are
``(out_channels, (Z,)Y,X)`` float32 (channel first, as models produce them).

No Qt / napari imports here: this module runs in worker threads and headless scripts.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

# the tile plan and the accumulators live in their own modules; their public names are this module's API too
from .accumulator import ZarrAccumulator, _LiveView, _NumpyAccumulator, _Trimmer, chunk_regions  # noqa: F401
from .tiling import TilePlan, _apply_weights, plan_tiles, prediction_plan  # noqa: F401
from .tta import tta_predict

__all__ = [
    "PredictionCancelled",
    "TilePlan",
    "ZarrAccumulator",
    "argmax_labels",
    "chunk_regions",
    "plan_tiles",
    "prediction_plan",
    "sliding_window_predict",
    "write_labels_zarr",
]

# Largest input band (one row of tiles across the last axis) read at once from a chunked (zarr / dask)
# image; above it, or for unchunked arrays (numpy, memory-mapped TIFF), tiles are read one by one.
BAND_BYTES = 128 * 2**20


class PredictionCancelled(Exception):
    """Raised by :func:`sliding_window_predict` when its ``cancel`` callback returned True."""


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
            return (
                m
                if m is not None and getattr(obj, "mode", "c") in ("r", "r+", "w+", "readonly", "readwrite", "write")
                else None
            )
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
    tile_size: int | Sequence[int] | None = None,
    overlap: float = 0.0625,
    batch_size: int = 4,
    tta: bool = False,
    device: str | torch.device = "cpu",
    divisor: int = 1,
    preprocess: Callable[[np.ndarray], np.ndarray] | None = None,
    out: str | Path | ZarrAccumulator | None = None,
    cancel: Callable[[], bool] | None = None,
    progress: Callable[[int, int], None] | None = None,
    plan: TilePlan | None = None,
):
    """Predict ``image`` ((Z,)Y,X,C; numpy, dask, zarr or any array with .shape and slicing) tile by
    tile and blend. Returns (out_channels, (Z,)Y,X) float32: a numpy array when ``out`` is None,
    else a zarr array at ``<out>/prob`` (``out`` being a new directory) or the ZarrAccumulator's array.

    Tiles are predicted in ``TilePlan.traversal`` order; a reader thread prepares the next batch while the
    model runs, a writer thread writes finished zarr chunks. Only a few tiles, one input band and the
    overlaps still waiting for their next tile are in memory, whatever the image size.

    ``plan``: the tiles to run, made once per image by the caller (``prediction_plan``, whose chunks a ZarrAccumulator
    given as ``out`` was created with); ``tile_size``, ``overlap`` and ``divisor`` then go unused. Without it the
    plan is made here from them."""
    spatial = tuple(int(s) for s in image.shape[:-1])
    if len(spatial) not in (2, 3):
        raise ValueError(f"expected a (Z,)Y,X,C image, got shape {tuple(image.shape)}")
    if plan is None:
        if tile_size is None:
            raise ValueError("sliding_window_predict needs a tile_size or a plan")
        plan = prediction_plan(spatial, tile_size, overlap, divisor, tta)
    elif plan.shape != spatial:
        raise ValueError(f"the tile plan is for an image of {plan.shape}, not {spatial}")
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
                y = tta_predict(forward, x) if tta else forward(x)
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
    out = zarr.open_array(
        store=str(path), mode="w", shape=shape, chunks=chunks, dtype=_labels_dtype(prob_zarr.shape[0]), fill_value=0
    )

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
