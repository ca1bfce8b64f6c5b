"""The background threshold of a semantic segmentation, chosen on the validation data. With two classes it is the
foreground probability above which a pixel is foreground (argmax is the threshold 0.5, which over-predicts thin dark
borders of nuclei); with more, a pixel takes its likeliest non-background class c where p_c / (p_0 + p_c) reaches the
threshold (0.5 is argmax again), i.e. the background is weighed against the other classes. The threshold chosen gives
the best mean IoU of the non-background classes on the validation data. Histograms of that share, per true class and
predicted class, are kept over the validation images, so every candidate threshold is scored at once at the end.

The validation data is scored twice: as the training-size patches the validation loss uses, and as whole images
predicted as prediction predicts them (`add_images`: up to one prediction tile each, about as many voxels as the
patches). The default U-Net's instance norm makes the model's answer depend on what else a tile holds (its size, how
much foreground): on the sets of benchmarks/bench_quality.py a threshold picked on the patches alone fell to 0.2-0.35
on the 3D nuclei set and over-predicted foreground by 13 %, one picked on the whole images alone followed that set's
single validation block (21 % foreground against 32 % in the test) to 0.85-0.95 and lost 0.05 IoU; the two together
scored best on average over the four segmentation sets (benchmarks/README.md)."""

from __future__ import annotations

import numpy as np

BINS = 200  # candidate thresholds: the edges of 200 bins of [0, 1]
LIMITS = (0.05, 0.95)  # thresholds outside are not chosen (a few validation patches must not push it to an extreme)


class ThresholdPicker:
    def __init__(self):
        self.hist: np.ndarray | None = None  # (true class, predicted non-background class, bin of the share)

    @staticmethod
    def applies(prediction, target) -> bool:
        """A dense probability map of 2 or more classes (B, C, ...) against integer labels (B, ...)."""
        return prediction.ndim > 2 and prediction.shape[1] >= 2 and np.issubdtype(np.asarray(target).dtype, np.integer)

    def update(self, prediction: np.ndarray, target: np.ndarray) -> None:
        p = np.asarray(prediction, np.float32)
        n = p.shape[1]
        if self.hist is None:
            self.hist = np.zeros((n, n, BINS), np.int64)
        fg = p[:, 1:]
        best = fg.max(axis=1).ravel()
        cls = (fg.argmax(axis=1) + 1).ravel()
        share = best / np.maximum(p[:, 0].ravel() + best, 1e-12)
        idx = np.clip((share * BINS).astype(np.int64), 0, BINS - 1)
        t = np.asarray(target).ravel().astype(np.int64)
        keep = (t >= 0) & (t < n)  # labels the model has no class for are not scored
        flat = (t[keep] * n + cls[keep]) * BINS + idx[keep]
        self.hist += np.bincount(flat, minlength=n * n * BINS).reshape(n, n, BINS)

    def ious(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(candidate thresholds, mean non-background IoU at each), None without non-background in the labels."""
        if self.hist is None:
            return None
        n = self.hist.shape[0]
        true = self.hist.sum(axis=(1, 2))
        present = [c for c in range(1, n) if true[c] > 0]
        if not present:
            return None
        edges = np.arange(BINS) / BINS  # a pixel takes its class c when its share >= edge k / BINS
        above = self.hist[:, :, ::-1].cumsum(axis=2)[:, :, ::-1]  # (true, predicted, edge)
        ious = []
        for c in present:
            tp = above[c, c]
            predicted = above[:, c].sum(axis=0)
            ious.append(tp / np.maximum(1, predicted + true[c] - tp))
        return edges, np.mean(ious, axis=0)

    def best(self, tolerance: float = 0.0) -> tuple[float, float] | None:
        """(threshold, mean non-background IoU at it), None without non-background in the validation labels. Of the
        thresholds scoring within `tolerance` of the best, the one nearest argmax's 0.5."""
        scored = self.ious()
        if scored is None:
            return None
        edges, iou = scored
        allowed = (edges >= LIMITS[0]) & (edges <= LIMITS[1])
        iou = np.where(allowed, iou, -1.0)
        ties = np.flatnonzero(iou >= iou.max() - tolerance - 1e-9)
        k = ties[np.argmin(np.abs(edges[ties] - 0.5))]
        return float(edges[k]), float(iou[k])


def add_images(picker: ThresholdPicker, loaded, crops, device: str) -> None:
    """Score the validation crops ((raw (Z,)Y,X,C, labels), see PatchData.threshold_crops) predicted by the model
    as prediction predicts them."""
    from ..predict.inference import predict_array

    for raw, target in crops:
        picker.update(predict_array(loaded, raw, device=device, channels_last=True)[None], np.asarray(target)[None])
