"""The Export dock: a checkpoint (or the model just trained) written as a BioImage Model Zoo package (zip) for
Fiji/deepImageJ, ilastik, QuPath or the zoo. The export (weights converted, bioimageio.core's test of the package)
runs in a napari thread worker, so the viewer never waits; the status line gives the result in one sentence."""

from __future__ import annotations

from pathlib import Path

from magicgui.widgets import Container, FileEdit, Label, LineEdit, PushButton
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import QVBoxLayout, QWidget

from ..engine.errors import InputError
from .layers import connect_while_alive
from .shared import last_trained, load_triton_safely


def _path(edit: FileEdit) -> Path | None:
    text = str(edit.value) if edit.value is not None else ""
    return Path(text) if text and text != "." else None


class ExportWidget(QWidget):
    """checkpoint, name, authors (comma separated), licence, citation (optional), test image (optional) and the
    package to write; Export runs it in a worker thread."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self._worker = None
        self.result = None
        tip = "A napari-bioflow checkpoint (.pth)"
        self.checkpoint = FileEdit(mode="r", filter="*.pth", label="checkpoint", tooltip=tip)
        self.name = LineEdit(label="name", tooltip="The model's name (letters, digits, spaces and _+-()); optional")
        self.authors = LineEdit(label="authors", tooltip="Authors' names, separated by commas")
        self.licence = LineEdit(value="CC-BY-4.0", label="licence", tooltip="An SPDX licence id, e.g. CC-BY-4.0")
        self.cite = LineEdit(label="citation", tooltip="Optional: 'text DOI-or-URL' of the paper to cite")
        self.image = FileEdit(
            mode="r", label="test image", tooltip="Optional: a real image for the test tensors (default: the run's)"
        )
        self.output = FileEdit(mode="w", filter="*.zip", label="package (.zip)", tooltip="The package to write")
        self.export_button = PushButton(text="Export")
        self.status = Label(value="")
        self.status.native.setWordWrap(True)
        self.form = Container(
            widgets=[
                self.checkpoint,
                self.name,
                self.authors,
                self.licence,
                self.cite,
                self.image,
                self.output,
                self.export_button,
                self.status,
            ]
        )
        layout = QVBoxLayout(self)
        layout.addWidget(self.form.native)
        layout.addStretch(1)
        self.export_button.changed.connect(self.start)
        self.checkpoint.changed.connect(self._suggest_output)
        connect_while_alive(self, [(last_trained.changed, self._on_trained)])
        if last_trained.checkpoint is not None:
            self._on_trained(last_trained.checkpoint)

    @property
    def running(self) -> bool:
        return self._worker is not None

    def _on_trained(self, checkpoint) -> None:
        if not self.running:
            self.checkpoint.value = str(checkpoint)

    def _suggest_output(self, *_) -> None:
        ckpt = _path(self.checkpoint)
        if ckpt is not None and _path(self.output) is None:
            self.output.value = str(ckpt.with_name(ckpt.name.removesuffix(".pth") + ".bmz.zip"))

    def request(self) -> dict:
        """The export's arguments from the fields; InputError naming the field that is wrong."""
        ckpt, out = _path(self.checkpoint), _path(self.output)
        if ckpt is None or not ckpt.is_file():
            raise InputError("Choose a checkpoint file (.pth) to export (checkpoint).")
        if out is None:
            raise InputError("Choose where to write the package (package (.zip)).")
        authors = [a.strip() for a in str(self.authors.value).split(",") if a.strip()]
        if not authors:
            raise InputError("Give at least one author (authors, separated by commas).")
        return {
            "checkpoint": ckpt,
            "output": out,
            "name": str(self.name.value).strip() or None,
            "authors": authors,
            "licence": str(self.licence.value).strip(),
            "cite": [str(self.cite.value).strip()] if str(self.cite.value).strip() else [],
            "input_image": _path(self.image),
        }

    def start(self, *_) -> None:
        from napari.qt.threading import create_worker

        if self.running:
            return
        try:
            kwargs = self.request()
        except InputError as e:
            self._error(str(e))
            return
        self.result = None
        self.status.value = f"exporting {kwargs['checkpoint'].name}: converting the weights and testing the package…"
        self.export_button.enabled = False
        worker = create_worker(
            _export,
            kwargs.pop("checkpoint"),
            kwargs.pop("output"),
            **kwargs,
            _start_thread=False,
            _ignore_errors=True,
        )
        worker.returned.connect(self._on_done)
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        worker.start()

    def _on_done(self, result) -> None:
        self.result = result
        self.status.value = result.sentence()
        show_info(result.sentence())

    def _on_error(self, e) -> None:
        self._error(str(e) if isinstance(e, InputError) else f"Export failed: {type(e).__name__}: {e}")

    def _on_finished(self) -> None:
        self._worker = None
        self.export_button.enabled = True

    def _error(self, text: str) -> None:
        self.status.value = text
        show_error(text)


def _export(checkpoint, output, **kwargs):
    """In the worker thread: triton and the exporter (bioimageio, onnx) are imported here, not on the GUI thread."""
    load_triton_safely()
    from ..engine.export.exporter import export_model

    return export_model(checkpoint, output, **kwargs)
