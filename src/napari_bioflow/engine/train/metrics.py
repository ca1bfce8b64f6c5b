"""Metrics: IoU per class and mean, accumulated over batches or images (counts, not averages of averages)."""

from __future__ import annotations

import numpy as np


class IoUAccumulator:
    """Accumulates per-class intersections and unions; `compute()` gives IoU per class, mean IoU and foreground IoU."""

    def __init__(self, n_classes: int):
        self.n = n_classes
        self.inter = np.zeros(n_classes, np.int64)
        self.union = np.zeros(n_classes, np.int64)

    def update(self, pred: np.ndarray, target: np.ndarray) -> None:
        pred, target = np.asarray(pred).ravel(), np.asarray(target).ravel()
        # one bincount over (pred, target) pairs gives the whole confusion matrix
        cm = np.bincount(target.astype(np.int64) * self.n + pred.astype(np.int64), minlength=self.n * self.n).reshape(
            self.n, self.n
        )
        inter = np.diag(cm)
        self.inter += inter
        self.union += cm.sum(0) + cm.sum(1) - inter

    def compute(self) -> dict[str, float]:
        return iou_from_counts(self.inter, self.union)


def iou_from_counts(inter: np.ndarray, union: np.ndarray) -> dict[str, float]:
    # a class absent from both prediction and truth is perfectly segmented
    iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    out = {f"iou_class_{c}": float(v) for c, v in enumerate(iou)}
    out["iou_mean"] = float(iou.mean())
    out["iou_foreground"] = float(iou[1:].mean())
    return out


def iou(pred: np.ndarray, target: np.ndarray, n_classes: int) -> dict[str, float]:
    acc = IoUAccumulator(n_classes)
    acc.update(pred, target)
    return acc.compute()


def patch_iou(labels, target, n_classes: int, patch_size) -> dict[str, float]:
    """Per-patch IoU (as BiaPy's test reports it beside per-image IoU): the image cut into patch_size tiles (the
    last ones clipped at the border), each tile's foreground and mean IoU, averaged over the tiles. `labels`: an
    array-like; `target(region)`: the ground truth of a region."""
    import itertools

    starts = [range(0, s, p) for s, p in zip(labels.shape, patch_size)]
    fg, mean = [], []
    for corner in itertools.product(*starts):
        region = tuple(slice(c, min(c + p, s)) for c, p, s in zip(corner, patch_size, labels.shape))
        m = iou(np.asarray(labels[region]), target(region), n_classes)
        fg.append(m["iou_foreground"])
        mean.append(m["iou_mean"])
    return {"iou_patch_foreground": float(np.mean(fg)), "iou_patch_mean": float(np.mean(mean))}
