"""Layer choosers that follow the viewer's layers, and what a layer tells about its axes and classes."""

from __future__ import annotations

import numpy as np
from magicgui.widgets import ComboBox, Container, PushButton
from napari.layers import Image, Labels
from psygnal import Signal

from ..engine.data.sources import MAX_CHANNELS


class LayerCombo(ComboBox):
    """A ComboBox of the viewer's layers of `kind` that never switches silently to another layer: when the chosen
    layer is deleted it empties (None) and emits `lost` with a sentence saying so, and it stays empty until the user
    chooses. `auto`: take the first layer of the kind while nothing was ever chosen (a fresh dock picks up the
    layers already loaded). Long layer names do not widen the dock."""

    lost = Signal(str)

    def __init__(self, viewer, kind, what: str = "layer", auto: bool = True, **kwargs):
        from qtpy.QtWidgets import QComboBox

        self._viewer, self._what, self._auto, self._emptied = viewer, what, auto, False
        kwargs.pop("nullable", None)
        super().__init__(choices=layer_choices(viewer, kind), nullable=True, **kwargs)
        self.native.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        self.native.setMinimumContentsLength(8)
        self._take_first()
        self.native.activated.connect(self._on_user_choice)

    def _take_first(self) -> None:
        if self._auto and not self._emptied and self.value is None:
            first = next((c for c in self.choices if c is not None), None)
            if first is not None:
                self.value = first

    def _on_user_choice(self, *_) -> None:
        self._emptied = False  # the user chose (a layer, or none on purpose)

    def reset_choices(self, *_) -> None:
        previous = self.value
        super().reset_choices()
        if previous is not None and previous not in self._viewer.layers:
            self._emptied = True
            if self.value is not None:
                self.value = None
            self.lost.emit(f"The {self._what} '{previous.name}' was deleted: choose another.")
        elif previous is not None and self.value is not previous:
            self.value = previous
        else:
            self._take_first()


def layer_combo(viewer, kind, **kwargs) -> LayerCombo:
    """A LayerCombo of the viewer's layers of `kind` (see there)."""
    return LayerCombo(viewer, kind, **kwargs)


def layer_choices(viewer, kind):
    """A magicgui choices callback: the viewer's layers of `kind` (a layer class, or a function returning the one
    wanted now), by name (re-read on reset_choices)."""

    def choices(_widget=None):
        wanted = kind if isinstance(kind, type) else kind()
        return [(layer.name, layer) for layer in viewer.layers if isinstance(layer, wanted)]

    return choices


def connect_while_alive(owner, connections) -> None:
    """Connect (signal, callback) pairs and disconnect them when the Qt widget `owner` is destroyed, so that a
    closed dock is never called back by the viewer (or by another dock) it outlived."""
    for signal, callback in connections:
        signal.connect(callback)

    def disconnect(*_):
        for signal, callback in connections:
            try:
                signal.disconnect(callback)
            except Exception:  # already gone with its emitter
                pass

    owner.destroyed.connect(disconnect)


def follow_layers(owner, viewer, reset) -> None:
    """Call `reset` whenever a layer is added, removed, moved or renamed, while `owner` lives."""
    events = viewer.layers.events
    connect_while_alive(
        owner, [(e, reset) for e in (events.inserted, events.removed, events.reordered, events.renamed)]
    )


def layer_array(layer):
    """The full-resolution array of a layer (level 0 of a multiscale one)."""
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def guess_ndim(layer) -> int:
    """2 for Y,X images (RGB included, or with a short channel axis), 3 for Z,Y,X volumes."""
    if getattr(layer, "rgb", False):
        return 2
    shape = layer_array(layer).shape
    if len(shape) <= 2:
        return 2
    if len(shape) == 3 and min(shape[0], shape[-1]) <= MAX_CHANNELS:
        return 2
    return 3


