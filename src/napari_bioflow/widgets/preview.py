"""The training preview in the viewer: the current model's prediction of the part of an image the user is looking at,
after each epoch, as a layer named after its epoch ("nuclei preview (epoch 3)", updated in place).

The field of view is read on the GUI thread (`visible_region`, on every pan, zoom, slice or resize) and sent to the
training's process (`Preview.view` forwards it to `sink`); there, between epochs, the model predicts it within the
time budget of the dock's Advanced section (engine/train/live_preview.py) and the small result comes back to `show`.
The preview has its own colours (not the ground truth's); it goes when the training ends unless the user keeps it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import numpy as np

from ..engine.train.live_preview import (  # noqa: F401  (re-exported: the preview's computation)
    PreviewBudget,
    PreviewFailed,
    PreviewResult,
    ViewRegion,
    intensity_mapping,
    preview_output,
    to_intensity,
)
from .layers import layer_array, placement

log = logging.getLogger(__name__)

MAX_SIZE = 512  # pixels per displayed axis: the preview stays a small fraction of an epoch
PALETTE = ("#ff00ff", "#ffd600", "#00e5ff", "#ff6d00", "#76ff03", "#2979ff", "#ff1744", "#e0e0e0")
IMAGE_COLORMAP = "magma"  # not the raw image's gray


def preview_colormap(n_classes: int):
    """Labels colours of their own: class k in PALETTE's k-th colour, background transparent (napari's default
    label colours, which ground truth layers have, are random per value)."""
    from napari.utils.colormaps import DirectLabelColormap

    colors = {None: PALETTE[-1], 0: "transparent"}
    colors.update({k: PALETTE[(k - 1) % len(PALETTE)] for k in range(1, max(2, n_classes))})
    return DirectLabelColormap(color_dict=colors)


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


class Preview:
    """The Train dock's side of a preview: the previewed Image layer, its channels-last data (sent to the training's
    process), the field of view (forwarded to `sink`), the preview layer once shown."""

    def __init__(self, source, image, n_classes: int = 2):
        self.source = source  # the previewed Image layer
        self.image = image  # channels-last (Z,)Y,X,C view of its data
        self.name = f"{source.name} preview"  # the preview layer's name, before "(epoch N)"
        self.n_classes = n_classes
        self.layer = None  # the preview Labels or Image layer, once shown
        self.epochs: list[int] = []  # the epochs shown
        self.sink: Callable | None = None  # where a new field of view goes (the training process)
        self._view: ViewRegion | None = None

    @property
    def view(self) -> ViewRegion | None:
        return self._view

    @view.setter
    def view(self, region: ViewRegion | None) -> None:
        self._view = region
        if self.sink is not None:
            self.sink(region)

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
        name = f"{self.name} (epoch {result.epoch})"
        if self.layer is None or self.layer not in viewer.layers or not isinstance(self.layer, kind):
            active = viewer.layers.selection.active
            if result.kind == "labels":
                self.layer = viewer.add_labels(
                    data,
                    name=name,
                    scale=scale,
                    translate=translate,
                    opacity=0.6,
                    colormap=preview_colormap(self.n_classes),
                )
            else:
                self.layer = viewer.add_image(
                    data, name=name, scale=scale, translate=translate, colormap=IMAGE_COLORMAP
                )
            if active is not None and active in viewer.layers:
                viewer.layers.selection.active = active  # keep the user's selection
        else:
            self.layer.data = data
            self.layer.scale, self.layer.translate = scale, translate
            self.layer.name = name
            if result.kind == "image":  # early epochs predict other intensities than later ones
                self.layer.reset_contrast_limits()
        self.epochs.append(result.epoch)

    def finish(self, viewer, keep: bool) -> None:
        """The training ended: the preview layer goes, unless kept (then it is the user's: never updated again)."""
        self.sink = None
        layer, self.layer = self.layer, None
        if layer is not None and not keep and layer in viewer.layers:
            viewer.layers.remove(layer)
