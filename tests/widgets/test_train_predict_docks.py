"""The Train and Predict docks with real viewers (under Xvfb): layer choices, training, preview, prediction into
dask-backed layers, bad input as notifications, cancel. Tiny models on real crops keep every test short."""

from __future__ import annotations

import time

import dask.array as da
import numpy as np
import pytest
import tifffile
from helpers import BBBC, NUCLEI, TINY_MODEL, dock, headless_checkpoint, labels_expected
from napari.layers import Image, Labels

from napari_bioflow.engine.train.checkpoint import load_model
from napari_bioflow.widgets import predict as predict_module
from napari_bioflow.widgets import train as train_module
from napari_bioflow.widgets.predict import JUST_TRAINED, PredictWidget
from napari_bioflow.widgets.shared import last_trained
from napari_bioflow.widgets.train import TrainWidget


@pytest.fixture(scope="module")
def crop2d():
    name = "A9_A9_p10d.tif"
    return tifffile.imread(BBBC / "train" / "raw" / name)[:256, :256], tifffile.imread(BBBC / "train" / "label" / name)[
        :256, :256
    ]


@pytest.fixture(scope="module")
def crop3d():
    name = "nuclei_train.tif"
    return (
        tifffile.imread(NUCLEI / "train" / "raw" / name)[:16, :128, :96],
        tifffile.imread(NUCLEI / "train" / "label" / name)[:16, :128, :96],
    )


@pytest.fixture(scope="module")
def checkpoint_2d(tmp_path_factory, crop2d):
    """A tiny 2D model trained headless (the widget tests below train through the dock)."""
    return headless_checkpoint(tmp_path_factory.mktemp("ckpt"), *crop2d, steps=2)


def tiny(widget: TrainWidget, out, epochs: int = 2, steps: int = 2, patch: int = 64) -> None:
    f = widget.form
    widget.patch_yx.value = patch
    widget.feature_maps.value = ", ".join(map(str, TINY_MODEL["feature_maps"]))
    f["train.epochs"].value, f["train.steps_per_epoch"].value, f["train.batch_size"].value = epochs, steps, 2
    f["output_dir"].value, f["device"].value = str(out), "cpu"


def names(combo) -> list[str]:
    return [layer.name for layer in combo.choices if layer is not None]  # None: the empty choice


def test_widgets_open_from_the_manifest(make_napari_viewer):
    viewer = make_napari_viewer()
    _, train = viewer.window.add_plugin_dock_widget("napari-bioflow", "Train")
    _, predict = viewer.window.add_plugin_dock_widget("napari-bioflow", "Predict")
    assert isinstance(train, TrainWidget) and isinstance(predict, PredictWidget)


def test_layer_choices_follow_added_removed_and_renamed_layers(make_napari_viewer, crop2d):
    viewer = make_napari_viewer()
    train, predict = dock(viewer, TrainWidget(viewer)), dock(viewer, PredictWidget(viewer))
    pair = train.pairs.pairs[0]
    assert names(pair.image_layer) == [] and names(predict.image) == []
    image = viewer.add_image(crop2d[0], name="nuclei")
    viewer.add_labels(np.zeros((10, 10), np.uint8), name="other")
    labels = viewer.add_labels(crop2d[1], name="nuclei mask")
    assert names(pair.image_layer) == ["nuclei"] and names(predict.image) == ["nuclei"]
    assert names(pair.labels_layer) == ["other", "nuclei mask"]
    assert pair.image_layer.value is image and pair.labels_layer.value is labels  # the mask of the same shape
    assert train.form["ndim"].value == 2 and train.form["n_classes"].value == 2
    image.name = "renamed"
    assert names(pair.image_layer) == ["renamed"] and names(predict.image) == ["renamed"]
    train.pairs.add_button.changed()
    assert len(train.pairs.pairs) == 2 and names(train.pairs.pairs[1].image_layer) == ["renamed"]
    train.pairs.pairs[1].remove_button.changed()
    assert len(train.pairs.pairs) == 1
    viewer.layers.remove(image)
    assert names(pair.image_layer) == [] and names(predict.image) == []
    assert names(train.val_pair.labels_layer) == ["other", "nuclei mask"]


