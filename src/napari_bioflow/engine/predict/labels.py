"""Class labels from blended probabilities: argmax over the class axis (or > 0.5 for one sigmoid channel), in
numpy, lazily over dask/zarr, or chunk by chunk from one zarr array into another."""

from __future__ import annotations

import numpy as np

from .chunk_writer import chunk_regions
from .memory_trim import _Trimmer


def _labels_dtype(n_channels: int):
    return np.uint8 if n_channels <= 256 else np.uint16


def argmax_labels(prob, threshold: float | None = None):
    """Class labels from (C, (Z,)Y,X) probabilities: argmax over C, or prob > 0.5 when C == 1 (sigmoid output);
    with a `threshold` (chosen on the validation data, stored in the checkpoint: engine/train/threshold.py), as
    `_classes` weighs the background. numpy in -> numpy out; dask or zarr in -> lazy dask out."""
    if type(prob).__module__.startswith("zarr"):
        import dask.array as da

        prob = da.from_zarr(prob)
    if type(prob).__module__.startswith("dask"):
        import dask.array as da

        # Channel axis in one chunk, so the argmax is a blockwise map (no cross-chunk reduction).
        prob = prob.rechunk({0: -1})
        dtype = _labels_dtype(prob.shape[0])
        return da.map_blocks(_argmax_block, prob, threshold=threshold, drop_axis=0, dtype=dtype)
    return _argmax_block(np.asarray(prob), threshold)


ARGMAX_SLAB = 2**20  # voxels per np.argmax call: its int64 result is 8 bytes per voxel


def _classes(p: np.ndarray, threshold: float | None) -> np.ndarray:
    """argmax over the class axis; with a threshold t, the background (class 0) weighed t / (1 - t) against the
    likeliest other class: that class where its share p_c / (p_0 + p_c) >= t (two classes: p_1 >= t)."""
    if threshold is None:
        return np.argmax(p, axis=0)
    fg = p[1:]
    best = np.max(fg, axis=0)
    return np.where(best >= threshold * (p[0] + best), np.argmax(fg, axis=0) + 1, 0)


def _argmax_block(p: np.ndarray, threshold: float | None = None) -> np.ndarray:
    if p.shape[0] == 1:
        return (p[0] > 0.5).astype(np.uint8)
    if threshold is not None and p.shape[0] == 2:  # _classes' rule for two classes, without its temporaries
        return (p[1] >= threshold).astype(np.uint8)
    out = np.empty(p.shape[1:], _labels_dtype(p.shape[0]))
    if out.ndim == 0 or out.size <= ARGMAX_SLAB:
        out[...] = _classes(p, threshold)
        return out
    step = max(1, ARGMAX_SLAB // int(np.prod(out.shape[1:])))  # slabs along the first spatial axis
    for a in range(0, out.shape[0], step):
        out[a : a + step] = _classes(p[:, a : a + step], threshold)
    return out


def write_labels_zarr(prob_zarr, path, threshold: float | None = None):
    """Chunk by chunk argmax of a (C, (Z,)Y,X) zarr array into a new zarr label array at ``path`` (or into the
    zarr array ``path`` is); `threshold` as in argmax_labels."""
    import zarr

    shape = tuple(prob_zarr.shape[1:])
    chunks = tuple(prob_zarr.chunks[1:])
    if hasattr(path, "shape"):  # an array made by the output writer: filled here
        out = path
    else:
        out = zarr.open_array(
            store=str(path), mode="w", shape=shape, chunks=chunks, dtype=_labels_dtype(prob_zarr.shape[0]), fill_value=0
        )

    def one(region) -> None:
        out[region] = _argmax_block(np.asarray(prob_zarr[(slice(None), *region)]), threshold)

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
