"""Which dataset of an HDF5 file (.h5, .hdf5) is the image, read lazily: never a guess among several.

    file.h5                 the file's only dataset (wherever it sits in the file)
    file.h5/raw             a path inside the file (`file.h5/a/b` for nested groups): that dataset, or the only
                            dataset of that group

A file or group holding several datasets and no path is refused, listing them, with the path to give (the same
convention as zarr paths, engine/data/zarr_image.py). Reads open the file for each region asked for and close it
again: nothing is loaded whole, the array can be pickled (dask workers) and no handle stays open.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError

SUFFIXES = (".h5", ".hdf5")
SHOWN = 6  # dataset names listed in a message


def hdf5_file_of(path: Path) -> tuple[Path, str] | None:
    """(the HDF5 file, the path inside it) when `path` is an HDF5 file or a path inside one, else None."""
    path = Path(path)
    for candidate in (path, *path.parents):
        if candidate.suffix.lower() in SUFFIXES and (candidate == path or candidate.is_file()):
            return candidate, path.relative_to(candidate).as_posix() if candidate != path else ""
    return None


def _datasets(group) -> list[str]:
    import h5py

    found: list[str] = []
    group.visititems(lambda name, node: found.append(name) if isinstance(node, h5py.Dataset) else None)
    return sorted(found)


def _listed(names: list[str]) -> str:
    more = f" and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
    return ", ".join(names[:SHOWN]) + more


class HDF5Array:
    """An HDF5 dataset as an array-like (shape, dtype, chunks, slicing) that opens the file per read."""

    def __init__(self, file: Path, name: str, shape, dtype, chunks):
        self.file, self.name = str(file), name
        self.shape, self.dtype, self.ndim = tuple(shape), np.dtype(dtype), len(shape)
        # the dataset's own chunks; a contiguous one is read in blocks of at most 512 per long axis
        self.chunks = tuple(chunks) if chunks else tuple(n if n <= 64 else min(n, 512) for n in self.shape)

    def __getitem__(self, index):
        import h5py

        with h5py.File(self.file, "r") as f:
            return f[self.name][index]

    def __array__(self, dtype=None, copy=None):
        data = self[()]
        return data if dtype is None else data.astype(dtype)

    def __repr__(self) -> str:
        return f"HDF5Array({self.file}/{self.name}, shape={self.shape}, dtype={self.dtype})"


def open_hdf5_image(path: Path) -> HDF5Array:
    """The dataset `path` names (a file or a path inside one), as a lazy HDF5Array."""
    import h5py

    file, inner = hdf5_file_of(path)
    if not Path(file).is_file():
        raise InputError(f"The HDF5 file {file} does not exist.")
    try:
        f = h5py.File(str(file), "r")
    except OSError as e:
        raise InputError(f"File {file} cannot be read as an HDF5 image: {str(e).splitlines()[0]}.") from None
    with f:
        node = f
        if inner:
            if inner not in f:
                names = _datasets(f)
                raise InputError(
                    f"The HDF5 file {file} holds no dataset or group {inner}"
                    + (f"; its datasets: {_listed(names)}." if names else ".")
                )
            node = f[inner]
        if not isinstance(node, h5py.Dataset):
            names = _datasets(node)
            if not names:
                raise InputError(f"{path} holds no dataset.")
            if len(names) > 1:
                raise InputError(
                    f"{path} holds several datasets ({_listed(names)}): append the dataset to use to the path, "
                    f"e.g. {path}/{names[0]}."
                )
            node = node[names[0]]
        if node.dtype.kind not in "biuf" or node.ndim < 2:
            raise InputError(f"{path}: dataset {node.name} (shape {node.shape}, {node.dtype}) is not an image.")
        from .axes import tag

        axes = node.attrs.get("axes")
        axes = axes.decode() if isinstance(axes, bytes) else axes
        array = HDF5Array(file, node.name, node.shape, node.dtype, node.chunks)
        return tag(array, axes if isinstance(axes, str) and len(axes) == node.ndim else None)
