"""Reading the tiles of a plan from any image (numpy, memory-mapped TIFF, zarr, dask), by bands of chunked
images, one batch ahead on a thread (reading overlaps the forward pass)."""

from __future__ import annotations

import itertools
import queue
import threading

import numpy as np

from .tiling import TilePlan

# Largest input band (one row of tiles across the last axis) read at once from a chunked (zarr / dask)
# image; above it, or for unchunked arrays (numpy, memory-mapped TIFF), tiles are read one by one.
BAND_BYTES = 128 * 2**20


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
