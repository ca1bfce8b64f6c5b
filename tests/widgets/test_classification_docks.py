"""The Train and Predict docks on classification, with real viewers (under Xvfb): Image layers given a class (a
stack split into slices), training, prediction of a layer's slices (table, overlay, metadata; data untouched) and of
a test folder with classes (metrics and confusion matrix in the dock), and bad input named in one sentence.

Real data: the modality crops of tests/data/classification_2d (see ATTRIBUTION.md), two classes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import read_csv
from skimage.io import imread

from napari_bioflow.engine.data.classification_data import fit_to_patch
from napari_bioflow.engine.errors import InputError
from napari_bioflow.widgets import classify as classify_module
from napari_bioflow.widgets import predict as predict_module
from napari_bioflow.widgets import train as train_module
from napari_bioflow.widgets.classes import META_KEY
from napari_bioflow.widgets.predict import JUST_TRAINED, PredictWidget
from napari_bioflow.widgets.train import TrainWidget

C2D = Path(__file__).parents[1] / "data" / "classification_2d"
CLASSES = ("cryo_et", "he_histology")


def stack(split: str, cls: str, n: int) -> np.ndarray:
    files = sorted((C2D / split / cls).glob("*.png"))[:n]
    return np.stack([fit_to_patch(imread(f)[..., None].astype(np.float32), (48, 48), "pad")[0] for f in files]).astype(
        np.uint8
    )


@pytest.fixture
def messages(monkeypatch):
    shown = {"error": [], "info": []}
    for module in (train_module, predict_module, classify_module):
        monkeypatch.setattr(module, "show_error", shown["error"].append)
        monkeypatch.setattr(module, "show_info", shown["info"].append)
    return shown


def classification_dock(viewer, out) -> TrainWidget:
    train = TrainWidget(viewer)
    viewer.window.add_dock_widget(train)
    f = train.form
    f["workflow"].value = "classification"
    train.patch_yx.value = 48
    f["model.name"].value = "vit"
    train.model_options.value = "embed_dim: 64, depth: 2, num_heads: 2"
    f["train.epochs"].value, f["train.batch_size"].value, f["train.learning_rate"].value = 6, 8, 0.001
    f["output_dir"].value, f["device"].value = str(out), "cpu"
    return train


def test_fields_follow_the_classification_workflow(make_napari_viewer):
    viewer = make_napari_viewer()
    train = TrainWidget(viewer)
    f = train.form
    f["workflow"].value = "classification"
    assert train.pairs.native.isHidden() and not train.class_layers.native.isHidden()
    assert f["n_classes"].native.isHidden() and not f["classification.fit"].native.isHidden()
    assert set(f["model.name"].choices) == {"vit", "simple_cnn", *[f"efficientnet_b{i}" for i in range(8)]}
    assert f["model.name"].value == "vit" and list(train.validation.choices) == ["split", "folders"]
    train.source.value = "folders"
    assert f["data.train_label"].native.isHidden() and f["data.train_raw"].label == "class folders"
    f["ndim"].value = 3
    assert set(f["model.name"].choices) == {"vit", "simple_cnn"}
    f["workflow"].value = "semantic_segmentation"
    assert "vit" not in f["model.name"].choices and f["model.name"].value == "unet"
    assert f["classification.fit"].native.isHidden() and not f["data.train_label"].native.isHidden()


def test_train_on_layers_then_classify_slices_and_a_folder(
    make_napari_viewer, wait_idle, messages, tmp_path, monkeypatch
):
    viewer = make_napari_viewer()
    layers = {c: viewer.add_image(stack("train", c, 24), name=f"{c} crops") for c in CLASSES}
    train = classification_dock(viewer, tmp_path)
    rows = [train.class_layers.rows[0], train.class_layers.add_row()]
    for row, c in zip(rows, CLASSES):
        row.layer.value, row.cls.value, row.slices.value = layers[c], c, True
    train.train_button.native.click()
    wait_idle(train, 300)
    assert not messages["error"], messages["error"]
    done = train.result
    assert done.reason == "finished" and done.checkpoint.is_file()
    assert train.trainer.cfg.class_names == list(CLASSES) and train.trainer.cfg.n_classes == 2
    assert train.chart.metric == "accuracy" and len(train.chart.val_metric) == 6
    assert not any(layer.name.endswith("preview") for layer in viewer.layers)  # no map to preview

    # each slice of a held-aside stack: a table row, the layer's metadata and the overlay; the data untouched
    test = stack("test", "he_histology", 6)
    layer = viewer.add_image(test.copy(), name="test stack")
    predict = PredictWidget(viewer)
    viewer.window.add_dock_widget(predict)
    assert predict.model_source.value == JUST_TRAINED and not predict.classify_group.isHidden()
    assert predict.tile.native.isHidden() and predict.target.native.isHidden()
    predict.image.value = layer
    predict.classify.each_slice.value = True
    predict.form["output_dir"].value, predict.form["device"].value = str(tmp_path / "pred"), "cpu"
    predict.predict_button.native.click()
    wait_idle(predict, 120)
    assert not messages["error"], messages["error"]
    rows = predict.classify.table.rows()
    assert [r[0] for r in rows] == [f"test stack [{i}]" for i in range(6)]
    assert sum(r[1] == "he_histology" for r in rows) >= 4, (rows, train.chart.val_metric)  # held-aside crops, chance 3
    np.testing.assert_array_equal(layer.data, test)
    meta = layer.metadata[META_KEY]
    assert meta["classes"] == list(CLASSES) and [p[0] for p in meta["predictions"]] == list(range(6))
    viewer.layers.selection.active = layer
    viewer.dims.set_current_step(0, 2)
    assert viewer.text_overlay.visible and viewer.text_overlay.text.startswith("test stack slice 2: ")
    csv_rows = read_csv(predict.experiment.results / "predictions.csv")
    assert len(csv_rows) == 6 and csv_rows[0]["file"] == "test stack [0]"

    # a test folder with class sub-folders: metrics and the confusion matrix in the dock
    folder = tmp_path / "test"
    for c in CLASSES:
        (folder / c).mkdir(parents=True)
        for f in sorted((C2D / "test" / c).glob("*.png"))[:5]:
            (folder / c / f.name).write_bytes(f.read_bytes())
    predict.classify.scope.value = "test folder"
    assert predict.image.native.isHidden() and not predict.classify.folder.native.isHidden()
    predict.classify.folder.value = str(folder)
    predict.predict_button.native.click()
    wait_idle(predict, 120)
    assert not messages["error"], messages["error"]
    assert predict.classify.table.rowCount() == 10 and predict.classify.confusion.rowCount() == 2
    total = sum(int(predict.classify.confusion.item(i, j).text()) for i in range(2) for j in range(2))
    assert total == 10 and predict.classify.metrics.value.startswith("accuracy ")
    # precision, recall, F1 and support of every class, as metrics.csv has them
    assert not predict.classify.per_class.isHidden()
    shown = predict.classify.per_class.values()
    assert list(shown) == [*CLASSES, "macro"] and [shown[c]["support"] for c in CLASSES] == ["5", "5"]
    saved = {r["class"]: r for r in read_csv(predict.experiment.results / "metrics.csv")}
    for c in (*CLASSES, "macro"):
        for key, col in (("precision", "precision"), ("recall", "recall"), ("F1", "f1")):
            assert float(shown[c][key]) == pytest.approx(float(saved[c][col]), abs=5e-4)
    assert [r[0] for r in predict.classify.table.rows()][:1] == [
        f"{CLASSES[0]}/{sorted((folder / CLASSES[0]).iterdir())[0].name}"
    ]
    assert (predict.experiment.results / "confusion_matrix.png").exists()
    # a mistake met while the worker runs (here a file that became unreadable) reaches the user as a notification
    import napari_bioflow.engine.predict.classification_results as results_module

    def unreadable(*_):
        raise InputError(f"{folder / CLASSES[0]} holds a file that cannot be read.")

    monkeypatch.setattr(results_module, "run_class_prediction", unreadable)
    predict.predict_button.native.click()
    wait_idle(predict, 60)
    assert messages["error"] == [f"{folder / CLASSES[0]} holds a file that cannot be read."]


def test_bad_input_names_the_layer(make_napari_viewer, messages, tmp_path):
    viewer = make_napari_viewer()
    a = viewer.add_image(stack("train", "cryo_et", 4), name="stack a")
    train = classification_dock(viewer, tmp_path)
    row = train.class_layers.rows[0]
    row.layer.value, row.slices.value = a, True
    train.train_button.native.click()
    assert messages["error"] == ["Give image layer 'stack a' a class name."]
    row.cls.value = "x, y, z"
    train.train_button.native.click()
    assert messages["error"][-1] == (
        "Image layer 'stack a' has 4 slices but 3 class names: give one name for all slices or one per slice."
    )
    row.cls.value = "only"
    train.train_button.native.click()
    assert messages["error"][-1] == "Every image is of class 'only': give the images at least two classes."
    assert not train.running and not (tmp_path / "my_experiment").exists()


def test_batch_dock_classifies_a_folder_with_classes(make_napari_viewer, wait_idle, tmp_path):
    from napari_bioflow.config import RunConfig
    from napari_bioflow.engine.train import Trainer
    from napari_bioflow.widgets.batch import FROM_FILE, BatchWidget

    train_dir, test_dir = tmp_path / "train", tmp_path / "test"
    for c in CLASSES:
        for split, root, n in (("train", train_dir, 12), ("test", test_dir, 3)):
            (root / c).mkdir(parents=True)
            for f in sorted((C2D / split / c).glob("*.png"))[:n]:
                (root / c / f.name).write_bytes(f.read_bytes())
    cfg = RunConfig.model_validate(
        {
            "workflow": "classification",
            "name": "cls",
            "output_dir": str(tmp_path / "runs"),
            "device": "cpu",
            "model": {"name": "vit", "options": {"embed_dim": 32, "depth": 1, "num_heads": 2}},
            "data": {"train_raw": str(train_dir), "patch_size": [48, 48]},
            "train": {"epochs": 1, "batch_size": 8},
        }
    )
    trainer = Trainer(cfg)
    for _ in trainer.run():
        pass
    viewer = make_napari_viewer()
    widget = BatchWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.model_source.value = FROM_FILE
    widget.checkpoint.value = trainer.best_checkpoint
    widget.input.value = test_dir
    widget.form["output_dir"].value, widget.form["device"].value = tmp_path / "batch", "cpu"
    widget.run_button.native.click()
    wait_idle(widget)
    s = widget.summary
    assert s is not None and len(s.done) == 6 and not s.failed
    rows = widget.classes.rows()
    assert not widget.classes.isHidden() and [r[0] for r in rows] == [
        f"{c}/{f.name}" for c in CLASSES for f in sorted((test_dir / c).iterdir())
    ]
    assert all(r[1] in CLASSES for r in rows)
    csv_rows = read_csv(s.predictions_csv)
    assert [r["class"] for r in csv_rows] == [r[1] for r in rows] and {r["true_class"] for r in csv_rows} == set(
        CLASSES
    )
    assert (s.run_dir / "confusion_matrix.png").exists() and widget.open_results() == []
