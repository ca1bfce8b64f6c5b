"""The one writer of a predicted image's outputs, chosen by the config (`predict.output_format`, `predict.save_tiff`,
`predict.full_image`): every array and file a workflow writes for an image goes through it, and it returns their
paths (the batch's completion markers record them; nothing rescans folders).

Folders, as BiaPy's pages name them (tiled / `predict.full_image`):
  "image"            per_image/              full_image/            probabilities, restored images (TIFF)
  "binarized"        per_image_binarized/    full_image_binarized/  labels (TIFF)
  "post_processing"  per_image_post_processing/  full_post_processing/  filtered labels (TIFF)
  anything else      that folder itself (degraded/, MAE_checks/, a workflow's own)

Formats:
  zarr      the image's zarr store <image folder>/<stem>.zarr holds every array (prediction, labels, image,
            labels_post_processed): today's layout;
  ome-zarr  one OME-Zarr image per output, <folder>/<stem>.ome.zarr (engine/predict/ome_zarr.py), with the input's
            physical scale; the store keeps only the working arrays that are no output (a restoration's normalized
            prediction).
TIFFs follow `predict.save_tiff` in both formats, up to TIFF_MAX_BYTES (streamed from the arrays).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from .scale import PhysicalScale

FOLDERS = {
    False: {"image": "per_image", "binarized": "per_image_binarized", "post_processing": "per_image_post_processing"},
    True: {"image": "full_image", "binarized": "full_image_binarized", "post_processing": "full_post_processing"},
}
FORMATS = ("zarr", "ome-zarr")
# TIFFs are streamed, so this bounds disk and time, not memory: beyond it the zarr arrays alone are the result
# (a second multi-GB copy of the probabilities is rarely wanted, and most TIFF readers would load it whole)
TIFF_MAX_BYTES = 2 * 2**30


class OutputWriter:
    """Writes the outputs of one image `stem` into the run's results folder `out_dir` (see the module's text)."""

    def __init__(self, cfg, out_dir: Path, stem: str, scale: PhysicalScale | None = None):
        self.cfg, self.out_dir, self.stem = cfg, Path(out_dir), stem
        self.format = getattr(cfg.predict, "output_format", "zarr")
        self.full = bool(getattr(cfg.predict, "full_image", False))
        self.ndim = cfg.ndim
        self.scale = scale or PhysicalScale.unit_less(cfg.ndim)
        self.store = self.out_dir / FOLDERS[self.full]["image"] / f"{stem}.zarr"
        self.arrays: dict[str, Path] = {}  # output key -> the zarr array (or OME-Zarr image) written
        self.files: dict[str, list[Path]] = {}  # output key -> files (TIFFs, checks)

    @property
    def ome(self) -> bool:
        return self.format == "ome-zarr"

    @property
    def spatial_axes(self) -> str:
        return "ZYX" if self.ndim == 3 else "YX"

    def folder(self, role: str) -> Path:
        return self.out_dir / FOLDERS[self.full].get(role, role)

    def ome_path(self, role: str) -> Path:
        return self.folder(role) / f"{self.stem}.ome.zarr"

    # --- arrays ----------------------------------------------------------------------------------------------
    def prediction_path(self, as_output: str | None, shape, labels: bool = False) -> Path:
        """Where the blended prediction (C, ...) is written tile by tile: in OME-Zarr, straight into the image of the
        output it is (`as_output`: the key of an Output of the prediction itself, e.g. probabilities), else the
        working store's `prediction` array."""
        if self.ome and as_output:
            from .ome_zarr import create_group

            path = self.ome_path("image")
            path.parent.mkdir(parents=True, exist_ok=True)
            create_group(path, as_output, self.ndim, True, self.scale, labels)
            self.arrays[as_output] = path
            return path / "0"
        return self.store / "prediction"

    def create(self, key: str, role: str, shape, chunks, dtype, *, store_name: str = "", labels: bool = False):
        """A new empty array of output `key` to fill chunk by chunk: `store_name` in the zarr store, or the OME-Zarr
        image of folder `role`. A leading channel axis when len(shape) > ndim."""
        import zarr

        channel = len(shape) > self.ndim
        if self.ome:
            from .ome_zarr import create_image

            path = self.ome_path(role)
            path.parent.mkdir(parents=True, exist_ok=True)
            arr = create_image(path, key, shape, chunks, dtype, channel, self.scale, labels)
            self.arrays[key] = path
            return arr
        path = self.store / (store_name or key)
        arr = zarr.open_array(store=str(path), mode="w", shape=shape, chunks=chunks, dtype=dtype, fill_value=0)
        self.arrays[key] = path
        return arr

    def adopt(self, key: str, role: str, array, labels: bool = False):
        """Output `key` is an array written already (the blended prediction): recorded where it is; in OME-Zarr, copied
        chunk by chunk into its image unless it was written there (prediction_path)."""
        from .accumulator import chunk_regions

        if not self.ome or key in self.arrays:
            self.arrays.setdefault(key, _zarr_path(array) or self.store / "prediction")
            return array
        out = self.create(key, role, array.shape, array.chunks, array.dtype, labels=labels)
        for region in chunk_regions(array.shape, array.chunks):
            out[region] = array[region]
        return out

    # --- files -----------------------------------------------------------------------------------------------
    def tiff(self, key: str, role: str, array, channel: bool | None = None, name: str = "") -> Path | None:
        """The TIFF of output `key` in folder `role` when predict.save_tiff is on and it fits TIFF_MAX_BYTES
        (streamed from a zarr array); None when not written."""
        from ..data.io import write_tiff

        if not self.cfg.predict.save_tiff or array.nbytes > TIFF_MAX_BYTES:
            return None
        channel = len(array.shape) > self.ndim if channel is None else channel
        path = self.folder(role) / (name or f"{self.stem}.tif")
        write_tiff(path, array, ("C" if channel else "") + self.spatial_axes)
        return self.record(key, path)

    def file(self, key: str, role: str, name: str = "") -> Path:
        """The path of a file of output `key` in folder `role` that the workflow writes itself (recorded)."""
        path = self.folder(role) / (name or f"{self.stem}.tif")
        path.parent.mkdir(parents=True, exist_ok=True)
        return self.record(key, path)

    def record(self, key: str, path: Path) -> Path:
        self.files.setdefault(key, []).append(Path(path))
        return Path(path)

    def finish(self, labels_keys=()) -> dict[str, list[Path]]:
        """Lower resolution levels of the OME-Zarr images (labels by every other pixel), then every path written,
        by output key (arrays first)."""
        if self.ome:
            from .ome_zarr import add_levels

            for key, path in self.arrays.items():
                if path.name.endswith(".ome.zarr"):
                    add_levels(path, labels=key in labels_keys)
        return self.paths()

    def paths(self) -> dict[str, list[Path]]:
        out: dict[str, list[Path]] = {}
        for key, path in self.arrays.items():
            out.setdefault(key, []).append(path)
        for key, files in self.files.items():
            out.setdefault(key, []).extend(files)
        return out


def _zarr_path(arr) -> Path | None:
    store = getattr(arr, "store", None)
    root = getattr(store, "root", None)
    if root is None:
        return None
    return Path(root) / (getattr(arr, "path", "") or "")


def writer_of(inputs: dict[str, Any] | None, cfg, out_dir: Path, stem: str) -> OutputWriter:
    """The writer ImagePrediction hands a workflow's write_outputs in `inputs`, or a new one (a caller without one)."""
    writer = (inputs or {}).get("writer")
    return writer if writer is not None else OutputWriter(cfg, out_dir, stem)


def partial_outputs(run_dir: Path, stem: str) -> list[Path]:
    """What an unfinished prediction of `stem` may have left in a run folder (its zarr stores and OME-Zarr images),
    so a redo starts clean."""
    out = []
    for full in (False, True):
        for role, folder in FOLDERS[full].items():
            if role == "image":
                out.append(Path(run_dir) / folder / f"{stem}.zarr")
            out.append(Path(run_dir) / folder / f"{stem}.ome.zarr")
    return out


def remove_partial(run_dir: Path, stem: str) -> None:
    for path in partial_outputs(run_dir, stem):
        shutil.rmtree(path, ignore_errors=True)
