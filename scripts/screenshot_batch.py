"""Render docs/screenshot_batch.png: run under a display, e.g.
xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/screenshot_batch.py
"""

import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from napari_bioflow.widgets.shared import load_triton_safely

load_triton_safely()
import warnings

warnings.filterwarnings("ignore", message=".*PyQt5.*")
import napari
from helpers import BBBC, tiny_config
from qtpy.QtWidgets import QApplication

from napari_bioflow.engine.train import Trainer
from napari_bioflow.widgets.batch import FROM_FILE, BatchWidget

root = Path(tempfile.mkdtemp(prefix="bioflow-shot-"))
shutil.rmtree(root, ignore_errors=True)
# a small model trained a little longer than the tests' so the masks look like nuclei
cfg = tiny_config(
    root / "ckpt",
    BBBC / "train" / "raw",
    BBBC / "train" / "label",
    model={"options": {"feature_maps": [16, 32, 64]}},
    data={"patch_size": [128, 128], "val_split": 0.25},
    train={"epochs": 12, "steps_per_epoch": 8, "batch_size": 4, "learning_rate": 2e-3},
)
t = Trainer(cfg)
for _ in t.run():
    pass
folder = root / "images"
folder.mkdir(parents=True)
for split in ("test", "train"):
    for p in sorted((BBBC / split / "raw").glob("*.tif")):
        shutil.copy(p, folder / p.name)
(folder / "corrupt_export.tif").write_bytes(b"II*\x00 broken")

from napari_bioflow.widgets import batch as batch_module

batch_module.show_error = lambda msg: print("error:", msg)  # the dock's summary shows it; keep the toast area clear
viewer = napari.Viewer()
w = BatchWidget(viewer)
viewer.window.add_dock_widget(w, name="Batch (napari-bioflow)")
w.model_source.value = FROM_FILE
w.checkpoint.value = t.best_checkpoint
w.input.value = folder
w.form["output_dir"].value = root / "runs"
w.form["device"].value = "cpu"
app = QApplication.instance()
w.start()
while w.running:
    app.processEvents()
    time.sleep(0.02)
app.processEvents()
added = w.open_results()
for layer in viewer.layers:  # show one group: the 4 A9 images with their labels; file 2 of them
    layer.visible = "A9_A9_p10d" in layer.name and "probabilities" not in layer.name
viewer.dims.set_current_step(viewer.dims.axis_labels.index("file"), 1)
viewer.window._qt_window.resize(1500, 900)
viewer.window._qt_window.show()
for _ in range(30):
    app.processEvents()
    time.sleep(0.05)
viewer.reset_view()
for _ in range(10):
    app.processEvents()
    time.sleep(0.05)
from napari._qt.dialogs.qt_notification import NapariQtNotification

for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
    if "Batch" not in toast.message.text():  # napari's own PyQt5 deprecation notice
        toast.close()
for _ in range(10):
    app.processEvents()
    time.sleep(0.05)
shot = viewer.screenshot(canvas_only=False, flash=False)
import imageio.v3 as iio

iio.imwrite(REPO / "docs" / "screenshot_batch.png", shot)
print("summary:", w.summary.text(), [l.name for l in viewer.layers])
viewer.close()
