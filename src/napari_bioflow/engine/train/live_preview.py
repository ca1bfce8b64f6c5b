"""The training preview's computation (no Qt): the current model's prediction of the region of an image the user is
looking at, between epochs, within a time budget.

The Train dock reads the field of view (widgets/preview.py: `visible_region`) and sends it to the training's process
(engine/train/child.py); there, after each epoch (the trainer paused), `LivePreview.maybe_predict` predicts that
region with the model as trained so far and hands back a small array (`PreviewResult`) that the dock shows.

Segmentation shows argmax labels; image to image and self-supervision show the predicted image in the target's (or
raw image's) intensities. crappify previews the restoration of the degraded view, as it is trained; masking previews
the MAE's reconstruction (every token predicted, visible ones included).

The budget is a time per epoch (`PreviewBudget.ms`): a region whose estimated cost exceeds it is cut down around
its centre (never below one patch), so a preview follows every epoch at a bounded cost; 0 turns the preview off.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, replace

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_PREVIEW_MS = 1000  # per epoch, the Train dock's default


@dataclass(frozen=True)
class ViewRegion:
    slices: tuple[slice, ...]  # over the spatial axes of the image
    scale: tuple[float, ...]  # of the preview layer
    translate: tuple[float, ...]

    @property
    def pixels(self) -> int:
        return int(np.prod([s.stop - s.start for s in self.slices]))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(s.stop - s.start for s in self.slices)


@dataclass
class PreviewResult:
    data: np.ndarray  # labels (spatial) or an image (C, spatial), by `kind`
    region: ViewRegion
    seconds: float
    kind: str = "labels"  # labels | image
    epoch: int = 0  # the epoch whose model predicted it

    @property
    def labels(self) -> np.ndarray:
        return self.data


@dataclass
class PreviewFailed:
    message: str


def shrink(region: ViewRegion, pixels: int, minimum: list[int]) -> ViewRegion:
    """`region` cut down around its centre to about `pixels` pixels, each axis at least `minimum` (or its size)."""
    sizes = region.shape
    if region.pixels <= pixels:
        return region
    factor = (pixels / region.pixels) ** (1 / len(sizes))
    slices, translate = [], list(region.translate)
    for k, (s, size, low) in enumerate(zip(region.slices, sizes, minimum)):
        new = min(size, max(low, int(size * factor)))
        start = s.start + (size - new) // 2
        slices.append(slice(start, start + new))
        translate[k] += (start - s.start) * region.scale[k]
    return replace(region, slices=tuple(slices), translate=tuple(translate))


class PreviewBudget:
    """At most `ms` milliseconds of preview per epoch, every `every` epochs; 0 ms: no preview.
    Before the first preview its cost per pixel is estimated from the training speed (an inference forward pass
    costs about a third of a training step per pixel); afterwards from the measured preview speed."""

    def __init__(self, ms: float = DEFAULT_PREVIEW_MS, every: int = 1):
        self.ms = float(ms)
        self.every = max(1, int(every))
        self.spent = 0.0
        self.count = 0
        self.seconds_per_pixel: float | None = None

    def due(self, epoch: int) -> bool:
        return self.ms > 0 and epoch % self.every == 0

    def pixels(self, training_seconds_per_pixel: float) -> int:
        """How many pixels one preview may predict within the budget."""
        rate = self.seconds_per_pixel if self.seconds_per_pixel is not None else training_seconds_per_pixel / 3
        return int(self.ms / 1000 / max(rate, 1e-12)) if math.isfinite(rate) else 0

    def record(self, pixels: int, seconds: float) -> None:
        self.spent += seconds
        self.count += 1
        self.seconds_per_pixel = seconds / max(1, pixels)


def intensity_mapping(workflow) -> tuple[np.ndarray, np.ndarray] | None:
    """(scale, offset) per output channel that map a workflow's normalized output back to intensities: the
    target's normalization (image to image) or the raw images' (self-supervision); None for label outputs."""
    from ..data.normalize import Normalizer

    state = getattr(workflow, "state", {}) or {}
    fitted = state.get("target_normalization") or state.get("normalization")
    if fitted is None:
        return None
    norm = Normalizer.from_dict(fitted)
    return np.asarray(norm.scale, np.float32), np.asarray(norm.offset, np.float32)


def to_intensity(prediction, mapping, ndim: int):
    """A channel-first normalized prediction (numpy or dask) in intensities (lazy for dask)."""
    if mapping is None:
        return prediction
    scale, offset = (m.reshape(-1, *([1] * ndim))[: prediction.shape[0]] for m in mapping)
    return (prediction * scale + offset).astype(np.float32)


def preview_output(loaded, crop: np.ndarray, device: str = "cpu") -> tuple[np.ndarray, str]:
    """(data, kind) the preview shows for a channel-last crop: argmax labels, or the predicted image (C, ...)."""
    from ..predict.inference import predict_array
    from ..predict.sliding_window import argmax_labels

    cfg, wf = loaded.config, loaded.workflow
    if not wf.target_is_image:
        return argmax_labels(predict_array(loaded, crop, device=device), wf.state.get("threshold")), "labels"
    crop = wf.preview_input(crop, cfg, loaded.normalizer)
    out = predict_array(loaded, crop, device=device)[: wf.out_channels(cfg)]
    return to_intensity(out, intensity_mapping(wf), cfg.ndim), "image"


class LivePreview:
    """Where the trainer runs: the previewed image (channels-last), the latest field of view (set from another
    thread), the budget; `maybe_predict` after each epoch."""

    def __init__(self, image, budget: PreviewBudget):
        self.image = image
        self.budget = budget
        self.steps_per_epoch = 1
        self._lock = threading.Lock()
        self._view: ViewRegion | None = None

    @property
    def view(self) -> ViewRegion | None:
        with self._lock:
            return self._view

    @view.setter
    def view(self, region: ViewRegion | None) -> None:
        with self._lock:
            self._view = region

    def maybe_predict(self, trainer, report) -> PreviewResult | PreviewFailed | None:
        """Predict the current view (cut to the budget) with the trainer's current model; None when not due."""
        region = self.view
        if region is None or not self.budget.due(report.epoch):
            return None
        cfg = trainer.cfg
        per_pixel = report.seconds / max(
            1, self.steps_per_epoch * cfg.train.batch_size * int(np.prod(cfg.data.patch_size))
        )
        region = shrink(region, self.budget.pixels(per_pixel), list(cfg.data.patch_size))
        start = time.perf_counter()
        try:
            crop = np.asarray(self.image[region.slices])
            data, kind = preview_output(trainer.loaded_model(), crop, trainer.device)
        except Exception as e:  # a preview must never stop a training
            log.exception("training preview failed")
            self.view = None
            return PreviewFailed(f"The training preview stopped: {e}")
        seconds = time.perf_counter() - start
        self.budget.record(region.pixels, seconds)
        return PreviewResult(np.asarray(data), region, seconds, kind, report.epoch)
