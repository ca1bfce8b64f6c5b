"""The Predict dock's classification part: a classifier checkpoint predicts the chosen Image layer, every Image
layer, or each slice of a stack (a table of class and confidence, the viewer's text overlay, the layers' metadata;
the layers' data untouched), or a test folder (predictions.csv, and with class sub-folders the metrics and the
confusion matrix, also shown here). The engine's classification_results does the work in a thread worker."""

from __future__ import annotations

import threading
from pathlib import Path

from magicgui.widgets import CheckBox, ComboBox, FileEdit
from napari.layers import Image
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import QVBoxLayout, QWidget

from ..engine.errors import Cancelled, InputError
from .classes import ConfusionTable, PerClassTable, ResultsTable, record, update_overlay
from .fields import compact, form, status_label
from .jobs import Stopped
from .layers import connect_while_alive, layer_array

CHOSEN, ALL, FOLDER = "chosen layer", "all Image layers", "test folder"


def classify_job(loaded, images, device: str, cancel: threading.Event):
    """Worker: yield (layer, slice index or None, name, probabilities) per image; stop between images on cancel."""
    from ..engine.predict.classification_results import classify_array

    try:
        for layer, index, name, data in images:
            if cancel.is_set():
                raise Cancelled("classification cancelled")
            yield layer, index, name, classify_array(loaded, data, device, name)
    except (InputError, Cancelled) as e:
        yield e


def folder_job(loaded, items, out_dir: Path, device: str, cancel: threading.Event):
    from ..engine.predict.classification_results import run_class_prediction

    try:
        return run_class_prediction(loaded, items, out_dir, device, cancel.is_set)
    except (InputError, Cancelled) as e:  # a value, not a returned exception (the worker would raise that)
        return Stopped(e)


