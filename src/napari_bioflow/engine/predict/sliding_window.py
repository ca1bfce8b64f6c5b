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

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

# the tile plan and the accumulators live in their own modules; their public names are this module's API too
from .accumulator import ZarrAccumulator, _LiveView, _NumpyAccumulator, _Trimmer, chunk_regions  # noqa: F401
from .labels import ARGMAX_SLAB, _argmax_block, _labels_dtype, argmax_labels, write_labels_zarr  # noqa: F401
from .tile_reader import (  # noqa: F401
    BAND_BYTES,
    _chunk_grid,
    _clip,
    _finish_tile,
    _Prefetch,
    _read_region,
    _read_tile,
    _TileReader,
)
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


class PredictionCancelled(Exception):
    """Raised by :func:`sliding_window_predict` when its ``cancel`` callback returned True."""


# --------------------------------------------------------------------------------------------------
# Prediction
# --------------------------------------------------------------------------------------------------
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