def test_train_through_the_widget(make_napari_viewer, wait_idle, tmp_path, crop2d):
    viewer = make_napari_viewer()
    viewer.add_image(crop2d[0], name="nuclei")
    viewer.add_labels(crop2d[1], name="nuclei mask")
    widget = dock(viewer, TrainWidget(viewer))
    tiny(widget, tmp_path)
    widget.keep_preview.value = True  # kept when the training ends (removed otherwise: tests/widgets/test_preview.py)
    widget.train_button.native.click()
    assert widget.running
    wait_idle(widget)
    done = widget.result
    assert done.reason == "finished" and done.checkpoint.is_file()
    assert last_trained.checkpoint == done.checkpoint
    assert widget.chart.epochs == [1, 2] and len(widget.chart.val_iou) == 2
    assert widget.progress.value == widget.progress.max == 4
    root = done.experiment_dir
    run = done.checkpoint.name.split("-checkpoint")[0]
    assert (root / "config_files" / f"{run}.yaml").is_file()
    assert (root / "results" / run / "train_logs" / f"{run}_log.csv").is_file()
    assert (root / "results" / run / "charts" / f"{run}_loss.png").is_file()
    preview = viewer.layers["nuclei preview (epoch 2)"]
    assert isinstance(preview, Labels)
    region = widget.preview.view
    assert preview.data.shape == tuple(s.stop - s.start for s in region.slices)
    assert all(64 <= n <= 256 for n in preview.data.shape)
    assert tuple(preview.translate) == tuple(float(s.start) for s in region.slices)
    assert set(np.unique(preview.data)) <= {0, 1}
    assert widget.preview.epochs == [1, 2]  # after each epoch


def test_preview_follows_the_field_of_view_and_its_budget(make_napari_viewer, crop2d):
    from napari_bioflow.widgets.preview import PreviewBudget, camera, canvas_size, visible_region

    viewer = make_napari_viewer()
    layer = viewer.add_image(np.tile(crop2d[0], (4, 4)), scale=(2, 2), translate=(10, 5))  # 1024 x 1024 pixels
    cam = camera(viewer)
    cam.center, cam.zoom = (10 + 2 * 300, 5 + 2 * 700), 1.5  # looking at data pixel (300, 700)
    height, width = canvas_size(viewer)
    region = visible_region(viewer, layer, [0, 1], [64, 64])
    (y, x) = region.slices
    expected = [int(np.clip(round(n / 1.5 / 2), 64, 512)) for n in (height, width)]  # screen px -> world -> data
    assert [y.stop - y.start, x.stop - x.start] == expected
    assert abs((y.start + y.stop) / 2 - 300) <= 1 and abs((x.start + x.stop) / 2 - 700) <= 1
    assert region.translate == (10 + 2 * y.start, 5 + 2 * x.start) and region.scale == (2, 2)
    cam.zoom = 0.01  # everything visible: capped at 512 px per axis
    assert all(s.stop - s.start == 512 for s in visible_region(viewer, layer, [0, 1], [64, 64]).slices)
    budget = PreviewBudget(ms=100)  # 0.1 s per epoch
    assert abs(budget.pixels(3e-5) - 10_000) <= 1  # before any preview: a third of a training step's cost per pixel
    budget.record(10_000, 0.4)  # then the measured cost: 40 us per pixel
    assert abs(budget.pixels(0) - 2_500) <= 1
    assert not PreviewBudget(ms=0).due(1)  # 0: no preview
    assert PreviewBudget(ms=10, every=2).due(2) and not PreviewBudget(ms=10, every=2).due(1)


