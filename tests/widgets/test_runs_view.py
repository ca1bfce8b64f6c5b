"""The Runs tab (issue 11 item 6): an earlier run one click away — listed with its workflow, best metric and status,
its chart from the log, its predictions as lazy layers, its config loaded back into the Train tab."""

import dask.array as da
import numpy as np
import pytest
from helpers import BBBC, TINY_MODEL, read_pair
from napari.layers import Labels

from napari_bioflow.widgets.bioflow import BioflowDock
from napari_bioflow.widgets.predict import JUST_TRAINED


@pytest.fixture(scope="module")
def crop():
    raw, label = read_pair(BBBC / "train" / "raw" / "A9_A9_p10d.tif", BBBC / "train" / "label" / "A9_A9_p10d.tif")
    return raw[:128, :128], label[:128, :128]


def test_runs_lists_opens_and_reloads_an_earlier_run(make_napari_viewer, qtbot, wait_idle, messages, tmp_path, crop):
    viewer = make_napari_viewer()
    viewer.add_image(crop[0], name="nuclei")
    viewer.add_labels(crop[1], name="nuclei mask")
    tabs = BioflowDock(viewer)
    viewer.window.add_dock_widget(tabs)
    train, f = tabs.train, tabs.train.form
    f["output_dir"].value = tmp_path
    f["train.epochs"].value, f["train.steps_per_epoch"].value, f["train.batch_size"].value = 2, 2, 2
    train.feature_maps.value = ", ".join(map(str, TINY_MODEL["feature_maps"]))
    train.patch_yx.value = 32
    train.start()
    wait_idle(train)
    assert train.result.reason == "finished" and messages["error"] == []
    predict = tabs.predict
    predict.model_source.value = JUST_TRAINED
    predict.form["output_dir"].value = tmp_path
    predict.start()
    wait_idle(predict)
    assert predict.result is not None and messages["error"] == []

    runs = tabs.runs
    tabs.tabs.setCurrentWidget(runs)  # the tab reads the folder the Train tab writes to
    assert runs.folder.value == tmp_path
    by_name = {r.name: r for r in runs.runs}
    assert set(by_name) == {"my_experiment_1", "prediction_1"}
    trained, predicted = by_name["my_experiment_1"], by_name["prediction_1"]
    assert (trained.kind, trained.status, trained.workflow) == ("training", "finished", "semantic segmentation")
    assert trained.best.startswith("IoU ") and trained.best.endswith(")")  # e.g. "IoU 0.412 (epoch 2)"
    assert predicted.kind == "prediction" and predicted.status == "1 image(s)"
    assert runs.table.rowCount() == 2 and {runs.table.item(i, 0).text() for i in range(2)} == set(by_name)

    runs.select("my_experiment_1")
    assert runs.opened is trained and runs.chart.epochs == [1, 2]
    assert "train_loss" in runs.log_text.toPlainText() and "workflow: semantic_segmentation" in (
        runs.config_text.toPlainText()
    )
    f["train.epochs"].value, train.patch_yx.value = 7, 48  # changed since: loading the config sets them back
    runs.load_config()
    assert f["train.epochs"].value == 2 and train.patch_yx.value == 32
    assert train.source.value == "folders"  # the run's layers were saved with it: its config repeats it
    assert str(f["data.train_raw"].value).endswith("my_experiment_1/data/train_raw")

    before = len(viewer.layers)
    runs.select("prediction_1")
    added = runs.add_layers()
    assert len(viewer.layers) == before + len(added) >= 2
    assert all(isinstance(layer.data, da.Array) for layer in added)  # lazy: read as viewed
    labels = [layer for layer in added if isinstance(layer, Labels)]
    assert labels and labels[0].data.shape == crop[0].shape
    assert set(np.unique(np.asarray(labels[0].data))) <= {0, 1}
    assert labels[0].colormap.name == "bioflow prediction"  # not the ground truth's colours
    assert viewer.layers["nuclei mask"].colormap.name != "bioflow prediction"


def test_the_runs_dock_fills_a_train_dock_of_the_same_window(make_napari_viewer, messages, tmp_path):
    from napari_bioflow.config import RunConfig

    cfg = RunConfig.from_dict(
        {"name": "old", "ndim": 3, "data": {"patch_size": [16, 48, 48]}, "train": {"epochs": 3, "learning_rate": 2e-4}}
    )
    cfg.save(tmp_path / "old" / "config_files" / "old_1.yaml")
    (tmp_path / "old" / "results" / "old_1").mkdir(parents=True)
    viewer = make_napari_viewer()
    _, train = viewer.window.add_plugin_dock_widget("napari-bioflow", "Train")
    _, runs = viewer.window.add_plugin_dock_widget("napari-bioflow", "Runs")
    runs.folder.value = tmp_path
    assert [r.name for r in runs.runs] == ["old_1"] and runs.runs[0].status == "no result"
    runs.select("old_1")
    runs.load_config()
    f = train.form
    assert (f["ndim"].value, f["train.epochs"].value, f["train.learning_rate"].value) == (3, 3, 2e-4)
    assert (train.patch_z.value, train.patch_yx.value) == (16, 48)
    assert train.message.value.startswith(f"Loaded {tmp_path / 'old' / 'config_files' / 'old_1.yaml'}")
    assert messages["error"] == []
