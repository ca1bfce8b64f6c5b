"""The Export dock (BioImage Model Zoo) in a real viewer: a package written from a worker thread, the result
sentence in its status line, and a missing author refused in the dock's words."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import tifffile
from helpers import BBBC, dock, headless_checkpoint

pytest.importorskip("bioimageio.core")

from napari_bioflow.widgets import export as export_module  # noqa: E402
from napari_bioflow.widgets.export import ExportWidget  # noqa: E402


@pytest.fixture
def shown(monkeypatch):
    out = {"error": [], "info": []}
    monkeypatch.setattr(export_module, "show_error", out["error"].append)
    monkeypatch.setattr(export_module, "show_info", out["info"].append)
    return out


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    name = "A9_A9_p10d.tif"
    raw = tifffile.imread(BBBC / "train" / "raw" / name)[:128, :128]
    label = tifffile.imread(BBBC / "train" / "label" / name)[:128, :128]
    out = tmp_path_factory.mktemp("export_dock")
    tifffile.imwrite(out / "image.tif", raw)
    return headless_checkpoint(out, raw, (label > 0).astype(np.uint8)), out / "image.tif"


def test_export_dock_writes_a_tested_package(make_napari_viewer, qtbot, wait_idle, shown, checkpoint, tmp_path):
    ckpt, image = checkpoint
    widget = dock(make_napari_viewer(), ExportWidget(make_napari_viewer()))
    widget.checkpoint.value = str(ckpt)
    assert str(widget.output.value).endswith(".bmz.zip")  # suggested beside the checkpoint
    widget.output.value = str(tmp_path / "nuclei.zip")
    widget.authors.value = "Ada Lovelace, Alan Turing"
    widget.name.value = "BBBC007 nuclei"
    widget.image.value = str(image)
    widget.export_button.clicked.emit()
    assert widget.running and not widget.export_button.enabled  # the viewer does not wait
    wait_idle(widget, 300)
    assert shown["error"] == []
    assert widget.result is not None and widget.result.path == tmp_path / "nuclei.zip"
    assert widget.status.value.startswith(f"Exported {tmp_path / 'nuclei.zip'} with weights pytorch_state_dict")
    assert "bioimageio.core test passed" in widget.status.value and widget.export_button.enabled
    with zipfile.ZipFile(tmp_path / "nuclei.zip") as z:
        rdf = z.read("rdf.yaml").decode()
    assert "name: BBBC007 nuclei" in rdf and "Alan Turing" in rdf


def test_export_dock_refuses_a_package_without_author(make_napari_viewer, shown, checkpoint, tmp_path):
    widget = dock(make_napari_viewer(), ExportWidget(make_napari_viewer()))
    widget.checkpoint.value = str(checkpoint[0])
    widget.output.value = str(tmp_path / "m.zip")
    widget.export_button.clicked.emit()
    assert not widget.running
    assert shown["error"] == ["Give at least one author (authors, separated by commas)."]
    assert widget.status.value == shown["error"][0] and not (tmp_path / "m.zip").exists()


def test_the_predict_and_batch_docks_take_the_package(make_napari_viewer, qtbot, wait_idle, checkpoint, tmp_path):
    from napari_bioflow.engine.export.exporter import export_model
    from napari_bioflow.widgets.batch import FROM_FILE, BatchWidget
    from napari_bioflow.widgets.predict import PredictWidget

    ckpt, image = checkpoint
    package = export_model(ckpt, tmp_path / "m.zip", authors=["A B"], input_image=image).path
    viewer = make_napari_viewer()
    viewer.add_image(tifffile.imread(image), name="nuclei")
    predict = dock(viewer, PredictWidget(viewer))
    assert "*.zip" in predict.checkpoint.filter
    predict.model_source.value = "checkpoint file"
    predict.checkpoint.value = package
    predict.form["output_dir"].value, predict.form["device"].value = tmp_path / "p", "cpu"
    predict.predict_button.native.click()
    qtbot.waitUntil(lambda: "nuclei labels" in viewer.layers, timeout=60_000)
    wait_idle(predict)
    assert viewer.layers["nuclei probabilities"].data.shape == (2, 128, 128)
    batch = dock(viewer, BatchWidget(viewer))
    assert "*.zip" in batch.checkpoint.filter
    batch.model_source.value = FROM_FILE
    batch.checkpoint.value = package
    batch.input.value = image.parent
    batch.form["output_dir"].value, batch.form["device"].value = tmp_path / "b", "cpu"
    batch.run_button.native.click()
    wait_idle(batch, 120)
    assert batch.summary is not None and next((tmp_path / "b").rglob("per_image_binarized/image.tif")).is_file()
