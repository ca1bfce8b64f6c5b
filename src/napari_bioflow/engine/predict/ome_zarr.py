"""OME-Zarr (NGFF 0.5 on zarr v3) images of prediction outputs: a group whose `ome` attributes hold the multiscales
(axes with their types and units, a scale per resolution level) and arrays `0`, `1`, ... (full resolution first).

The full resolution is created empty, then filled chunk by chunk (the sliding window's accumulator writes the
probabilities straight into it); the lower levels are added at the end from it, chunk by chunk through dask (halved
in Y and X: the mean for images, every other pixel for labels), so nothing is loaded whole. The project's reader
(engine/data/zarr_image.py) and napari's open the group; other NGFF readers read the same metadata."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .scale import PhysicalScale

NGFF_VERSION = "0.5"
PYRAMID_MIN = 1024  # lower levels are added while the largest of Y and X is above this


def axes(ndim: int, channel: bool, unit: str | None) -> list[dict]:
    """NGFF axes: c (channel) when the image has a leading channel axis, then (z,) y, x (space, with the unit)."""
    out = [{"name": "c", "type": "channel"}] if channel else []
    for name in "zyx"[-ndim:]:
        out.append({"name": name, "type": "space", **({"unit": unit} if unit else {})})
    return out


def _metadata(name: str, ndim: int, channel: bool, scale: PhysicalScale, levels: int, labels: bool) -> dict:
    datasets = []
    for level in range(levels):
        factor = [1.0] * (ndim - 2) + [2.0**level] * 2  # Y and X halve per level; Z keeps its size
        values = [v * f for v, f in zip(scale.values, factor)]
        datasets.append(
            {
                "path": str(level),
                "coordinateTransformations": [{"type": "scale", "scale": ([1.0] if channel else []) + values}],
            }
        )
    ome: dict = {
        "version": NGFF_VERSION,
        "multiscales": [{"name": name, "axes": axes(ndim, channel, scale.unit), "datasets": datasets}],
    }
    if labels:
        ome["image-label"] = {"version": NGFF_VERSION}
    return {"ome": ome}


def create_group(path: Path, name: str, ndim: int, channel: bool, scale: PhysicalScale, labels: bool = False) -> Path:
    """The group of a new OME-Zarr image with its metadata for one level; its array `0` is made by the caller (an
    accumulator) or by create_image. Refuses an existing path: results are never overwritten."""
    import zarr

    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} already exists")
    group = zarr.open_group(str(path), mode="w-", zarr_format=3)
    group.attrs.update(_metadata(name, ndim, channel, scale, 1, labels))
    return path


def create_image(
    path: Path,
    name: str,
    shape,
    chunks,
    dtype,
    channel: bool,
    scale: PhysicalScale,
    labels: bool = False,
):
    """A new OME-Zarr image at `path` with an empty full-resolution array `0` (returned) to fill chunk by chunk."""
    import zarr

    from .accumulator import _fast_codec

    ndim = len(shape) - (1 if channel else 0)
    create_group(path, name, ndim, channel, scale, labels)
    return zarr.create_array(
        store=str(Path(path) / "0"),
        shape=tuple(int(s) for s in shape),
        chunks=tuple(int(c) for c in chunks),
        dtype=dtype,
        fill_value=0,
        compressors=_fast_codec(),
    )


def add_levels(path: Path, labels: bool = False, min_size: int = PYRAMID_MIN) -> int:
    """Add lower resolution levels to the OME-Zarr image at `path` (halving Y and X while the larger of them is above
    `min_size`) and update its multiscales; returns the number of levels. Chunk by chunk, never whole in memory."""
    import dask.array as da
    import zarr

    group = zarr.open_group(str(path), mode="r+")
    ome = dict(group.attrs["ome"])
    ms = ome["multiscales"][0]
    channel = ms["axes"][0]["type"] == "channel"
    ndim = len(ms["axes"]) - (1 if channel else 0)
    level = da.from_zarr(group["0"])
    levels = 1
    while max(level.shape[-2:]) > min_size:
        if labels:
            level = level[..., ::2, ::2]
        else:
            axes_ = {level.ndim - 2: 2, level.ndim - 1: 2}
            level = da.coarsen(np.mean, level, axes_, trim_excess=True).astype(level.dtype)
        level = level.rechunk(group["0"].chunks)
        level.to_zarr(str(Path(path) / str(levels)), overwrite=False)
        level = (
            da.from_zarr(group[str(levels)]) if str(levels) in group else da.from_zarr(str(Path(path) / str(levels)))
        )
        levels += 1
    scale = PhysicalScale(
        tuple(ms["datasets"][0]["coordinateTransformations"][0]["scale"][1 if channel else 0 :]),
        next((a.get("unit") for a in ms["axes"] if a["type"] == "space"), None),
    )
    group.attrs.update(_metadata(ms.get("name", ""), ndim, channel, scale, levels, labels))
    return levels
