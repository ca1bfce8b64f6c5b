"""Reading a batch run's results back, lazily: its completion markers, dask arrays over the zarr arrays it wrote
(one per file, or stacked along a file axis) and over its input files. Nothing is loaded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .records import BATCH_DIR, DONE_DIR, FileRecord, read_record
from .task import open_channels_last


def finished_records(run_dir: Path) -> list[FileRecord]:
    """The completion markers of a batch run folder, in the order of the input folder's files."""
    folder = Path(run_dir) / BATCH_DIR / DONE_DIR
    if not folder.is_dir():
        return []
    records = [read_record(p) for p in folder.glob("*.json")]
    return sorted((r for r in records if r is not None), key=lambda r: r.name)


def lazy_results(run_dir: Path) -> dict[str, dict[str, Any]]:
    """{file name: {output name: dask array}} over the zarr arrays a batch run wrote (nothing is loaded)."""
    import dask.array as da

    out = {}
    for rec in finished_records(run_dir):
        arrays = {}
        for key, rel in rec.outputs.items():
            path = Path(run_dir) / rel
            if path.exists():
                arrays[key] = da.from_zarr(str(path))
        out[rec.name] = arrays
    return out


def stacked_results(run_dir: Path) -> tuple[list[str], dict[str, Any]]:
    """One dask array per output with a leading file axis, over the files whose output shapes agree with the
    first file's (the others are left out: open them with lazy_results). Returns (file names, arrays)."""
    import dask.array as da

    results = lazy_results(run_dir)
    if not results:
        return [], {}
    first = next(iter(results.values()))
    names = [
        n
        for n, arrays in results.items()
        if set(arrays) == set(first) and all(arrays[k].shape == first[k].shape for k in first)
    ]
    return names, {k: da.stack([results[n][k] for n in names]) for k in first}


def lazy_inputs(run_dir: Path, cfg) -> dict[str, Any]:
    """{file name: dask array (C, (Z,)Y,X)} over the input files of a batch run's finished results, unloaded."""
    from ..data.sources import lazy_array

    out = {}
    for rec in finished_records(run_dir):
        try:
            image = open_channels_last(rec.raw, cfg, rec.raw)
        except (InputError, OSError):
            continue  # moved or deleted since
        out[rec.name] = np.moveaxis(lazy_array(image), -1, 0)
    return out
