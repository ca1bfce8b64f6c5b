"""The Batch dock with real viewers (under Xvfb): a folder of real BBBC007 crops predicted by a tiny model, progress,
the current file's result as it is produced, every result opened as dask-backed layers, a bad file named in a
notification while the batch goes on, setup mistakes, cancel and resume, a local dask cluster."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import tifffile
from helpers import BBBC, crop_folders, read_csv, tiny_config, write_image
from napari.layers import Image, Labels

from napari_bioflow.widgets import batch as batch_module
from napari_bioflow.widgets.batch import FROM_FILE, LOCAL_DASK, BatchWidget

NAMES = ["A9_A9_p5d.tif", "f96_17_17P1_POS0006_D_1UL.tif", "z_other_size.tif"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from napari_bioflow.engine.train import Trainer

    root = tmp_path_factory.mktemp("bw_ckpt")
    raw, label = crop_folders(root / "train", "train", n=4, size=128)
    trainer = Trainer(tiny_config(root / "runs", raw, label, train={"epochs": 2, "steps_per_epoch": 4}))
    for _ in trainer.run():
        pass
    return trainer.best_checkpoint


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Two test crops of 160x160 and one of 96x128, with their masks."""
    root = tmp_path_factory.mktemp("bw_data")
    raw_dir, label_dir = crop_folders(root, "test", n=2, size=160)
    raw = tifffile.imread(BBBC / "train" / "raw" / "A9_A9_p10d.tif")[:96, :128]
    label = tifffile.imread(BBBC / "train" / "label" / "A9_A9_p10d.tif")[:96, :128]
    write_image(raw_dir / NAMES[2], np.ascontiguousarray(raw))
    write_image(label_dir / NAMES[2], np.ascontiguousarray(label))
    return raw_dir, label_dir


@pytest.fixture
def errors(monkeypatch):
    shown: list[str] = []
    monkeypatch.setattr(batch_module, "show_error", shown.append)
    return shown


def dock(viewer, checkpoint, raw_dir, out, labels_dir=None) -> BatchWidget:
    widget = BatchWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.model_source.value = FROM_FILE
    widget.checkpoint.value = checkpoint
    widget.input.value = raw_dir
    if labels_dir is not None:
        widget.labels.value = labels_dir
    widget.form["output_dir"].value, widget.form["device"].value = out, "cpu"
    return widget


def test_batch_dock_opens_from_the_manifest(make_napari_viewer):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-bioflow", "Batch")
    assert isinstance(widget, BatchWidget)


def test_batch_through_the_widget(make_napari_viewer, qtbot, wait_idle, tmp_path, checkpoint, folder):
    viewer = make_napari_viewer()
    widget = dock(viewer, checkpoint, *[folder[0], tmp_path], labels_dir=folder[1])
    current: list = []
    original = widget._show_current

    def spy(data, name, final):
        current.append((type(data), name, final))
        original(data, name, final)

    widget._show_current = spy
    widget.run_button.native.click()
    assert widget.running
    wait_idle(widget)
    s = widget.summary
    run_dir = tmp_path / "batch" / "results" / "batch_1"
    assert s is not None and s.run_dir == run_dir and s.done == NAMES and not s.failed
    assert widget.overall.value == widget.overall.max and widget.file_progress.value == widget.file_progress.max
    assert "Batch done: 3 predicted" in widget.summary_label.value and "files/s" in widget.summary_label.value
    # the current file's result, as it is produced (dask over the zarr being written), then its final labels
    assert [c[1:] for c in current] == [(n, f) for n in NAMES for f in (False, True)]
    assert all(c[0] is da.Array for c in current)
    layer = widget.current_layer
    assert isinstance(layer, Labels) and layer.name == f"batch: {NAMES[-1]}" and isinstance(layer.data, da.Array)
    np.testing.assert_array_equal(
        layer.data.compute(), tifffile.imread(run_dir / "per_image_binarized" / "z_other_size.tif")
    )
    assert [r["image"] for r in read_csv(run_dir / "metrics.csv")] == [*NAMES, "ALL (pixels pooled)"]
    # every result, lazily: one stacked layer per output and image shape
    added = widget.open_results()
    names = [a.name for a in added]
    like = "2 files like A9_A9_p5d.tif"
    assert names == [
        f"batch images ({like})",
        f"batch probabilities ({like})",
        f"batch labels ({like})",
        "batch images (z_other_size.tif)",
        "batch probabilities (z_other_size.tif)",
        "batch labels (z_other_size.tif)",
    ]
    images, prob, labels = added[:3]
    assert all(isinstance(a.data, da.Array) for a in added)
    assert isinstance(images, Image) and images.data.shape == (2, 160, 160)
    assert isinstance(prob, Image) and prob.data.shape == (2, 2, 160, 160)  # class, file, Y, X
    assert isinstance(labels, Labels) and labels.data.shape == (2, 160, 160)  # file, Y, X: the same file slider
    assert viewer.dims.axis_labels[:2] == ("class", "file")
    for i, name in enumerate(NAMES[:2]):
        stem = name.split(".")[0]
        np.testing.assert_array_equal(images.data[i].compute(), tifffile.imread(folder[0] / name))
        np.testing.assert_array_equal(
            labels.data[i].compute(), tifffile.imread(run_dir / "per_image_binarized" / f"{stem}.tif")
        )
        np.testing.assert_allclose(prob.data[:, i].compute(), tifffile.imread(run_dir / "per_image" / f"{stem}.tif"))
    assert added[5].data.shape == (1, 96, 128) and labels.metadata["batch_files"] == NAMES[:2]


