"""The training preview: the current model's prediction on the part of an image the user is looking at.

Segmentation shows argmax labels (a Labels layer); image to image and self-supervision show the predicted image in
the target's (or raw image's) intensities (an Image layer). crappify previews the restoration of the degraded view,
as it is trained; masking previews the MAE's reconstruction (every token predicted, visible ones included).

The field of view is read on the GUI thread (`visible_region`) and handed to the worker through `Preview.view`
(a lock-guarded value); the worker predicts between epochs while the trainer is paused (`Preview.maybe_predict`),
and only when the preview's estimated cost keeps all previews within `budget` (5 %) of the training time.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass

import numpy as np

from .layers import layer_array, placement

log = logging.getLogger(__name__)

MAX_SIZE = 512  # pixels per displayed axis: the preview stays a small fraction of an epoch


@dataclass(frozen=True)
class ViewRegion:
    slices: tuple[slice, ...]  # over the spatial axes of the image
    scale: tuple[float, ...]  # of the preview layer
    translate: tuple[float, ...]

    @property
    def pixels(self) -> int:
        return int(np.prod([s.stop - s.start for s in self.slices]))


@dataclass
class PreviewResult:
    data: np.ndarray  # labels (spatial) or an image (C, spatial), by `kind`
    region: ViewRegion
    seconds: float
    kind: str = "labels"  # labels | image

    @property
    def labels(self) -> np.ndarray:
        return self.data


@dataclass
class PreviewFailed:
    message: str


def camera(viewer):
    """The viewer's camera (napari >= 0.9 keeps it in viewer.scene)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None and hasattr(scene, "camera") else viewer.camera


def canvas_size(viewer) -> tuple[float, float]:
    """(height, width) of the canvas in screen pixels."""
    canvas = getattr(viewer, "canvas", None)
    return tuple(canvas.size) if canvas is not None and hasattr(canvas, "size") else tuple(viewer._canvas_size)


def visible_region(viewer, layer, axes: list[int], patch: list[int], max_size: int = MAX_SIZE) -> ViewRegion | None:
    """The part of `layer` (its spatial data `axes`) on screen: the canvas' field of view on displayed axes, the
    current slice plus a patch-deep slab on the others; each axis at least the patch, at most `max_size`, inside the
    image. In a 3D view the whole image (capped) is used. GUI thread only."""
    shape = layer_array(layer).shape
    point = np.asarray(viewer.dims.point, dtype=float)
    offset = len(point) - layer.ndim  # world axis of layer axis i is offset + i
    displayed = list(viewer.dims.displayed)
    low, high = point.copy(), point.copy()
    two_d = viewer.dims.ndisplay == 2
    if two_d:
        cam = camera(viewer)
        half = np.asarray(canvas_size(viewer), dtype=float) / max(cam.zoom, 1e-9) / 2
        centre = cam.center[-2:]
        for k, ax in enumerate(displayed[-2:]):
            low[ax], high[ax] = centre[k] - half[k], centre[k] + half[k]
            point[ax] = centre[k]
    to_data = lambda p: np.asarray(layer.world_to_data(p), dtype=float)  # noqa: E731
    low_d, high_d, centre_d = to_data(low), to_data(high), to_data(point)
    slices = []
    for ax, p in zip(axes, patch):
        length = shape[ax]
        if offset + ax in displayed:
            a, b = sorted((low_d[ax], high_d[ax])) if two_d else (0.0, float(length))
            middle, size = (a + b) / 2, b - a
        else:  # the current slice, with a patch-deep slab around it for a 3D model
            middle, size = math.floor(centre_d[ax] + 0.5) + 0.5, p
        size = min(length, int(np.clip(round(size), p, max(max_size, p))))
        start = int(np.clip(round(middle - size / 2), 0, length - size))
        slices.append(slice(start, start + size))
    scale, translate = placement(layer, axes)
    translate = tuple(t + s.start * sc for t, s, sc in zip(translate, slices, scale))
    return ViewRegion(tuple(slices), scale, translate)


