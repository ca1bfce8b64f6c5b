"""Post-processing of predicted labels (BiaPy's, for 3D: median filters along Z, or over Y and Z), written beside the
labels, never over them (per_image_post_processing/, full_post_processing/), with IoU before and after.

A 3D volume is filtered chunk by chunk with enough overlap to be exact; 2D images are filtered as one 3D stack
(`predict.stack_2d`: the images of a folder in file-name order, as BiaPy's "analyze 2D images as a 3D stack"). A
filter that cannot apply is said in one sentence (a note), never skipped silently."""

from __future__ import annotations

from typing import Any

import numpy as np


def filter_sizes(cfg) -> tuple[int, int] | None:
    """(z, yz) median filter sizes when a filter is set, else None."""
    z, yz = int(cfg.predict.z_filter), int(cfg.predict.yz_filter)
    return (z, yz) if z > 1 or yz > 1 else None


def filters_for(cfg, shape) -> tuple[tuple[int, int] | None, str]:
    """The filters to apply to one predicted label volume of `shape`, and a note when set filters do not apply to
    it (2D images are filtered as a stack after the folder, not one by one)."""
    sizes = filter_sizes(cfg)
    if sizes is None or cfg.ndim == 2:
        return None, ""
    if shape[0] == 1:
        return None, "predict.z_filter/yz_filter not applied: the volume has a single Z plane."
    return sizes, ""


def filter_labels(labels, out, z_size: int, yz_size: int):
    """Median filters of a zarr label volume into the zarr array `out`, chunk by chunk with overlap (exact)."""
    import dask.array as da

    from ..workflows.semantic import median_filter_labels

    depth = {0: max(z_size, yz_size) // 2 + 1, 1: yz_size // 2 + 1, 2: 0}
    lazy = da.from_zarr(labels).map_overlap(
        median_filter_labels, depth=depth, boundary="reflect", z_size=z_size, yz_size=yz_size, dtype=labels.dtype
    )
    da.store(lazy, out, lock=False)
    return out


def stack_2d(cfg, out_dir, done: list[tuple[Any, Any, str]]) -> tuple[dict[str, dict], list[str]]:
    """BiaPy's "analyze 2D images as a 3D stack": the labels of the 2D images `done` ((ImageResult, target reader or
    None, stem) in file-name order) of the most common shape filtered as one (N, Y, X) stack, each slice written
    through its writer to post-processing; returns ({image name: metrics after filtering (with '_counts')}, notes)."""
    from ..workflows.semantic import _iou, median_filter_labels
    from .writer import OutputWriter

    sizes = filter_sizes(cfg)
    if sizes is None or cfg.ndim != 2 or not cfg.predict.stack_2d:
        return {}, []
    usable = [d for d in done if "labels" in d[0].outputs]
    if len(usable) < 2:
        return {}, ["predict.z_filter/yz_filter not applied: stacking 2D images (predict.stack_2d) needs two or more."]
    shapes = [tuple(d[0].outputs["labels"].shape) for d in usable]
    common = max(set(shapes), key=shapes.count)
    notes = []
    left = [d[0].name for d, s in zip(usable, shapes) if s != common]
    if left:
        notes.append(
            f"predict.z_filter/yz_filter not applied to {', '.join(left)}: not of the stack's shape "
            f"{'x'.join(map(str, common))}."
        )
    usable = [d for d, s in zip(usable, shapes) if s == common]
    stack = np.stack([np.asarray(d[0].outputs["labels"][:]) for d in usable])
    filtered = median_filter_labels(stack, *sizes)
    after: dict[str, dict] = {}
    for (result, target, stem), plane in zip(usable, filtered):
        writer = OutputWriter(cfg, out_dir, stem)
        arr = writer.create(
            "labels_post_processed",
            "post_processing",
            plane.shape,
            plane.shape,
            plane.dtype,
            store_name="labels_post_processing",
            labels=True,
        )
        arr[...] = plane
        writer.tiff("labels_post_processed", "post_processing", arr)
        writer.finish(labels_keys=("labels_post_processed",))
        result.outputs["labels_post_processed"] = arr
        for key, paths in writer.paths().items():
            result.paths.setdefault(key, []).extend(paths)
        if target is not None:
            iou = _iou(arr, target, cfg.n_classes)
            after[result.name] = {
                **{f"{k}_post_processing": v for k, v in iou["metrics"].items()},
                "_counts": iou["counts"],
            }
    return after, notes
