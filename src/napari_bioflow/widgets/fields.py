"""magicgui widgets bound to RunConfig fields: default, bounds, choices and tooltip come from the config model,
so the widgets cannot drift from the config and `ConfigForm.values()` is a dict `RunConfig.from_dict` validates."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any, Literal

from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, FloatSpinBox, Label, LineEdit, SpinBox, Widget
from qtpy.QtWidgets import QGroupBox, QSizePolicy, QVBoxLayout

from ..config import RunConfig

INT_MAX = 1_000_000


def config_field(path: str):
    """The pydantic FieldInfo of a dotted RunConfig path such as 'train.epochs'."""
    model = RunConfig
    *sections, last = path.split(".")
    for part in sections:
        model = model.model_fields[part].annotation
    return model.model_fields[last]


def _optional(annotation) -> tuple[Any, bool]:
    args = typing.get_args(annotation)
    if type(None) in args:
        return next(a for a in args if a is not type(None)), True
    return annotation, False


def _bounds(field, is_int: bool, step: float) -> dict:
    out = {}
    for meta in field.metadata:
        for attr, key, shift in (("ge", "min", 0), ("gt", "min", 1), ("le", "max", 0), ("lt", "max", -1)):
            value = getattr(meta, attr, None)
            if value is not None:
                out[key] = value + shift * (1 if is_int else step)
    return out


def humanize(path: str) -> str:
    return path.split(".")[-1].replace("_", " ")


class ConfigForm:
    """Widgets keyed by config path; `values()` gives the nested dict of their current values."""

    def __init__(self):
        self.widgets: dict[str, Widget] = {}
        self._optional: set[str] = set()

    def __getitem__(self, path: str):
        return self.widgets[path]

    def add(self, path: str, *, label: str | None = None, **options) -> Widget:
        field = config_field(path)
        annotation, optional = _optional(field.annotation)
        default = options.pop("value", field.get_default(call_default_factory=True))
        kw = {"name": path.replace(".", "__"), "label": label or humanize(path), "tooltip": field.description}
        if "choices" in options or typing.get_origin(annotation) is Literal:
            widget = ComboBox(
                choices=options.pop("choices", list(typing.get_args(annotation))), value=default, **kw, **options
            )
        elif annotation is bool:
            widget = CheckBox(value=default, **kw, **options)
        elif annotation is int:
            bounds = {
                "min": 0,
                "max": INT_MAX,
                **_bounds(field, True, 1),
                **({"min": 0} if optional else {}),
            }  # 0 = not set
            widget = SpinBox(value=default or 0, **{**bounds, **options}, **kw)
        elif annotation is float and options.get("step", 0.01) < 1e-3:  # small numbers (learning rate) as 1e-3
            options.pop("step")
            widget = NumberEdit(value=default, **kw, **options)
        elif annotation is float:
            step = options.pop("step", 0.01)
            decimals = options.pop("decimals", 7 if step < 1e-3 else 3)
            bounds = {"min": 0.0, "max": 1e6, **_bounds(field, False, step)}
            widget = FloatSpinBox(value=default, step=step, **{**bounds, **options}, **kw)
            widget.native.setDecimals(decimals)
            if default is not None:  # set again: magicgui's 2 decimals had rounded it (0.0625 showed 0.06)
                widget.value = default
        elif annotation is Path:
            widget = compact(FileEdit(mode=options.pop("mode", "d"), value=default or "", **kw, **options))
        else:
            widget = LineEdit(value="" if default is None else str(default), **kw, **options)
        self.widgets[path] = widget
        if optional:
            self._optional.add(path)
        return widget

    def value(self, path: str) -> Any:
        widget = self.widgets[path]
        if isinstance(widget, FileEdit):  # an empty path box is "not set", not the current folder
            text = str(widget.line_edit.value).strip()
            return text or None
        value = widget.value
        if path in self._optional and value in (0, ""):
            return None
        return value

    def values(self) -> dict:
        out: dict = {}
        for path in self.widgets:
            put(out, path, self.value(path))
        return out


def human_number(value: float) -> str:
    """A number as people write it: 1e-3, 2.5e-4, 0.05, 10 (not 0.0010000)."""
    value = float(value)
    if value != 0 and abs(value) < 0.01:
        mantissa, exponent = f"{value:.3e}".split("e")
        return f"{float(mantissa):g}e{int(exponent)}"
    return f"{value:g}"


class NumberEdit(LineEdit):
    """A float field typed as text, shown as people write it (human_number); `value` is the float, or the text
    itself when it is not a number (the config then says so, naming the field)."""

    def __init__(self, value: float = 0.0, **kwargs):
        kwargs.pop("min", None), kwargs.pop("max", None)
        super().__init__(value=human_number(value), **kwargs)

    @property
    def value(self):
        text = LineEdit.value.fget(self).strip()
        try:
            return float(text)
        except ValueError:
            return text

    @value.setter
    def value(self, value) -> None:
        LineEdit.value.fset(self, value if isinstance(value, str) else human_number(value))


def put(tree: dict, path: str, value: Any) -> None:
    *sections, last = path.split(".")
    for part in sections:
        tree = tree.setdefault(part, {})
    tree[last] = value


def parse_ints(text: str, what: str) -> list[int]:
    """'16, 32 64' -> [16, 32, 64]; raises InputError naming `what` on anything else."""
    from ..engine.errors import InputError

    parts = text.replace(",", " ").split()
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise InputError(f"{what} must be whole numbers separated by commas, not '{text}'.") from None
    if any(v < 1 for v in values):
        raise InputError(f"{what} must be positive, not '{text}'.")
    return values


def compact(file_edit: FileEdit) -> FileEdit:
    """A file picker whose button is "…" rather than "Choose directory", leaving room for the path."""
    button = file_edit.choose_btn
    button.tooltip, button.text, button.max_width = button.text, "…", 30
    file_edit.margins = (0, 0, 0, 0)
    return file_edit


def status_label(value: str = "", **kwargs) -> Label:
    """A status line that wraps instead of widening the dock (long paths, long messages)."""
    from qtpy.QtCore import Qt

    label = Label(value=value, **kwargs)
    label.native.setWordWrap(True)
    label.native.setTextInteractionFlags(Qt.TextSelectableByMouse)  # a message can be copied
    label.native.setAlignment(Qt.AlignLeft | Qt.AlignTop)
    label.native.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Preferred)
    return label


def toast_if_shown(owner, text: str) -> None:
    """A warning notification for `text`, once the events in progress are done, if the dock `owner` is still shown
    (a layer deleted by the user, not the layers a closing viewer takes away with it)."""
    from napari.utils.notifications import show_warning
    from qtpy.QtCore import QTimer

    def later():
        try:
            shown = owner.isVisible() and owner.window().isVisible()
        except RuntimeError:  # the dock is gone
            return
        if shown:
            show_warning(text)

    QTimer.singleShot(0, later)


def in_dock_words(text: str, words: dict[str, str], config_is: str = "the dock is set to") -> str:
    """An engine or config message in a dock's words: config keys (data.val_split, val_split, n_classes) become the
    dock's field labels ("validation fraction", "classes"), as `words` maps them (config path -> label). The
    config's "Source: field 'a.b': problem." becomes "label: problem."; a hint to set a key the dock has no field for
    goes, and "the config is" becomes `config_is`."""
    import re

    def label(key: str) -> str | None:
        if key in words:
            return words[key]
        matches = [w for path, w in words.items() if path.split(".")[-1] == key.split(".")[-1]]
        return matches[0] if len(set(matches)) == 1 else None

    def field(m: re.Match) -> str:
        found = label(m.group(1))
        return f"{found}:" if found else m.group(0)

    text = re.sub(r"^\w+: field '([\w.]+)':", field, text)
    for key in sorted(words, key=len, reverse=True):
        short = key.split(".")[-1]
        for pattern in {rf"\b{re.escape(key)}\b", *([rf"\b{re.escape(short)}\b"] if "_" in short else [])}:
            text = re.sub(rf"set {pattern}: (\w+)", lambda m, k=key: f'set "{words[k]}" to {m.group(1)}', text)
            text = re.sub(rf"set {pattern}\b", lambda m, k=key: f'set "{words[k]}"', text)
            if "." in key or "_" in key:  # a plain word (name, device) stays a word
                text = re.sub(pattern, lambda m, k=key: words[k], text)
    text = re.sub(r"\s*\(set [a-z_.]+: \w+\)", "", text)  # a field this dock does not have
    text = re.sub(r"; set [a-z_.]+\.", ".", text)
    return text.replace("the config is", config_is)


def group(title: str, *widgets: Widget | Container) -> QGroupBox:
    """A titled box around magicgui widgets (a Container shows its field labels)."""
    box = QGroupBox(title)
    layout = QVBoxLayout(box)
    layout.setContentsMargins(6, 4, 6, 4)
    layout.setSpacing(2)
    for w in widgets:
        layout.addWidget(w.native)
    box.setSizePolicy(QSizePolicy.Preferred, QSizePolicy.Maximum)
    return box


def section(title: str, *widgets, expanded: bool = True):
    """A section that folds (superqt QCollapsible) around magicgui or Qt widgets; open unless `expanded` is False."""
    from superqt import QCollapsible

    box = QCollapsible(title)
    box.setDuration(0)  # no animation: folding is instant, and renders and tests see the final layout
    for w in widgets:
        box.addWidget(getattr(w, "native", w))
    box.layout().setContentsMargins(0, 0, 0, 0)
    if expanded:
        box.expand(animate=False)
    else:
        box.collapse(animate=False)
    return box


def dock_layout(owner, sections: list, footer: list):
    """The docks' layout: the sections scroll; the footer (buttons, progress, messages, chart) sits below them at its
    full height while the dock has room, and scrolls too when it has not, so a dock asks for little height: several
    docks stacked never make the window taller than the screen. Returns the sections' scroll area."""
    from qtpy.QtCore import QEvent, QSize, Qt
    from qtpy.QtWidgets import QScrollArea, QSizePolicy, QVBoxLayout, QWidget

    class Footer(QScrollArea):
        def sizeHint(self):  # its content's full height at its width (wrapped messages), not capped at 24 lines
            content = self.widget()
            hint = content.sizeHint()
            width = self.viewport().width()
            height = content.layout().heightForWidth(width) if content.layout().hasHeightForWidth() else -1
            return QSize(hint.width(), max(hint.height(), height) + 2)

        def eventFilter(self, obj, event):  # a longer message or a shown row: ask the dock for room again
            if event.type() in (QEvent.LayoutRequest, QEvent.Resize):
                self.updateGeometry()
            return super().eventFilter(obj, event)

    class Sections(QScrollArea):
        def sizeHint(self):  # modest: the footer gets its full height first, the sections take what is left
            return QSize(super().sizeHint().width(), 160)

    def scrolled(widgets, cls=QScrollArea):
        content = QWidget()
        layout = QVBoxLayout(content)
        layout.setContentsMargins(4, 2, 4, 2)
        layout.setSpacing(2)
        for w in widgets:
            layout.addWidget(getattr(w, "native", w))
        scroll = cls()
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        scroll.setFrameShape(QScrollArea.NoFrame)
        scroll.setWidget(content)
        return scroll, layout

    scroll, layout = scrolled(sections, Sections)
    layout.addStretch(1)
    scroll.setMinimumHeight(60)
    scroll.setSizePolicy(QSizePolicy.Preferred, QSizePolicy.Expanding)
    outer = QVBoxLayout(owner)
    outer.setContentsMargins(0, 0, 0, 0)
    outer.setSpacing(2)
    outer.addWidget(scroll, 1)
    if footer:
        bottom, _ = scrolled(footer, Footer)
        bottom.widget().installEventFilter(bottom)
        bottom.setMinimumHeight(60)
        bottom.setSizePolicy(QSizePolicy.Preferred, QSizePolicy.Preferred)
        outer.addWidget(bottom, 0)
    return scroll


def fit_width(scroll) -> None:
    """As wide as the scrolled fields need once styled (the theme's style sheet applies only when shown)."""
    scroll.setMinimumWidth(scroll.widget().minimumSizeHint().width() + scroll.verticalScrollBar().sizeHint().width())


def form(*widgets: Widget) -> Container:
    """A labelled column of widgets with tight margins."""
    c = Container(widgets=list(widgets))
    c.margins = (0, 0, 0, 0)
    return c


def format_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
