"""Reading and writing images: TIFF, PNG, zarr. Reads are lazy where the format allows (memory-mapped TIFF, zarr)."""
from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path

import numpy as np

from .errors import InputError

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".zarr")
IN_MEMORY_BYTES = 256 * 2**20


def is_image_path(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def list_images(folder: Path, role: str = "image") -> list[Path]:
    """Image files (and .zarr stores) of a folder, sorted by name. Raises InputError on a missing or empty folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"The {role} folder {folder} does not exist.")
    files = sorted(p for p in folder.iterdir() if is_image_path(p))
    if not files:
        others = [p.name for p in folder.iterdir() if not p.name.startswith(".")]
        hint = f" (it holds {len(others)} other file(s), e.g. {others[0]})" if others else ""
        raise InputError(f"The {role} folder {folder} holds no TIFF, PNG or zarr image{hint}.")
    return files


def open_image(path: Path):
    """Open an image without loading it when possible: a numpy memmap, a zarr array or (small files) a numpy array."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".zarr":
            import zarr

            node = zarr.open(str(path), mode="r")
            if not hasattr(node, "shape"):  # a group: take its first array (OME-Zarr keeps the full resolution at "0")
                names = sorted(node.array_keys())
                if not names:
                    raise InputError(f"{path} is a zarr group with no array.")
                node = node[names[0]]
            return node
        if suffix in (".tif", ".tiff"):
            import tifffile

            try:
                return tifffile.memmap(str(path), mode="r")
            except Exception:  # compressed: small files are decoded on demand, big ones through a zarr view
                if path.stat().st_size < IN_MEMORY_BYTES:
                    return LazyFile(path, tifffile.imread)
                store = tifffile.imread(str(path), aszarr=True)
                import zarr

                arr = zarr.open(store, mode="r")
                return arr if hasattr(arr, "shape") else arr[sorted(arr.array_keys())[0]]
        if suffix == ".png":
            from skimage.io import imread

            return LazyFile(path, imread)
    except InputError:
        raise
    except Exception as e:
        raise InputError(f"File {path} cannot be read as an image: {str(e).splitlines()[0] if str(e) else type(e).__name__}.") from None
    raise InputError(f"File {path} is not a TIFF, PNG or zarr image.")


@functools.lru_cache(maxsize=8)
def _decoded(path: str, reader) -> np.ndarray:
    return np.asarray(reader(path))


class LazyFile:
    """A compressed file decoded only when read, through a small cache: a folder of many images never sits in
    RAM at once, and patch sampling re-decodes at most the few files it is drawing from."""

    def __init__(self, path: Path, reader):
        self.path, self.reader = str(path), reader
        data = np.asarray(reader(self.path))  # decode once now so an unreadable file fails before training
        self.shape, self.dtype, self.ndim = data.shape, data.dtype, data.ndim

    def __getitem__(self, index):
        return _decoded(self.path, self.reader)[index]

    def __array__(self, dtype=None, copy=None):
        data = _decoded(self.path, self.reader)
        return data if dtype is None else data.astype(dtype)


TIFF_SLAB_BYTES = 64 * 2**20  # planes read at once when a TIFF is written from a zarr / dask array


def write_tiff(path: Path, data, axes: str | None = None) -> Path:
    """Write a TIFF atomically (temporary file then rename) so a half-written file never looks finished.

    Integer images (labels) are zlib-compressed (~15x smaller); float maps are stored uncompressed (zlib shrinks
    them only ~2x, at ~1.5 s per 2048x2048x2 float32 map: benchmarks/bench_predict.py). `data` may be a zarr or
    dask array: it is then streamed, never loaded whole (floats chunk by chunk into a memory-mapped TIFF, integers
    plane by plane), so memory stays a few chunks whatever the image size; BigTIFF beyond 4 GB."""
    import tifffile

    path = Path(path)
    tmp = path.with_name(path.name + ".part")
    metadata = {"axes": axes} if axes else None
    with writing(path.parent, path.name):  # a full disk: one sentence naming the folder, no .part left
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            if isinstance(data, np.ndarray) or not hasattr(data, "shape") or len(data.shape) < 3:
                data = np.asarray(data)
                compression = "zlib" if data.dtype.kind in "biu" else None
                if compression is None:  # uncompressed: its size is known
                    check_free(path.parent, data.nbytes, path.name)
                tifffile.imwrite(str(tmp), data, imagej=False, metadata=metadata, compression=compression)
            else:
                _stream_tiff(tmp, data, metadata)
            os.replace(tmp, path)
        except BaseException:
            discard(tmp)
            raise
    return path


class TiffMemmap:
    """An uncompressed float TIFF filled region by region through a memory mapping, renamed into place by `close()`
    (atomic, as write_tiff); `drop_pages()` releases the written pages from this process's RSS (they stay in the
    page cache). For outputs computed chunk by chunk that never exist whole in RAM."""

    def __init__(self, path: Path, shape, axes: str | None = None, dtype=np.float32):
        from .storage import discard, writing

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(self.path.name + ".part")
        bigtiff = int(np.prod(shape)) * np.dtype(dtype).itemsize > 2**32 - 2**25
        with writing(self.path.parent, self.path.name):
            try:
                self.array = reserved_memmap(self.tmp, shape, dtype, {"axes": axes} if axes else None, bigtiff)
            except BaseException:
                discard(self.tmp)
                raise

    def __setitem__(self, key, value) -> None:
        self.array[key] = value

    def drop_pages(self) -> None:
        self.array.flush()
        _drop_mapped_pages(self.array)

    def close(self) -> Path:
        self.array.flush()
        del self.array
        os.replace(self.tmp, self.path)
        return self.path

    from .storage import check_free, discard, writing


def _stream_tiff(tmp: Path, data, metadata) -> None:
    import tifffile

    shape, dtype = tuple(int(n) for n in data.shape), np.dtype(data.dtype)
    bigtiff = int(np.prod(shape)) * dtype.itemsize > 2**32 - 2**25
    if dtype.kind not in "biu":  # floats: uncompressed, so every source chunk goes straight to its place in the file
        out = reserved_memmap(tmp, shape, dtype, metadata, bigtiff)  # space first: no SIGBUS on a full disk
        try:
            written = 0
            for region in _source_blocks(data):
                block = data[region]
                out[region] = block.compute() if hasattr(block, "compute") else np.asarray(block)
                written += out[region].nbytes
def reserved_memmap(tmp: Path, shape, dtype, metadata=None, bigtiff: bool = False) -> np.memmap:
    """tifffile.memmap's new uncompressed TIFF, with its data's blocks allocated on disk before it is mapped: written
    through the mapping onto a full disk it would kill the process (SIGBUS); here the full disk is a DiskFull."""
    import mmap

    import tifffile

    from .storage import check_free, reserve

    tmp, dtype = Path(tmp), np.dtype(dtype)
    shape = tuple(int(n) for n in shape)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    check_free(tmp.parent, nbytes, tmp.name.removesuffix(".part"))
    offset = tifffile.imwrite(str(tmp), data=None, shape=shape, dtype=dtype, imagej=False, metadata=metadata,
                              bigtiff=bigtiff, align=mmap.ALLOCATIONGRANULARITY, returnoffset=True)[0]
    fd = os.open(tmp, os.O_RDWR)
    try:
        reserve(fd, offset + nbytes, tmp.parent, tmp.name.removesuffix(".part"))
    finally:
        os.close(fd)
    return np.memmap(tmp, dtype, "r+", offset, shape, "C")


                if written >= TIFF_SLAB_BYTES:  # the mapped pages stay in the page cache, not in this process
                    out.flush()
                    _drop_mapped_pages(out)
                    written = 0
            out.flush()
        finally:
            del out
        return
    plane = int(np.prod(shape[-2:])) * dtype.itemsize
    lead = shape[:-2]
    depth = max(1, min(lead[-1], TIFF_SLAB_BYTES // max(plane, 1)))

    def pages():
        for index in np.ndindex(*lead[:-1]):
            for a in range(0, lead[-1], depth):
                slab = data[(*index, slice(a, a + depth))]
                slab = slab.compute() if hasattr(slab, "compute") else np.asarray(slab)
                yield from slab

    tifffile.imwrite(str(tmp), pages(), shape=shape, dtype=dtype, imagej=False, metadata=metadata,
                     compression="zlib", bigtiff=bigtiff)


def _source_blocks(data):
    """Regions of the chunks of a zarr or dask array (the whole array when it has no chunks)."""
    import itertools

    chunks = getattr(data, "chunks", None)
    if not chunks:
        yield tuple(slice(0, n) for n in data.shape)
        return
    per_axis = []
    for c, n in zip(chunks, data.shape):
        sizes = list(c) if isinstance(c, (tuple, list)) else [min(int(c), int(n) - o) for o in range(0, int(n), int(c))]
        edges = np.cumsum([0, *sizes]).tolist()
        per_axis.append([slice(a, b) for a, b in zip(edges, edges[1:])])
    yield from itertools.product(*per_axis)


def _drop_mapped_pages(mm) -> None:
    import mmap

    m = getattr(mm, "_mmap", None)
    if m is not None and hasattr(m, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
        m.madvise(mmap.MADV_DONTNEED)


def check_writable(folder: Path) -> None:
    """Raise InputError unless `folder` (or its nearest existing parent) can be written to."""
    folder = Path(folder).absolute()
    probe = folder
    while not probe.exists():
        probe = probe.parent
    # access() lies for root, so really try to create a file there
    try:
        if not probe.is_dir():
            raise OSError
        fd, tmp = tempfile.mkstemp(dir=probe, prefix=".bioflow-write-test")
        os.close(fd)
        os.unlink(tmp)
    except OSError:
        raise InputError(f"The output folder {folder} is not writable.") from None