def test_predict_through_the_widget(make_napari_viewer, qtbot, wait_idle, tmp_path, crop2d, checkpoint_2d):
    viewer = make_napari_viewer()
    source = viewer.add_image(crop2d[0], name="nuclei", scale=(2, 2), translate=(10, 5))
    before = source.data.copy()
    widget = dock(viewer, PredictWidget(viewer))
    widget.model_source.value = "checkpoint file"
    widget.checkpoint.value = checkpoint_2d
    widget.form["output_dir"].value, widget.form["device"].value, widget.tile.value = tmp_path, "cpu", 128
    widget.predict_button.native.click()
    qtbot.waitUntil(lambda: "nuclei labels" in viewer.layers, timeout=60_000)  # the checkpoint opened in a worker
    prob, labels = viewer.layers["nuclei probabilities"], viewer.layers["nuclei labels"]
    assert isinstance(prob.data, da.Array) and isinstance(labels.data, da.Array)  # over the zarr being written
    wait_idle(widget)
    assert widget.result is not None and widget.progress.value == widget.progress.max > 1
    assert isinstance(prob, Image) and prob.data.shape == (2, 256, 256) and prob.data.dtype == np.float32
    assert (
        isinstance(labels, Labels) and labels.data.shape == (256, 256) and np.issubdtype(labels.data.dtype, np.integer)
    )
    assert isinstance(prob.data, da.Array) and isinstance(labels.data, da.Array)
    p = prob.data.compute()
    np.testing.assert_allclose(p.sum(0), 1, atol=1e-4)
    np.testing.assert_array_equal(labels.data.compute(), labels_expected(p, checkpoint_2d))
    assert tuple(prob.scale) == (1, 2, 2) and tuple(prob.translate) == (0, 10, 5)
    assert tuple(labels.scale) == (2, 2) and tuple(labels.translate) == (10, 5)
    assert source.name == "nuclei" and np.array_equal(source.data, before) and tuple(source.scale) == (2, 2)
    widget.predict_button.native.click()  # again: new layers and a new run, nothing overwritten
    wait_idle(widget)
    assert [layer.name for layer in viewer.layers][-2:] == ["nuclei probabilities [1]", "nuclei labels [1]"]
    assert len(list((tmp_path / "prediction" / "results").iterdir())) == 2


def test_train_and_predict_3d(make_napari_viewer, wait_idle, tmp_path, crop3d):
    viewer = make_napari_viewer()
    viewer.add_image(crop3d[0], name="volume")
    viewer.add_labels(crop3d[1], name="volume mask")
    viewer.dims.set_current_step(0, 9)
    train = dock(viewer, TrainWidget(viewer))
    assert train.form["ndim"].value == 3 and train.patch_z.native.isVisibleTo(train)
    tiny(train, tmp_path)
    train.patch_z.value = 16
    train.keep_preview.value = True
    train.train_button.native.click()
    wait_idle(train)
    assert train.result.reason == "finished" and train.result.checkpoint.is_file()
    preview = viewer.layers["volume preview (epoch 2)"]
    assert isinstance(preview, Labels) and preview.data.ndim == 3 and preview.data.shape[0] == 16
    predict = dock(viewer, PredictWidget(viewer))
    assert predict.model_source.value == JUST_TRAINED
    assert predict.form["predict.z_filter"].native.isVisibleTo(predict)  # 3D segmentation: the 3D label filters
    assert predict.form["predict.yz_filter"].native.isVisibleTo(predict)
    predict.image.value = viewer.layers["volume"]
    predict.form["output_dir"].value, predict.form["device"].value = tmp_path, "cpu"
    predict.predict_button.native.click()
    wait_idle(predict)
    prob, labels = viewer.layers["volume probabilities"], viewer.layers["volume labels"]
    assert prob.data.shape == (2, 16, 128, 96) and prob.data.dtype == np.float32
    assert isinstance(labels, Labels) and labels.data.shape == (16, 128, 96) and isinstance(labels.data, da.Array)


@pytest.fixture
def errors(monkeypatch):
    shown: list[str] = []
    monkeypatch.setattr(train_module, "show_error", shown.append)
    monkeypatch.setattr(predict_module, "show_error", shown.append)
    return shown


