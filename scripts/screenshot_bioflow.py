"""Render the bioflow dock (tabs Train | Predict | Batch | Runs) at laptop sizes into docs/images/: run under a
display, e.g.  xvfb-run -a -s "-screen 0 1700x1100x24" .venv/bin/python scripts/screenshot_bioflow.py
The 2D sample is trained with the Train tab's defaults (3 epochs), then each tab is shown at 1366x768 (and the
Train tab at 1600x1000). Prints the window height and whether the buttons are in view."""

import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_API", "pyqt6")
REPO = Path(__file__).resolve().parents[1]
from napari_bioflow.widgets.shared import load_triton_safely

load_triton_safely()
import napari
from qtpy.QtWidgets import QApplication

from napari_bioflow.sample_data import bbbc007_nuclei

OUT = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "docs" / "images"
OUT.mkdir(parents=True, exist_ok=True)
runs = Path(tempfile.mkdtemp(prefix="bioflow-shot-"))


def settle(seconds: float = 0.5) -> None:
    end = time.time() + seconds
    while time.time() < end:
        QApplication.processEvents()
        time.sleep(0.02)


def in_view(widget, window) -> bool:
    """Whether a widget is shown whole inside the window (not scrolled away, not cut)."""
    if not widget.isVisible() or widget.visibleRegion().isEmpty():
        return False
    top_left = widget.mapTo(window, widget.rect().topLeft())
    return window.rect().contains(top_left) and window.rect().contains(top_left + widget.rect().bottomRight())


viewer = napari.Viewer()
for data, meta, kind in bbbc007_nuclei():
    getattr(viewer, f"add_{kind}")(data, **meta)
_, dock = viewer.window.add_plugin_dock_widget("napari-bioflow", "bioflow")
window = viewer.window._qt_window
window.resize(1366, 768)
settle()
train = dock.train
train.form["output_dir"].value = runs
train.form["train.epochs"].value = 3
train.train_button.native.click()
while train.running:
    settle(0.2)
settle(1)
shots = {"Train": dock.train, "Predict": dock.predict, "Batch": dock.batch, "Runs": dock.runs}
for w, h in ((1366, 768), (1600, 1000)):
    window.resize(w, h)
    for name, tab in shots.items():
        if (w, h) != (1366, 768) and name != "Train":
            continue
        dock.tabs.setCurrentWidget(tab)
        if name == "Runs" and dock.runs.runs:
            dock.runs.table.selectRow(0)
        settle(1)
        path = OUT / f"dock_{name.lower()}_{w}x{h}.png"
        window.grab().save(str(path))
        buttons = {
            "Train": [train.train_button.native, train.progress.native, train.chart],
            "Predict": [dock.predict.predict_button.native, dock.predict.progress.native],
            "Batch": [dock.batch.run_button.native, dock.batch.overall.native],
            "Runs": [dock.runs.table],
        }[name]
        print(path.name, "window", window.height(), "px; in view:", all(in_view(b, window) for b in buttons))
viewer.close()
