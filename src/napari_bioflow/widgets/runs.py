"""The Runs view: the runs of an output folder (name, kind, workflow, date, best metric, status, as runs_index.py
reads them) and one opened: its chart (the per-epoch log), log and config as text, the config loaded into the Train
dock, its predictions and batch results as lazy (dask over zarr) layers, its folder in the file manager."""

from __future__ import annotations

from pathlib import Path

from magicgui.widgets import Container, FileEdit, PushButton
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QUrl
from qtpy.QtGui import QDesktopServices
from qtpy.QtWidgets import QAbstractItemView, QPlainTextEdit, QTableWidget, QTableWidgetItem, QTabWidget, QWidget

from .chart import TrainingChart, theme_colors
from .fields import compact, dock_layout, fit_width, form, section, status_label
from .layers import prediction_colormap
from .runs_index import RunInfo, lazy_arrays, list_runs, read_rows, workflow_of

COLUMNS = ("run", "kind", "workflow", "date", "best", "status")


class RunsWidget(QWidget):
    def __init__(self, napari_viewer, train=None):
        super().__init__()
        self.viewer = napari_viewer
        self.train = train  # the Train dock that "Load config" fills (the tabbed dock's), if any
        self.runs: list[RunInfo] = []
        self.opened: RunInfo | None = None
        self.folder = compact(
            FileEdit(
                mode="d",
                label="output folder",
                value=Path.home() / "bioflow_runs",
                tooltip="The folder the Train, Predict and Batch docks write their runs into",
            )
        )
        self.refresh_button = PushButton(text="Refresh", tooltip="Read the output folder again")
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.setMinimumHeight(120)
        self.table.setMaximumHeight(200)
        self.table.setToolTip("The runs of the output folder, newest first: choose one to open it")
        self.layers_button = PushButton(text="Add layers", tooltip="Its predictions and batch results as lazy layers")
        self.config_button = PushButton(
            text="Load config in Train", tooltip="Set the Train dock's fields from its config, to repeat or change it"
        )
        self.folder_button = PushButton(text="Open folder", tooltip="Show its results folder in the file manager")
        self.chart = TrainingChart(*theme_colors(napari_viewer))
        self.chart.setMinimumHeight(110)
        self.chart.setMaximumHeight(150)
        self.texts = QTabWidget()
        self.log_text, self.config_text = QPlainTextEdit(), QPlainTextEdit()
        for name, text in (("log", self.log_text), ("config", self.config_text)):
            text.setReadOnly(True)
            text.setLineWrapMode(QPlainTextEdit.NoWrap)
            self.texts.addTab(text, name)
        self.texts.setMinimumHeight(100)
        self.message = status_label(tooltip="The last message of this view, in full (select to copy)")

        buttons = Container(
            widgets=[self.layers_button, self.config_button, self.folder_button], layout="horizontal", labels=False
        )
        buttons.margins = (0, 0, 0, 0)
        sections = [
            section("Runs", form(self.folder), self.refresh_button, self.table, self.message),
            section("Opened run", buttons, self.chart, self.texts),
        ]
        self._scroll = dock_layout(self, sections, [])
        self.folder.changed.connect(self.refresh)
        self.refresh_button.changed.connect(self.refresh)
        self.table.itemSelectionChanged.connect(self._on_select)
        self.layers_button.changed.connect(lambda *_: self.add_layers())
        self.config_button.changed.connect(lambda *_: self.load_config())
        self.folder_button.changed.connect(lambda *_: self.open_folder())
        self._enable(False)
        self.refresh()

    def showEvent(self, event) -> None:
        fit_width(self._scroll)
        super().showEvent(event)

    def _say(self, text: str, error: bool = False) -> None:
        self.message.value = text
        (show_error if error else show_info)(text)

    def _enable(self, on: bool) -> None:
        for b in (self.layers_button, self.config_button, self.folder_button):
            b.enabled = on

    # --- the list ---------------------------------------------------------------------------------------
    def refresh(self, *_) -> None:
        text = str(self.folder.line_edit.value).strip()
        self.runs = list_runs(Path(text)) if text else []
        self.table.setRowCount(len(self.runs))
        for i, run in enumerate(self.runs):
            values = (run.name, run.kind, run.workflow, run.date.strftime("%Y-%m-%d %H:%M"), run.best, run.status)
            for j, value in enumerate(values):
                item = QTableWidgetItem(value)
                item.setToolTip(f"{value}\n{run.results}")
                self.table.setItem(i, j, item)
        self.table.resizeColumnsToContents()
        self.message.value = f"{len(self.runs)} run(s) in {text}" if text else "Choose the output folder."

    def _on_select(self) -> None:
        rows = {i.row() for i in self.table.selectedIndexes()}
        if rows:
            self.open(self.runs[min(rows)])

    def select(self, name: str) -> RunInfo:
        """Open the run called `name` (as the table's row would)."""
        index = next(i for i, r in enumerate(self.runs) if r.name == name)
        self.table.selectRow(index)
        return self.runs[index]

    # --- one run ----------------------------------------------------------------------------------------
    def open(self, run: RunInfo) -> None:
        """Show a run: its chart from the per-epoch log, its log and config as text."""
        self.opened = run
        rows = read_rows(run.log)
        cfg = {}
        try:
            import yaml

            cfg = yaml.safe_load(run.config.read_text()) if run.config.is_file() else {}
        except Exception:
            cfg = {}
        wf = workflow_of(cfg or {})
        metric = wf.chart_metric if wf is not None else ""
        if metric:
            self.chart.set_metric(metric)
        self.chart.clear()
        for row in rows:
            if isinstance(row.get("epoch"), float):
                nan = float("nan")
                value = row.get(metric, nan)
                self.chart.add(
                    int(row["epoch"]),
                    row.get("train_loss", nan),
                    row.get("val_loss", nan),
                    value if isinstance(value, float) else nan,
                )
        self.log_text.setPlainText(run.log.read_text() if run.log.is_file() else "(no training log in this run)")
        self.config_text.setPlainText(run.config.read_text() if run.config.is_file() else "(no config file)")
        self._enable(True)
        self.config_button.enabled = run.config.is_file()
        checkpoint = f"; checkpoint {run.checkpoint}" if run.checkpoint else ""
        self.message.value = f"{run.name} ({run.kind}, {run.status}): {run.results}{checkpoint}"

    def add_layers(self, run: RunInfo | None = None) -> list:
        """Its predictions (every zarr store of per_image/) as lazy layers: labels as Labels in the prediction
        colours, the other outputs as Images (one channel dropped to the image axes)."""
        run = run or self.opened
        if run is None:
            return []
        added = []
        for store in run.stores():
            for key, data in lazy_arrays(store).items():
                name = f"{run.name} {store.stem} {key}"
                if key.startswith("labels"):
                    layer = self.viewer.add_labels(data, name=name, opacity=0.6)
                    layer.colormap = prediction_colormap()
                else:
                    layer = self.viewer.add_image(data[0] if data.shape[0] == 1 else data, name=name)
                added.append(layer)
        if added:
            self.message.value = f"Added {len(added)} layer(s) of {run.name} (read from disk as they are viewed)."
        else:
            self._say(f"Run {run.name} holds no prediction to show ({run.results / 'per_image'} is empty).")
        return added

    def train_dock(self):
        """The Train dock to fill: the tabbed dock's, else a Train dock open in the same window."""
        if self.train is None:
            from .train import TrainWidget

            window = self.window()
            found = window.findChildren(TrainWidget) if window is not None else []
            return found[0] if found else None
        return self.train

    def load_config(self, run: RunInfo | None = None) -> None:
        run = run or self.opened
        train = self.train_dock()
        if run is None:
            return
        if train is None:
            self._say("Open the Train dock to load this run's config into it.", error=True)
            return
        if not run.config.is_file():
            self._say(f"Run {run.name} has no config file ({run.config}).", error=True)
            return
        train.load_config(run.config)
        self.message.value = f"Loaded the config of {run.name} into the Train tab: {run.config}"

    def open_folder(self, run: RunInfo | None = None) -> bool:
        run = run or self.opened
        if run is None:
            return False
        folder = run.results if run.results.is_dir() else run.experiment
        ok = QDesktopServices.openUrl(QUrl.fromLocalFile(str(folder)))
        if not ok:
            self._say(f"No file manager could open {folder}.", error=True)
        return ok
