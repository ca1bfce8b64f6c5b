"""Semantic segmentation: a class per pixel/voxel; softmax probabilities, argmax labels, IoU."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..train.metrics import IoUAccumulator
from .base import Workflow, register_workflow
from .spec import Output


def _min_max(arr) -> tuple[int, int]:
    if hasattr(arr, "compute"):
        import dask

        lo, hi = dask.compute(arr.min(), arr.max())
    else:
        lo, hi = arr.min(), arr.max()
    return int(lo), int(hi)


def check_label(label, name: str, spatial_shape: tuple[int, ...], n_classes: int, notes: list[str]) -> bool:
    """Check a label image's shape and values; return True when it is a 0/255 binary mask read as 0/1."""
    if tuple(label.shape) != tuple(spatial_shape):
        raise InputError(
            f"{name} has shape {'x'.join(map(str, label.shape))} but its raw image has "
            f"{'x'.join(map(str, spatial_shape))}."
        )
    if np.issubdtype(label.dtype, np.floating):
        frac = label != np.floor(label)
        frac = frac.any()
        if bool(frac.compute() if hasattr(frac, "compute") else frac):
            raise InputError(f"{name} holds non-integer values: labels must be integer classes.")
    lo, hi = _min_max(label)
    if lo < 0:
        raise InputError(f"{name} holds negative label values (min {lo}).")
    if hi < n_classes:
        return False
    if n_classes == 2 and hi == 255:
        values = np.unique(np.asarray(label))
        if set(values.tolist()) <= {0, 255}:
            notes.append(f"{name} is a 0/255 binary mask: read as 0 = background, 1 = foreground.")
            return True
    raise InputError(
        f"{name} holds label value {hi}, but there are only {n_classes} classes "
        f"(values 0 to {n_classes - 1}); set n_classes."
    )


class SegmentationMetrics:
    def __init__(self, n_classes: int):
        self.acc = IoUAccumulator(n_classes)

    def update(self, prediction: np.ndarray, target: np.ndarray) -> None:
        self.acc.update(prediction.argmax(1), target)

    def compute(self) -> dict[str, float]:
        return self.acc.compute()


def median_filter_labels(labels: np.ndarray, z_size: int, yz_size: int) -> np.ndarray:
    """BiaPy's 3D post-processing: median filtering of the labels along Z, or over Y and Z."""
    from scipy.ndimage import median_filter

    if z_size > 1:
        labels = median_filter(labels, size=(z_size, 1, 1))
    if yz_size > 1:
        labels = median_filter(labels, size=(yz_size, yz_size, 1))
    return labels


@register_workflow
class SemanticSegmentation(Workflow):
    name = "semantic_segmentation"
    order = 0
    title = "semantic segmentation"
    trains_from = "labels"
    losses = ("auto", "ce", "ce_dice")
    excluded_model_tags = ("masked_autoencoder", "restoration")
    prediction_options_3d = ("z_filter", "yz_filter")
    target_layer = "labels"
    outputs = (
        Output(
            "probabilities", "probabilities", colormap="magma", contrast="unit", live=True, class_axis=True, opacity=0.7
        ),
        Output("labels", "labels", layer="labels", live=True, opacity=0.5),
    )
    metric_keys = ("iou_foreground", "iou_mean")
    chart_metric = "iou_foreground"
    chart_title = "validation IoU"
    init_notes = (
        (
            "Pairs: each raw image in data.train_raw has its labels (same size, one integer class per pixel, "
            "0 = background)"
        ),
        "in data.train_label, paired by file name. Test labels (data.test_label) give IoU.",
        "Results: per_image/ (probabilities), per_image_binarized/ (labels), metrics.csv.",
    )

    def out_channels(self, cfg) -> int:
        return cfg.n_classes

    def check_target(self, target, name, spatial_shape, cfg, notes) -> dict[str, Any]:
        return {"label_is_255": check_label(target, name, spatial_shape, cfg.n_classes, notes)}

    def read_target(self, sample, sl, x) -> np.ndarray:
        return sample.read_label(sl)

    def loss(self, cfg):
        import torch.nn.functional as F

        def ce(logits, target):
            return F.cross_entropy(logits, target)

        def ce_dice(logits, target):
            prob = logits.softmax(1)
            onehot = F.one_hot(target, logits.shape[1]).movedim(-1, 1).to(prob.dtype)
            dims = tuple(range(2, logits.ndim))
            inter = (prob * onehot).sum(dims)
            dice = (2 * inter + 1) / (prob.sum(dims) + onehot.sum(dims) + 1)
            return F.cross_entropy(logits, target) + (1 - dice.mean())

        return ce if cfg.train.loss == "ce" else ce_dice  # auto: cross-entropy + Dice (benchmarks/bench_quality.py)

    def activation(self, logits):
        return logits.softmax(1)

    def metrics(self, cfg):
        return SegmentationMetrics(cfg.n_classes)

    def write_outputs(
        self, prediction, store: Path, out_dir: Path, stem: str, cfg, target=None, inputs=None
    ) -> dict[str, Any]:
        """prediction: (C, (Z,)Y,X) probabilities (zarr). Writes labels into the store chunk by chunk, TIFFs when
        they fit, and IoU against `target` read chunk by chunk too, so huge volumes never load whole."""
        from ..data.io import write_tiff
        from ..predict.accumulator import chunk_regions
        from ..predict.sliding_window import write_labels_zarr

        labels = write_labels_zarr(prediction, store / "labels")
        if cfg.ndim == 3 and (cfg.predict.z_filter > 1 or cfg.predict.yz_filter > 1):
            labels = _filter_zarr(labels, store / "labels_filtered", cfg.predict.z_filter, cfg.predict.yz_filter)
        axes = "ZYX" if cfg.ndim == 3 else "YX"
        out: dict[str, Any] = {"probabilities": prediction, "labels": labels}
        if cfg.predict.save_tiff and prediction.nbytes <= TIFF_MAX_BYTES:
            # the zarr arrays themselves: write_tiff streams them chunk by chunk, so memory stays a few chunks
            write_tiff(out_dir / "per_image" / f"{stem}.tif", prediction, "C" + axes)
            write_tiff(out_dir / "per_image_binarized" / f"{stem}.tif", labels, axes)
        if target is not None:
            acc = IoUAccumulator(cfg.n_classes)
            for region in chunk_regions(labels.shape, labels.chunks):
                acc.update(np.asarray(labels[region]), target(region))
            out["metrics"] = acc.compute()
            out["counts"] = (acc.inter, acc.union)
            from ..train.metrics import patch_iou

            out["metrics"].update(patch_iou(labels, target, cfg.n_classes, cfg.data.patch_size))  # per patch
        return out


# TIFFs are streamed, so this bounds disk and time, not memory: beyond it the zarr store alone is the result
# (a second multi-GB copy of the probabilities is rarely wanted, and most TIFF readers would load it whole)
TIFF_MAX_BYTES = 2 * 2**30


def _filter_zarr(labels, path: Path, z_size: int, yz_size: int):
    """Median filters over a zarr label volume, chunk by chunk with enough overlap to be exact."""
    import dask.array as da

    depth = {0: max(z_size, yz_size) // 2 + 1, 1: yz_size // 2 + 1, 2: 0}
    lazy = da.from_zarr(labels).map_overlap(
        median_filter_labels, depth=depth, boundary="reflect", z_size=z_size, yz_size=yz_size, dtype=labels.dtype
    )
    lazy.to_zarr(str(path), overwrite=False)
    import zarr

    return zarr.open_array(store=str(path), mode="r")