def test_bad_input_is_one_sentence_naming_the_layer(
    make_napari_viewer, wait_idle, errors, tmp_path, crop2d, checkpoint_2d
):
    viewer = make_napari_viewer()
    image = viewer.add_image(crop2d[0], name="nuclei")
    small = viewer.add_labels(crop2d[1][:200, :200], name="small mask")
    train = dock(viewer, TrainWidget(viewer))
    tiny(train, tmp_path / "runs")
    train.pairs.pairs[0].image_layer.value, train.pairs.pairs[0].labels_layer.value = image, small
    train.start()
    assert len(errors) == 1 and "small mask" in errors[-1] and "200x200" in errors[-1] and not train.running

    many = viewer.add_labels(crop2d[1] * 3, name="three classes")
    train.pairs.pairs[0].labels_layer.value = many
    train.form["n_classes"].value = 2
    train.start()
    assert "three classes" in errors[-1] and "label value 3" in errors[-1] and not train.running
    assert not (tmp_path / "runs").exists()  # nothing written before the checks pass

    rgb = viewer.add_image(np.stack([crop2d[0]] * 3, axis=-1), name="colour", rgb=True)
    predict = dock(viewer, PredictWidget(viewer))
    predict.model_source.value = "checkpoint file"
    predict.checkpoint.value, predict.image.value, predict.form["output_dir"].value = (
        checkpoint_2d,
        rgb,
        tmp_path / "pred",
    )
    predict.start()
    wait_idle(predict)  # the checkpoint is opened and the layer checked in a worker
    assert checkpoint_2d.name in errors[-1] and "'colour' has 3" in errors[-1] and not predict.running
    assert not (tmp_path / "pred").exists() and "colour probabilities" not in viewer.layers
    assert len(errors) == 3 and all(e.count(". ") == 0 for e in errors)  # one sentence each


def test_cancel_stops_soon_and_keeps_the_best_checkpoint(make_napari_viewer, qtbot, wait_idle, tmp_path, crop2d):
    viewer = make_napari_viewer()
    viewer.add_image(crop2d[0], name="nuclei")
    viewer.add_labels(crop2d[1], name="nuclei mask")
    widget = dock(viewer, TrainWidget(viewer))
    tiny(widget, tmp_path, epochs=1000, steps=4)
    widget.train_button.native.click()
    qtbot.waitUntil(lambda: len(widget.chart.epochs) >= 1, timeout=60_000)
    widget.cancel_button.native.click()
    start = time.perf_counter()
    wait_idle(widget, 10)
    assert time.perf_counter() - start < 5
    done = widget.result
    assert done.reason == "cancelled" and done.epochs_run < 1000
    loaded = load_model(done.checkpoint, "cpu")
    assert loaded.epoch >= 1 and widget.train_button.enabled and not widget.cancel_button.enabled


def test_closing_the_viewer_stops_its_training(make_napari_viewer, qtbot, tmp_path, crop2d):
    viewer = make_napari_viewer()
    viewer.add_image(crop2d[0], name="nuclei")
    viewer.add_labels(crop2d[1], name="nuclei mask")
    widget = dock(viewer, TrainWidget(viewer))
    tiny(widget, tmp_path, epochs=1000, steps=4)
    widget.start()
    trainer, worker = widget.trainer, widget._worker
    with qtbot.waitSignal(worker.finished, timeout=30_000):
        viewer.close()
        qtbot.waitUntil(lambda: trainer.cancelled, timeout=5_000)


def test_advanced_fields_follow_their_choices_and_reach_the_config(make_napari_viewer, tmp_path, crop2d, checkpoint_2d):
    """Momentum shows for SGD, warm-up epochs for warmup_cosine, the percentiles for percentile normalization; each
    value, and 'resume from checkpoint', goes into the run's config."""
    viewer = make_napari_viewer()
    viewer.add_image(crop2d[0], name="nuclei")
    viewer.add_labels(crop2d[1], name="nuclei mask")
    widget = dock(viewer, TrainWidget(viewer))
    tiny(widget, tmp_path)
    f = widget.form

    def hidden(path):
        return f[path].native.isHidden()

    assert hidden("train.momentum") and hidden("train.warmup_epochs") and not hidden("data.percentile_low")
    f["train.optimizer"].value, f["train.scheduler"].value = "SGD", "warmup_cosine"
    assert not hidden("train.momentum") and not hidden("train.warmup_epochs")
    f["train.momentum"].value, f["train.warmup_epochs"].value = 0.8, 3
    f["data.percentile_low"].value, f["data.percentile_high"].value = 2.0, 99.0
    f["train.resume"].value = str(checkpoint_2d)
    cfg = widget.build_config()
    assert (cfg.train.optimizer, cfg.train.momentum, cfg.train.scheduler, cfg.train.warmup_epochs) == (
        "SGD",
        0.8,
        "warmup_cosine",
        3,
    )
    assert (cfg.data.percentile_low, cfg.data.percentile_high) == (2.0, 99.0)
    assert str(cfg.train.resume) == str(checkpoint_2d)
    f["data.normalization"].value = "meanstd"
    assert hidden("data.percentile_low") and hidden("data.percentile_high")
