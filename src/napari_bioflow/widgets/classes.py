"""Classification in the docks: Image layers given a class for training (a stack may be split along its first axis,
one class for all its slices or one per slice), and the predicted class and confidence of each layer or slice shown
in a table and in the viewer's text overlay, never in the layers' data."""

from __future__ import annotations

import numpy as np
from magicgui.widgets import CheckBox, Container, LineEdit, PushButton
from napari.layers import Image
from qtpy.QtWidgets import QAbstractItemView, QHeaderView, QTableWidget, QTableWidgetItem

from ..engine.errors import InputError
from .layers import layer_array, layer_combo

META_KEY = "bioflow_class"  # layer.metadata[META_KEY]: {"classes": [...], "predictions": [(slice or None, class, p)]}


def split_classes(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


class ClassRow(Container):
    """An Image layer, its class (or one class per slice, comma separated) and whether to split it into slices."""

    def __init__(self, viewer):
        self.layer = layer_combo(viewer, Image, tooltip="Image layer of this class")
        self.cls = LineEdit(
            value="", tooltip="Class name; with 'slices', one name for every slice or one per slice separated by commas"
        )
        self.cls.native.setPlaceholderText("class")
        self.slices = CheckBox(
            value=False, text="slices", tooltip="Split the layer along its first axis: each slice is one image"
        )
        self.remove_button = PushButton(text="−", tooltip="Remove this image")
        self.remove_button.max_width = 28
        super().__init__(
            widgets=[self.layer, self.cls, self.slices, self.remove_button], layout="horizontal", labels=False
        )
        self.margins = (0, 0, 0, 0)

    def images(self) -> list[tuple[str, object, str]]:
        """(name, array, class name) of this row's images."""
        layer = self.layer.value
        if layer is None:
            raise InputError("Choose an Image layer for every class row (or load one into the viewer).")
        names = split_classes(self.cls.value)
        if not names:
            raise InputError(f"Give image layer '{layer.name}' a class name.")
        data = layer_array(layer)
        if not self.slices.value:
            if len(names) > 1:
                raise InputError(
                    f"Image layer '{layer.name}' is given {len(names)} classes: tick 'slices' to give one "
                    f"class per slice, or give one class."
                )
            return [(f"image layer '{layer.name}'", data, names[0])]
        n = data.shape[0]
        if len(names) not in (1, n):
            raise InputError(
                f"Image layer '{layer.name}' has {n} slices but {len(names)} class names: give one name "
                f"for all slices or one per slice."
            )
        names = names * n if len(names) == 1 else names
        return [(f"image layer '{layer.name}' slice {i}", data[i], names[i]) for i in range(n)]


def image_geometry(shape: tuple, rgb: bool = False) -> tuple[int, int, tuple]:
    """(ndim, channels, spatial shape) of one image's shape, read as the engine reads layers (short axis = channels)."""
    from ..engine.data.sources import MAX_CHANNELS

    shape = tuple(shape)
    if rgb:
        return len(shape) - 1, shape[-1], shape[:-1]
    if len(shape) <= 2:
        return 2, 1, shape
    if len(shape) == 3 and min(shape[0], shape[-1]) <= MAX_CHANNELS:
        last = shape[-1] <= MAX_CHANNELS
        return 2, shape[-1] if last else shape[0], shape[:-1] if last else shape[1:]
    if len(shape) == 4:
        last = shape[-1] <= MAX_CHANNELS
        return 3, shape[-1] if last else shape[0], shape[:-1] if last else shape[1:]
    return 3, 1, shape


class ClassLayerList(Container):
    """Rows of (Image layer, class) with + / − buttons."""

    def __init__(self, viewer):
        self.viewer = viewer
        self.add_button = PushButton(text="+ add an image", tooltip="Train on one more Image layer (with its class)")
        super().__init__(widgets=[self.add_button], labels=False)
        self.margins = (0, 0, 0, 0)
        self.add_button.changed.connect(self.add_row)
        self.add_row()

    @property
    def rows(self) -> list[ClassRow]:
        return [w for w in self if isinstance(w, ClassRow)]

    def add_row(self, *_) -> ClassRow:
        row = ClassRow(self.viewer)
        row.remove_button.changed.connect(lambda *_: self.remove_row(row))
        self.insert(len(self) - 1, row)
        return row

    def remove_row(self, row: ClassRow) -> None:
        if len(self.rows) > 1:
            self.remove(row)

    def geometry(self) -> tuple[int, int, tuple] | None:
        """(ndim, channels, spatial shape) of the first row's image (one slice when split), or None."""
        row = self.rows[0]
        layer = row.layer.value
        if layer is None:
            return None
        shape = layer_array(layer).shape
        return image_geometry(shape[1:] if row.slices.value else shape, getattr(layer, "rgb", False))

    def reset_choices(self, *_) -> None:
        for r in self.rows:
            r.layer.reset_choices()

    def samples(self, cfg) -> tuple[list, list[str]]:
        """Checked ClassSamples and the class names (natural order) of every row."""
        from ..engine.data.classification_data import ClassSample, natural_key
        from ..engine.data.sources import check_finite, to_channels_last

        images = [im for row in self.rows for im in row.images()]
        names = sorted({c for _, _, c in images}, key=natural_key)
        out = []
        for name, data, cls in images:
            raw = to_channels_last(data, cfg.ndim, cfg.data.in_channels, name)
            check_finite(raw, name)
            out.append(ClassSample(name=name, raw=raw, class_index=names.index(cls)))
        return out, names


# --- prediction display ---------------------------------------------------------------------------------------
class ResultsTable(QTableWidget):
    """Rows: image (layer, slice or file), class, confidence."""

    def __init__(self):
        super().__init__(0, 3)
        self.setHorizontalHeaderLabels(["image", "class", "confidence"])
        self.horizontalHeader().setSectionResizeMode(0, QHeaderView.Stretch)
        self.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.verticalHeader().setVisible(False)
        self.setMinimumHeight(120)

    def add(self, image: str, cls: str, confidence: float) -> None:
        r = self.rowCount()
        self.insertRow(r)
        for c, v in enumerate((image, cls, f"{confidence:.1%}")):
            self.setItem(r, c, QTableWidgetItem(v))

    def rows(self) -> list[tuple[str, str, str]]:
        return [tuple(self.item(r, c).text() for c in range(3)) for r in range(self.rowCount())]


class ConfusionTable(QTableWidget):
    """The confusion matrix (rows true, columns predicted)."""

    def show_matrix(self, confusion: np.ndarray, names: list[str]) -> None:
        self.clear()
        self.setRowCount(len(names))
        self.setColumnCount(len(names))
        self.setHorizontalHeaderLabels([f"→ {n}" for n in names])
        self.setVerticalHeaderLabels(names)
        for i in range(len(names)):
            for j in range(len(names)):
                self.setItem(i, j, QTableWidgetItem(str(int(confusion[i, j]))))
        self.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.setMinimumHeight(60 + 24 * len(names))


class PerClassTable(QTableWidget):
    """Precision, recall, F1 and support of every class (rows), then the macro averages."""

    HEADERS = ["precision", "recall", "F1", "support"]
    LABELS = ["prec.", "recall", "F1", "n"]  # as shown (full names in the tooltips): narrow enough for the dock

    def show_metrics(self, per_class, macro: dict | None = None) -> None:
        """`per_class`: (class, precision, recall, F1, support) rows; `macro`: ClassificationMetrics.compute()."""
        rows = [(n, f"{p:.3f}", f"{r:.3f}", f"{f:.3f}", str(int(k))) for n, p, r, f, k in per_class]
        if macro:
            rows.append(
                (
                    "macro",
                    f"{macro['precision_macro']:.3f}",
                    f"{macro['recall_macro']:.3f}",
                    f"{macro['f1_macro']:.3f}",
                    str(sum(int(k) for *_, k in per_class)),
                )
            )
        self.clear()
        self.setRowCount(len(rows))
        self.setColumnCount(len(self.HEADERS))
        self.setHorizontalHeaderLabels(self.LABELS)
        for j, header in enumerate(self.HEADERS):
            self.horizontalHeaderItem(j).setToolTip(header)
        self.setVerticalHeaderLabels([r[0] for r in rows])
        for i, row in enumerate(rows):
            for j, v in enumerate(row[1:]):
                self.setItem(i, j, QTableWidgetItem(v))
        self.setEditTriggers(QAbstractItemView.NoEditTriggers)
        # columns as wide as their values, so a narrow dock shows every value whole
        self.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeToContents)
        self.setMinimumHeight(70 + 31 * len(rows))  # every row, the header and a sideways scroll bar

    def values(self) -> dict[str, dict[str, str]]:
        """{class: {header: text}} as shown."""
        return {
            self.verticalHeaderItem(i).text(): {h: self.item(i, j).text() for j, h in enumerate(self.HEADERS)}
            for i in range(self.rowCount())
        }


