"""The one dock of the plugin: tabs Train | Predict | Batch | Runs (and Export when installed), so the docks share
the height of the window instead of crushing each other. Each tab is the dock of the same name; every tab scrolls
its fields and keeps its buttons, progress and messages in view."""

from __future__ import annotations

from qtpy.QtWidgets import QTabWidget, QVBoxLayout, QWidget


class BioflowDock(QWidget):
    def __init__(self, napari_viewer):
        super().__init__()
        from .batch import BatchWidget
        from .predict import PredictWidget
        from .runs import RunsWidget
        from .train import TrainWidget

        self.viewer = napari_viewer
        self.train = TrainWidget(napari_viewer)
        self.predict = PredictWidget(napari_viewer)
        self.batch = BatchWidget(napari_viewer)
        self.runs = RunsWidget(napari_viewer, train=self.train)
        self.tabs = QTabWidget()
        self.tabs.setDocumentMode(True)
        for name, widget in (
            ("Train", self.train),
            ("Predict", self.predict),
            ("Batch", self.batch),
            ("Runs", self.runs),
        ):
            self.tabs.addTab(widget, name)
        export = _export_dock(napari_viewer)
        if export is not None:
            self.export = export
            self.tabs.addTab(export, "Export")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.tabs)
        self.tabs.currentChanged.connect(self._on_tab)
        # the Predict, Batch and Runs tabs follow the Train tab's output folder
        self.train.form["output_dir"].changed.connect(self._follow_output)
        self._follow_output()

    def sizeHint(self):
        """As wide as the widest tab's fields need (not as wide as the Runs table could be), so the viewer's canvas
        keeps the room."""
        from qtpy.QtCore import QSize

        return QSize(max(360, self.minimumSizeHint().width() + 10), super().sizeHint().height())

    def _follow_output(self, *_) -> None:
        value = self.train.form.value("output_dir")
        if value:  # one output folder for the tabs: the Runs tab lists what each of them wrote
            self.runs.folder.value = value
            for dock in (self.predict, self.batch):
                dock.form["output_dir"].value = value

    def _on_tab(self, index: int) -> None:
        if self.tabs.widget(index) is self.runs:
            self.runs.refresh()  # runs finished since


def _export_dock(viewer):
    """The Export dock, when this version has one (widgets/export.py)."""
    try:
        from .export import ExportWidget
    except ImportError:
        return None
    return ExportWidget(viewer)