def test_a_bad_file_is_named_and_the_batch_goes_on(make_napari_viewer, wait_idle, errors, tmp_path, checkpoint, folder):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(folder[0], data)
    (data / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    viewer = make_napari_viewer()
    widget = dock(viewer, checkpoint, data, tmp_path / "out")
    widget.start()
    wait_idle(widget)
    assert len(errors) == 1 and "broken.png" in errors[0] and errors[0].count(". ") == 0
    s = widget.summary
    assert s.done == NAMES and [n for n, _ in s.failed] == ["broken.png"]
    assert "failed: broken.png:" in widget.summary_label.value and "1 failed (broken.png)" in widget.summary_label.value


def test_setup_mistakes_are_one_sentence_and_write_nothing(
    make_napari_viewer, wait_idle, errors, tmp_path, checkpoint, folder
):
    viewer = make_napari_viewer()
    widget = dock(viewer, checkpoint, tmp_path / "missing", tmp_path / "out")
    widget.start()
    wait_idle(widget)  # the run is set up (the checkpoint opened) in a worker
    assert "missing" in errors[-1] and "does not exist" in errors[-1] and not widget.running
    widget.input.line_edit.value = ""  # the user clears the field
    widget.start()
    assert "input folder" in errors[-1] and not widget.running
    widget.input.value = folder[0]
    widget.resume.value = tmp_path
    widget.start()
    wait_idle(widget)
    assert "is not a batch run folder" in errors[-1] and not widget.running
    assert len(errors) == 3 and all(e.count(". ") == 0 for e in errors)
    assert not (tmp_path / "out").exists()


def test_cancel_then_resume_from_the_widget(make_napari_viewer, qtbot, wait_idle, tmp_path, checkpoint, folder):
    viewer = make_napari_viewer()
    widget = dock(viewer, checkpoint, folder[0], tmp_path)
    widget.tile.value, widget.form["predict.batch_size"].value = 32, 1  # many small tiles: a cancel lands mid-file
    widget.run_button.native.click()
    qtbot.waitUntil(lambda: widget.file_progress.value >= 1, timeout=60_000)
    widget.cancel_button.native.click()
    wait_idle(widget)
    s = widget.summary
    run_dir = tmp_path / "batch" / "results" / "batch_1"
    assert s.cancelled and s.not_run and str(widget.resume.value) == str(run_dir)
    widget.input.line_edit.value = ""  # a resumed run keeps its own folders and checkpoint
    widget.run_button.native.click()
    wait_idle(widget)
    s2 = widget.summary
    assert not s2.cancelled and s2.run_dir == run_dir and sorted(s2.done + s2.finished_earlier) == NAMES
    assert len(list((tmp_path / "batch" / "results").iterdir())) == 1
    assert "tile_size:\n  - 32\n  - 32" in (tmp_path / "batch" / "config_files" / "batch_1.yaml").read_text()


def test_a_local_dask_cluster_from_the_widget(make_napari_viewer, wait_idle, tmp_path, checkpoint, folder):
    viewer = make_napari_viewer()
    widget = dock(viewer, checkpoint, folder[0], tmp_path / "dask")
    widget.where.value, widget.workers.value = LOCAL_DASK, 2
    assert not widget.workers.native.isHidden() and widget.scheduler.native.isHidden()
    widget.start()
    wait_idle(widget, 180)
    assert widget.started.mode == "dask LocalCluster of 2 worker process(es)"
    assert sorted(widget.summary.done) == NAMES
    single = dock(viewer, checkpoint, folder[0], tmp_path / "single")
    single.start()
    wait_idle(single)
    for name in NAMES:
        stem = name.split(".")[0]
        np.testing.assert_allclose(
            tifffile.imread(widget.summary.run_dir / "per_image" / f"{stem}.tif"),
            tifffile.imread(single.summary.run_dir / "per_image" / f"{stem}.tif"),
            atol=1e-5,
        )
    added = widget.open_results()
    assert all(isinstance(a.data, da.Array) for a in added) and len(added) == 6