def spatial_axes(layer, ndim: int, in_channels: int | None = None, axes: str | None = None) -> list[int] | None:
    """The data axes of `layer` that are space for an `ndim` model (the channel axis left out), as the engine's
    to_channels_last reads them: by `axes` (data.axes), else the end axis of length `in_channels` (any count: a
    multiplexed image of 5 to 40 channels too), else a short end axis (a guess for the dock's defaults); None when
    the layer does not fit `ndim` (the engine then says why)."""
    shape = layer_array(layer).shape
    if getattr(layer, "rgb", False):
        return list(range(len(shape) - 1)) if len(shape) - 1 == ndim else None
    if axes and len(axes) == len(shape):
        space = [axes.index(a) for a in "ZYX" if a in axes]
        return space if len(space) == ndim else None
    if len(shape) == ndim:
        return list(range(ndim))
    if len(shape) == ndim + 1:
        for last, first in (
            (shape[-1] == in_channels, shape[0] == in_channels),
            (shape[-1] <= MAX_CHANNELS, shape[0] <= MAX_CHANNELS),
        ):
            if last:
                return list(range(ndim))
            if first:
                return list(range(1, ndim + 1))
    return None


def layer_channels(layer, ndim: int, in_channels: int | None = None) -> int | None:
    shape = layer_array(layer).shape
    axes = spatial_axes(layer, ndim, in_channels)
    if axes is None:
        return None
    rest = [a for a in range(len(shape)) if a not in axes]
    return shape[rest[0]] if rest else 1


def guess_classes(layer) -> int | None:
    """Classes from the largest label value (0/255 masks are binary); None for lazy data (too costly to scan)."""
    data = layer_array(layer)
    if not isinstance(data, np.ndarray) or data.size == 0 or data.size > 200_000_000:
        return None
    top = int(data.max())
    return 2 if top in (0, 1, 255) else top + 1