def record(layer, index: int | None, cls: str, confidence: float, classes: list[str]) -> None:
    """Keep a layer's (or one of its slices') prediction in its metadata; the data stay as they are."""
    meta = dict(layer.metadata.get(META_KEY) or {})
    preds = [p for p in meta.get("predictions", []) if p[0] != index]
    meta.update(
        classes=classes,
        predictions=sorted(preds + [(index, cls, float(confidence))], key=lambda p: (p[0] is not None, p[0] or 0)),
    )
    layer.metadata = {**layer.metadata, META_KEY: meta}


def overlay_text(viewer) -> str:
    """'<layer>: <class> (87%)' for the active layer, for the slice shown when it was split."""
    layer = viewer.layers.selection.active
    meta = (getattr(layer, "metadata", None) or {}).get(META_KEY) if layer is not None else None
    if not meta:
        return ""
    preds = {p[0]: p for p in meta["predictions"]}
    if None in preds:
        _, cls, p = preds[None]
        return f"{layer.name}: {cls} ({p:.0%})"
    step = viewer.dims.current_step[0] if viewer.dims.ndim else 0
    index = int(round((step - layer.translate[0]) / layer.scale[0])) if layer.ndim else 0
    if index in preds:
        _, cls, p = preds[index]
        return f"{layer.name} slice {index}: {cls} ({p:.0%})"
    return ""


def update_overlay(viewer) -> None:
    text = overlay_text(viewer)
    viewer.text_overlay.position = "top_left"  # the bottom of the canvas is where notifications appear
    viewer.text_overlay.text = text
    viewer.text_overlay.visible = bool(text)
