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


def write_tiff(path: Path, data: np.ndarray, axes: str | None = None) -> Path:
    """Write a TIFF atomically (temporary file then rename) so a half-written file never looks finished."""
    import tifffile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    metadata = {"axes": axes} if axes else None
    data = np.asarray(data)
    # zlib shrinks labels ~15x but float maps only ~2x, at ~1.5 s per 2048x2048x2 float32 map (12% of a whole
    # prediction there: benchmarks/bench_predict.py), so floats are stored uncompressed
    compression = "zlib" if data.dtype.kind in "biu" else None
    tifffile.imwrite(str(tmp), data, imagej=False, metadata=metadata, compression=compression)
    os.replace(tmp, path)
    return path


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
