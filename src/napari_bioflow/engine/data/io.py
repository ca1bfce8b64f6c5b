"""Reading and writing images: TIFF, PNG, zarr, HDF5. Reads are lazy where the format allows (memory-mapped TIFF,
zarr, HDF5); the axes a file's metadata names (OME-TIFF, ImageJ, OME-Zarr) travel with the array (engine/data/axes.py)."""

from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path

import numpy as np

from ..errors import InputError

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".zarr", ".h5", ".hdf5")
IN_MEMORY_BYTES = 256 * 2**20


def is_image_path(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def given_image(path: Path) -> bool:
    """Whether `path` is one image rather than a folder of them: an image file, a .zarr store, an HDF5 file or a path
    inside one of these."""
    from .hdf5_image import hdf5_file_of
    from .zarr_image import zarr_store_of

    path = Path(path)
    if path.is_file():
        return is_image_path(path)
    store = zarr_store_of(path) or hdf5_file_of(path)
    return store is not None and store[0].exists()


def list_images(folder: Path, role: str = "image") -> list[Path]:
    """Image files (and .zarr stores) of a folder, sorted by name; a single image given instead of a folder is a
    list of one. Raises InputError on a missing or empty folder."""
    folder = Path(folder)
    if given_image(folder):  # one image where a folder is expected: a file, a zarr store or a path inside one
        return [folder]
    if folder.is_file():
        raise InputError(f"The {role} folder {folder} is a file, and not a TIFF, PNG, zarr or HDF5 image.")
    if not folder.is_dir():
        raise InputError(f"The {role} folder {folder} does not exist.")
    files = sorted(p for p in folder.iterdir() if is_image_path(p))
    if not files:
        others = [p.name for p in folder.iterdir() if not p.name.startswith(".")]
        hint = f" (it holds {len(others)} other file(s), e.g. {others[0]})" if others else ""
        raise InputError(f"The {role} folder {folder} holds no TIFF, PNG or zarr image or HDF5 file{hint}.")
    return files


def open_image(path: Path):
    """Open an image without loading it when possible: a numpy memmap, a zarr array or (small files) a numpy array.
    A zarr path may point inside its store (`group.zarr/raw`); engine/data/zarr_image.py says which array a group means."""
    from .hdf5_image import hdf5_file_of, open_hdf5_image
    from .zarr_image import open_zarr_image, zarr_store_of

    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix not in (".tif", ".tiff", ".png") and zarr_store_of(path) is not None:
            return open_zarr_image(path)
        if suffix not in (".tif", ".tiff", ".png") and hdf5_file_of(path) is not None:
            return open_hdf5_image(path)
        if suffix in (".tif", ".tiff"):
            import tifffile

            try:
                image = tifffile.memmap(str(path), mode="r")
            except Exception:  # compressed: small files are decoded on demand, big ones through a zarr view
                if path.stat().st_size < IN_MEMORY_BYTES:
                    image = LazyFile(path, tifffile.imread)
                else:
                    store = tifffile.imread(str(path), aszarr=True)
                    import zarr

                    arr = zarr.open(store, mode="r")
                    image = arr if hasattr(arr, "shape") else arr[sorted(arr.array_keys())[0]]
            if 0 in tuple(image.shape):  # a TIFF header with no image behind it "opens" as shape (0,)
                raise InputError(unreadable(path, None))
            from .axes import tag

            return tag(image, tiff_axes(path, tuple(image.shape)))
        if suffix == ".png":
            from skimage.io import imread

            return LazyFile(path, imread)
    except InputError:
        raise
    except Exception as e:
        raise InputError(unreadable(path, e)) from None
    raise InputError(f"File {path} is not a TIFF, PNG, zarr or HDF5 image.")


def tiff_axes(path: Path, shape: tuple) -> str | None:
    """The axes a TIFF's metadata states (OME, ImageJ, or tifffile's own with axes given), e.g. CZYX; None for a
    plain TIFF (tifffile's guesses, such as Q or planar S for a short first axis, are not metadata)."""
    import tifffile

    try:
        with tifffile.TiffFile(str(path)) as tif:
            series = tif.series[0]
            stated = tif.is_ome or tif.is_imagej or (tif.is_shaped and "axes" in (tif.shaped_metadata or [{}])[0])
            axes, own = series.axes, tuple(series.shape)
    except Exception:
        return None
    return axes if stated and own == shape and len(axes) == len(shape) else None


MAGIC = {"TIFF": (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"), "PNG": (b"\x89PNG\r\n\x1a\n",)}


def unreadable(path: Path, error: Exception | None) -> str:
    """Why a file cannot be read, in plain words: not that format at all, or a file of it that is truncated or
    damaged (a TIFF names the reader's reason too; a PNG reader's reasons are backend jargon)."""
    path = Path(path)
    fmt = "PNG" if path.suffix.lower() == ".png" else "TIFF" if path.suffix.lower() in (".tif", ".tiff") else ""
    if not fmt:
        reason = str(error).splitlines()[0] if error is not None and str(error) else type(error).__name__
        return f"File {path} cannot be read as an image: {reason}."
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        return f"File {path} cannot be read: {e.strerror or e}."
    if not head:
        return f"File {path} cannot be read as an image: the file is empty."
    if not head.startswith(MAGIC[fmt]):
        return f"File {path} cannot be read as an image: it is not a {fmt} file."
    reason = ""
    if fmt == "TIFF":
        why = str(error).splitlines()[0].rstrip(".") if error is not None and str(error) else "it holds no image data"
        reason = f" ({why})"
    return f"File {path} cannot be read as an image: the {fmt} file is truncated or damaged{reason}."


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

    from ..storage import check_free, discard, writing

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


def reserved_memmap(tmp: Path, shape, dtype, metadata=None, bigtiff: bool = False) -> np.memmap:
    """tifffile.memmap's new uncompressed TIFF, with its data's blocks allocated on disk before it is mapped: written
    through the mapping onto a full disk it would kill the process (SIGBUS); here the full disk is a DiskFull."""
    import mmap

    import tifffile

    from ..storage import check_free, reserve

    tmp, dtype = Path(tmp), np.dtype(dtype)
    shape = tuple(int(n) for n in shape)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    check_free(tmp.parent, nbytes, tmp.name.removesuffix(".part"))
    offset = tifffile.imwrite(
        str(tmp),
        data=None,
        shape=shape,
        dtype=dtype,
        imagej=False,
        metadata=metadata,
        bigtiff=bigtiff,
        align=mmap.ALLOCATIONGRANULARITY,
        returnoffset=True,
    )[0]
    fd = os.open(tmp, os.O_RDWR)
    try:
        reserve(fd, offset + nbytes, tmp.parent, tmp.name.removesuffix(".part"))
    finally:
        os.close(fd)
    return np.memmap(tmp, dtype, "r+", offset, shape, "C")


class TiffMemmap:
    """An uncompressed float TIFF filled region by region through a memory mapping, renamed into place by `close()`
    (atomic, as write_tiff); `drop_pages()` releases the written pages from this process's RSS (they stay in the
    page cache). For outputs computed chunk by chunk that never exist whole in RAM."""

    def __init__(self, path: Path, shape, axes: str | None = None, dtype=np.float32):
        from ..storage import discard, writing

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

    tifffile.imwrite(
        str(tmp),
        pages(),
        shape=shape,
        dtype=dtype,
        imagej=False,
        metadata=metadata,
        compression="zlib",
        bigtiff=bigtiff,
    )


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