def placement(layer, axes: list[int]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(scale, translate) of the given data axes of a layer, to place a derived layer over it."""
    return tuple(float(layer.scale[a]) for a in axes), tuple(float(layer.translate[a]) for a in axes)


def labels_fit(image, labels) -> bool:
    """Whether a labels layer has the shape of an image layer (less its channel axis, if any)."""
    shape, label_shape = tuple(layer_array(image).shape), tuple(layer_array(labels).shape)
    return label_shape in (shape, shape[:-1], shape[1:])


PAIR_MODES = ("labels", "image", "none")  # the second layer of a pair: a Labels layer, a target Image layer, none


def images_fit(image, target) -> bool:
    """Whether two Image layers have the same spatial shape (their channel axes, if any, left out)."""

    def spatial(layer):
        axes = spatial_axes(layer, guess_ndim(layer)) or []
        return tuple(layer_array(layer).shape[a] for a in axes)

    return spatial(image) == spatial(target)


class LayerPair(Container):
    """One training pair: an Image layer and, by `mode`, a Labels layer (segmentation), a target Image layer
    (image to image) or nothing (self-supervision). When the chosen second layer does not fit the image, one of
    its shape is picked, if there is one (preferring one whose name starts with the image's), never the image itself.
    A deleted layer empties its chooser and emits `lost`."""

    lost = Signal(str)

    def __init__(self, viewer, removable: bool = True, mode: str = "labels"):
        self.image_layer = layer_combo(viewer, Image, what="image layer", tooltip="Image layer (raw data)")
        self.labels_layer = layer_combo(
            viewer, Labels, what="labels layer", auto=False, tooltip="Labels layer (0 = background)"
        )
        self.target_layer = layer_combo(
            viewer,
            Image,
            what="target layer",
            auto=False,
            tooltip="Target Image layer: what the model should output for the raw image (same size, not the raw "
            "image itself)",
        )
        self.remove_button = PushButton(text="−", tooltip="Remove this pair")
        self.remove_button.max_width = 28
        self.remove_button.visible = removable
        super().__init__(
            widgets=[self.image_layer, self.labels_layer, self.target_layer, self.remove_button],
            layout="horizontal",
            labels=False,
        )
        self.margins = (0, 0, 0, 0)
        self.mode = "labels"
        for combo in (self.image_layer, self.labels_layer, self.target_layer):
            combo.lost.connect(self.lost.emit)
        self.image_layer.changed.connect(self._match_labels)
        self.set_mode(mode)

    @property
    def second(self):
        """The chosen Labels or target layer (None in self-supervision or when none is chosen)."""
        if self.mode == "labels":
            return self.labels_layer.value
        return self.target_layer.value if self.mode == "image" else None

    def set_mode(self, mode: str) -> None:
        if mode not in PAIR_MODES:
            raise ValueError(f"pair mode must be one of {PAIR_MODES}, not {mode!r}")
        self.mode = mode
        self.labels_layer.visible, self.target_layer.visible = mode == "labels", mode == "image"
        self._match_labels(self.image_layer.value)

    def reset_choices(self, *_) -> None:
        super().reset_choices()
        self._match_labels(self.image_layer.value)

    def _match_labels(self, image) -> None:
        if image is None or self.mode == "none":
            return
        combo = self.labels_layer if self.mode == "labels" else self.target_layer
        fits = labels_fit if self.mode == "labels" else images_fit
        if combo._emptied:  # its layer was deleted: the user chooses the next one
            return
        candidates = [c for c in combo.choices if c is not None and c is not image and fits(image, c)]
        if candidates and combo.value not in candidates:
            named = [c for c in candidates if c.name.startswith(image.name)]
            combo.value = (named or candidates)[0]


class PairList(Container):
    """One or several training pairs (or single images, in self-supervision) with + / − buttons; `lost` relays a
    pair's deleted layer."""

    lost = Signal(str)

    def __init__(self, viewer):
        self.viewer = viewer
        self.mode = "labels"
        self.add_button = PushButton(text="+ add a pair", tooltip="Train on one more (Image, Labels) pair")
        super().__init__(widgets=[self.add_button], labels=False)
        self.margins = (0, 0, 0, 0)
        self.add_button.changed.connect(self.add_pair)
        self.add_pair()

    @property
    def pairs(self) -> list[LayerPair]:
        return [w for w in self if isinstance(w, LayerPair)]

    def set_mode(self, mode: str) -> None:
        self.mode = mode
        for p in self.pairs:
            p.set_mode(mode)
        what = {"labels": "pair", "image": "pair", "none": "image"}[mode]
        self.add_button.text = f"+ add {'an' if what == 'image' else 'a'} {what}"
        self.add_button.tooltip = {
            "labels": "Train on one more (Image, Labels) pair",
            "image": "Train on one more (raw Image, target Image) pair",
            "none": "Train on one more Image layer",
        }[mode]

    def add_pair(self, *_) -> LayerPair:
        row = LayerPair(self.viewer, mode=self.mode)
        row.lost.connect(self.lost.emit)
        row.remove_button.changed.connect(lambda *_: self.remove_pair(row))
        self.insert(len(self) - 1, row)
        self._update_buttons()
        return row

    def remove_pair(self, row: LayerPair) -> None:
        if len(self.pairs) > 1:
            self.remove(row)
        self._update_buttons()

    def _update_buttons(self) -> None:
        pairs = self.pairs
        for p in pairs:
            p.remove_button.enabled = len(pairs) > 1


def prediction_colormap():
    """The colours of predicted Labels layers: magenta, cyan, yellow, ... (napari's default colours are left to the
    ground truth), so a prediction and its ground truth are told apart at a glance."""
    from napari.utils.colormaps import CyclicLabelColormap

    colors = [[0, 0, 0, 0], [1, 0, 1, 1], [0, 1, 1, 1], [1, 1, 0, 1], [0.5, 1, 0, 1], [1, 0.5, 0, 1]]
    return CyclicLabelColormap(colors=np.array(colors, float), background_value=0, name="bioflow prediction")