class PreviewBudget:
    """Allow a preview only while all previews together stay within `fraction` of the training time.
    Before the first preview its cost is estimated from the training speed (an inference forward pass costs
    about a third of a training step per pixel); afterwards from the measured preview speed."""

    def __init__(self, fraction: float = 0.05):
        self.fraction = fraction
        self.spent = 0.0
        self.count = 0
        self.seconds_per_pixel: float | None = None

    def allow(self, pixels: int, training_seconds: float, training_seconds_per_pixel: float) -> bool:
        rate = self.seconds_per_pixel if self.seconds_per_pixel is not None else training_seconds_per_pixel / 3
        return self.spent + pixels * rate <= self.fraction * training_seconds

    def record(self, pixels: int, seconds: float) -> None:
        self.spent += seconds
        self.count += 1
        self.seconds_per_pixel = seconds / max(1, pixels)


def intensity_mapping(workflow) -> tuple[np.ndarray, np.ndarray] | None:
    """(scale, offset) per output channel that map a workflow's normalized output back to intensities: the
    target's normalization (image to image) or the raw images' (self-supervision); None for label outputs."""
    from ..engine.data.normalize import Normalizer

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
    from ..engine.predict.inference import predict_array
    from ..engine.predict.sliding_window import argmax_labels

    cfg, wf = loaded.config, loaded.workflow
    if not wf.target_is_image:
        return argmax_labels(predict_array(loaded, crop, device=device)), "labels"
    crop = wf.preview_input(crop, cfg, loaded.normalizer)
    out = predict_array(loaded, crop, device=device)[: wf.out_channels(cfg)]
    return to_intensity(out, intensity_mapping(wf), cfg.ndim), "image"


class Preview:
    """Shared between the GUI (sets `view`, shows results) and the training worker (predicts)."""

    def __init__(self, source, image, budget: float = 0.05):
        self.source = source  # the previewed Image layer
        self.image = image  # channels-last (Z,)Y,X,C view of its data
        self.name = f"{source.name} preview"  # of the preview layer
        self.budget = PreviewBudget(budget)
        self.steps_per_epoch = 1
        self.layer = None  # the preview Labels or Image layer, once shown
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

    # --- worker thread ---------------------------------------------------------------------------------
    def maybe_predict(self, trainer, report, training_seconds: float):
        """Predict the current view with the trainer's current model if the budget allows; None otherwise."""
        region = self.view
        if region is None:
            return None
        cfg = trainer.cfg
        per_pixel = report.seconds / max(
            1, self.steps_per_epoch * cfg.train.batch_size * int(np.prod(cfg.data.patch_size))
        )
        if not self.budget.allow(region.pixels, training_seconds, per_pixel):
            return None
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
        return PreviewResult(data, region, seconds, kind)

    # --- GUI thread ------------------------------------------------------------------------------------
    def show(self, viewer, result: PreviewResult) -> None:
        from napari.layers import Image, Labels

        region, data = result.region, result.data
        scale, translate = region.scale, region.translate
        if result.kind == "image":
            if data.shape[0] == 1:
                data = data[0]
            else:  # several target channels: a channel axis in front, as the prediction layers have it
                scale, translate = (1.0, *scale), (0.0, *translate)
        kind = Labels if result.kind == "labels" else Image
        if self.layer is None or self.layer not in viewer.layers or not isinstance(self.layer, kind):
            active = viewer.layers.selection.active
            if result.kind == "labels":
                self.layer = viewer.add_labels(data, name=self.name, scale=scale, translate=translate, opacity=0.6)
            else:
                self.layer = viewer.add_image(data, name=self.name, scale=scale, translate=translate, colormap="gray")
            if active is not None and active in viewer.layers:
                viewer.layers.selection.active = active  # keep the user's selection
        else:
            self.layer.data = data
            self.layer.scale, self.layer.translate = scale, translate
            if result.kind == "image":  # early epochs predict other intensities than later ones
                self.layer.reset_contrast_limits()