class ClassifyPanel(QWidget):
    def __init__(self, viewer, image_combo):
        super().__init__()
        self.viewer, self.image_combo = viewer, image_combo
        self.loaded = self.experiment = self._worker = None
        self.predictions: list = []  # ClassPrediction of the current layer run, for predictions.csv
        self._cancel = threading.Event()
        self.scope = ComboBox(choices=[CHOSEN, ALL, FOLDER], value=CHOSEN, label="classify")
        self.each_slice = CheckBox(
            value=False, text="each slice of a stack", tooltip="Classify every slice along the first axis as one image"
        )
        self.folder = compact(
            FileEdit(
                mode="d",
                label="test folder",
                tooltip="A folder of images, flat or in class "
                "sub-folders (then accuracy, precision, recall, F1 and the confusion matrix)",
            )
        )
        self.table = ResultsTable()
        self.confusion = ConfusionTable()
        self.per_class = PerClassTable()  # precision, recall, F1 and support of every class
        self.metrics = status_label(label="metrics")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(form(self.scope, self.each_slice, self.folder).native)
        layout.addWidget(self.table)
        layout.addWidget(form(self.metrics).native)
        layout.addWidget(self.per_class)
        layout.addWidget(self.confusion)
        self.scope.changed.connect(self._update_visibility)
        events = [viewer.layers.selection.events.active, viewer.dims.events.current_step]
        connect_while_alive(self, [(e, lambda *_: update_overlay(viewer)) for e in events])
        self._update_visibility()

    @property
    def running(self) -> bool:
        return self._worker is not None

    def _update_visibility(self, *_) -> None:
        folder = self.scope.value == FOLDER
        self.folder.visible, self.each_slice.visible = folder, not folder
        self.image_combo.visible = self.scope.value == CHOSEN
        self.confusion.setVisible(folder and self.confusion.rowCount() > 0)
        self.per_class.setVisible(folder and self.per_class.rowCount() > 0)
        self.metrics.visible = bool(self.metrics.value)

    def _images(self, cfg) -> list:
        """(layer, slice index or None, name, data) to classify, checked up front by the engine's own checks."""
        from ..engine.data.sources import check_finite, to_channels_last

        layers = (
            [self.image_combo.value]
            if self.scope.value == CHOSEN
            else [layer for layer in self.viewer.layers if isinstance(layer, Image)]
        )
        if not layers or layers[0] is None:
            raise InputError("Choose an Image layer to classify (or load one into the viewer).")
        out = []
        for layer in layers:
            data = layer_array(layer)
            parts = (
                [(i, f"image layer '{layer.name}' slice {i}", data[i]) for i in range(data.shape[0])]
                if self.each_slice.value
                else [(None, f"image layer '{layer.name}'", data)]
            )
            for index, name, part in parts:
                check_finite(to_channels_last(part, cfg.ndim, cfg.data.in_channels, name), name)
                out.append((layer, index, name, part))
        return out

    def start(self, loaded, make_experiment, device: str, on_finished) -> None:
        """Run with a loaded classifier. Every input is checked first; then `make_experiment()` creates the run
        folder that receives predictions.csv (and, for a folder with classes, the metrics)."""
        from napari.qt.threading import create_worker

        from ..engine.predict.classification_results import check_test_items, class_test_items

        cfg = loaded.config
        self.loaded, self.predictions = loaded, []
        self.table.setRowCount(0)
        self.confusion.setRowCount(0)
        self.per_class.setRowCount(0)
        self.metrics.value = ""
        self.metrics.visible = False
        self._cancel.clear()
        if self.scope.value == FOLDER:
            text = str(self.folder.line_edit.value).strip()
            if not text:
                raise InputError("Choose a test folder to classify.")
            items = class_test_items(Path(text), cfg.class_names)
            check_test_items(loaded, items)
            self.experiment = make_experiment()
            worker = create_worker(
                folder_job,
                loaded,
                items,
                self.experiment.results,
                device,
                self._cancel,
                _start_thread=False,
                _ignore_errors=True,
            )
            worker.returned.connect(self._on_folder_done)
        else:
            images = self._images(cfg)
            self.experiment = make_experiment()
            worker = create_worker(
                classify_job, loaded, images, device, self._cancel, _start_thread=False, _ignore_errors=True
            )
            worker.yielded.connect(self._on_image)
            worker.finished.connect(self._write_layer_predictions)
        worker.errored.connect(lambda e: show_error(f"Classification failed: {type(e).__name__}: {e}"))
        worker.finished.connect(self._finished)
        worker.finished.connect(on_finished)
        self._worker = worker
        worker.start()

    def cancel(self) -> None:
        self._cancel.set()

    def _on_image(self, item) -> None:
        from ..engine.predict.classification_results import ClassPrediction

        if isinstance(item, (InputError, Cancelled)):
            (show_info if isinstance(item, Cancelled) else show_error)(str(item))
            return
        layer, index, name, probs = item
        names = self.loaded.config.class_names
        k = int(probs.argmax())
        label = layer.name if index is None else f"{layer.name} [{index}]"
        self.table.add(label, names[k], float(probs[k]))
        if layer in self.viewer.layers:
            record(layer, index, names[k], float(probs[k]), names)
        self.predictions.append(ClassPrediction(label, probs, k))
        update_overlay(self.viewer)

    def _write_layer_predictions(self) -> None:
        from ..engine.predict.classification_results import write_predictions

        if self.predictions:
            out = write_predictions(self.predictions, self.loaded.config.class_names, self.experiment.results)
            show_info(f"Classified {len(self.predictions)} image(s); {out['predictions']}")

    def _on_folder_done(self, out) -> None:
        if isinstance(out, Stopped):
            (show_info if isinstance(out.error, Cancelled) else show_error)(str(out.error))
            return
        names = self.loaded.config.class_names
        for r in out["results"]:
            self.table.add(r.name, names[r.predicted], float(r.probabilities[r.predicted]))
        if out["metrics"]:
            m = out["metrics"]
            self.metrics.value = (
                f"accuracy {m['accuracy']:.3f} · macro precision {m['precision_macro']:.3f} · "
                f"recall {m['recall_macro']:.3f} · F1 {m['f1_macro']:.3f}"
            )
            self.per_class.show_metrics(out["per_class"], m)
            self.confusion.show_matrix(out["confusion"], names)
            self.metrics.visible = True
        self._update_visibility()
        show_info(f"Classified {len(out['results'])} image(s); {out['predictions']}")

    def _finished(self) -> None:
        self._worker = None
