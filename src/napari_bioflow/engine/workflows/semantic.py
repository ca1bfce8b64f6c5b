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
    prediction_options_3d = ("z_filter", "yz_filter")  # 2D too with predict.stack_2d (a folder as one stack)
    target_layer = "labels"
    outputs = (
        Output(
            "probabilities",
            "probabilities",
            colormap="magma",
            contrast="unit",
            live=True,
            class_axis=True,
            opacity=0.7,
            from_prediction=True,
        ),
        Output("labels", "labels", layer="labels", live=True, opacity=0.5, folder="binarized"),
        Output("labels_post_processed", "labels post-processed", layer="labels", opacity=0.5, folder="post_processing"),
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
        "Results: per_image/ (probabilities), per_image_binarized/ (labels), per_image_post_processing/ (labels after",
        "predict.z_filter/yz_filter), metrics.csv (IoU before and after post-processing); full_image*/ with",
        "predict.full_image.",
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
        """prediction: (C, (Z,)Y,X) probabilities (zarr). Through the run's writer (engine/predict/writer.py): the
        labels chunk by chunk, the filtered labels (post-processing) beside them, TIFFs when they fit, and IoU against
        `target` read chunk by chunk too (before and after filtering), so huge volumes never load whole."""
        from ..predict.labels import _labels_dtype
        from ..predict.postprocess import filter_labels, filters_for
        from ..predict.sliding_window import write_labels_zarr
        from ..predict.writer import writer_of

        writer = writer_of(inputs, cfg, out_dir, stem)
        prob = writer.adopt("probabilities", "image", prediction)
        labels = writer.create(
            "labels", "binarized", prob.shape[1:], prob.chunks[1:], _labels_dtype(prob.shape[0]), labels=True
        )
        write_labels_zarr(prob, labels, self.state.get("threshold"))  # the checkpoint's threshold (else argmax)
        out: dict[str, Any] = {"probabilities": prob, "labels": labels}
        writer.tiff("probabilities", "image", prob)
        writer.tiff("labels", "binarized", labels)
        sizes, note = filters_for(cfg, labels.shape)
        if note:
            out["notes"] = [note]
        filtered = None
        if sizes is not None:
            filtered = writer.create(
                "labels_post_processed",
                "post_processing",
                labels.shape,
                labels.chunks,
                labels.dtype,
                store_name="labels_post_processing",
                labels=True,
            )
            filter_labels(labels, filtered, *sizes)
            out["labels_post_processed"] = filtered
            writer.tiff("labels_post_processed", "post_processing", filtered)
        if target is not None:
            from ..train.metrics import patch_iou

            out.update(_iou(labels, target, cfg.n_classes))
            out["metrics"].update(patch_iou(labels, target, cfg.n_classes, cfg.data.patch_size))  # per patch
            if filtered is not None:
                after = _iou(filtered, target, cfg.n_classes)
                out["metrics"].update({f"{k}_post_processing": v for k, v in after["metrics"].items()})
                out["counts_post_processing"] = after["counts"]
        return out


def _iou(labels, target, n_classes: int) -> dict[str, Any]:
    """IoU of a zarr label array against `target(region)`, chunk by chunk: metrics and the pixel counts."""
    from ..predict.accumulator import chunk_regions

    acc = IoUAccumulator(n_classes)
    for region in chunk_regions(labels.shape, labels.chunks):
        acc.update(np.asarray(labels[region]), target(region))
    return {"metrics": acc.compute(), "counts": (acc.inter, acc.union)}
