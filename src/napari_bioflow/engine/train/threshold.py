"""The binarization threshold of a two-class segmentation, chosen on the validation data: the foreground probability
above which a pixel is foreground that gives the best validation IoU (argmax is the threshold 0.5, which over-predicts
thin dark borders of nuclei). Histograms of the foreground probability of true foreground and true background pixels
are kept over the validation batches, so every candidate threshold is scored at once at the end."""

from __future__ import annotations

import numpy as np

BINS = 200  # candidate thresholds: the edges of 200 bins of [0, 1]
LIMITS = (0.05, 0.95)  # thresholds outside are not chosen (a few validation patches must not push it to an extreme)


class ThresholdPicker:
    def __init__(self):
        self.fg = np.zeros(BINS, np.int64)  # histogram of p(foreground) over true foreground pixels
        self.bg = np.zeros(BINS, np.int64)

    @staticmethod
    def applies(prediction, target) -> bool:
        """A dense two-class probability map (B, 2, ...) against integer labels (B, ...)."""
        return prediction.ndim > 2 and prediction.shape[1] == 2 and np.issubdtype(np.asarray(target).dtype, np.integer)

    def update(self, prediction: np.ndarray, target: np.ndarray) -> None:
        p = np.asarray(prediction[:, 1], np.float32).ravel()
        t = np.asarray(target).ravel() > 0
        idx = np.clip((p * BINS).astype(np.int64), 0, BINS - 1)
        self.fg += np.bincount(idx[t], minlength=BINS)
        self.bg += np.bincount(idx[~t], minlength=BINS)

    def best(self) -> tuple[float, float] | None:
        """(threshold, foreground IoU at it), None without foreground in the validation labels."""
        if self.fg.sum() == 0:
            return None
        edges = np.arange(BINS) / BINS  # pixel predicted foreground when p >= edge k / BINS
        tp = self.fg[::-1].cumsum()[::-1]  # true foreground at or above each edge
        fp = self.bg[::-1].cumsum()[::-1]
        fn = self.fg.sum() - tp
        iou = tp / np.maximum(1, tp + fp + fn)
        allowed = (edges >= LIMITS[0]) & (edges <= LIMITS[1])
        iou = np.where(allowed, iou, -1.0)
        best = iou.max()
        ties = np.flatnonzero(iou >= best - 1e-9)
        k = ties[np.argmin(np.abs(edges[ties] - 0.5))]  # of equal scores, the one nearest argmax's 0.5
        return float(edges[k]), float(best)
