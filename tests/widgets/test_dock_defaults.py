"""Train with the dock's defaults on the shipped samples: the patch size and validation fraction adapt to the
layers, the dock says what is wrong before a run, and pressing Train trains (issue 11 item 1)."""

import numpy as np
import pytest
from qtpy.QtCore import Qt

from napari_bioflow.sample_data import bbbc007_nuclei, nuclei_3d
from napari_bioflow.widgets.train import TrainWidget
from napari_bioflow.widgets.train_fields import fit_patch


def load(viewer, sample):
    for data, meta, kind in sample():
        getattr(viewer, f"add_{kind}")(data, **meta)


@pytest.mark.parametrize(
    "sample, patch, fraction", [(bbbc007_nuclei, [144, 144], 0.3), (nuclei_3d, [32, 64, 64], 0.5)], ids=["2D", "3D"]
)
def test_train_with_defaults_on_the_samples(
    make_napari_viewer, qtbot, wait_idle, messages, tmp_path, sample, patch, fraction
):
    viewer = make_napari_viewer()
    load(viewer, sample)
    train = TrainWidget(viewer)
    viewer.window.add_dock_widget(train)
    ndim = train.form["ndim"].value
    assert [train.patch_z.value] * (ndim == 3) + [train.patch_yx.value] * 2 == patch
    assert train.form["data.val_split"].value == pytest.approx(fraction)
    assert train.run_check() is None and train.check_label.native.isHidden()
    # only what a user would change: where runs go, and one epoch to keep the test short
    train.form["output_dir"].value = tmp_path
    train.form["train.epochs"].value = 1
    qtbot.mouseClick(train.train_button.native, Qt.LeftButton)
    wait_idle(train, 600)
    assert messages["error"] == []
    assert train.result is not None and train.result.reason == "finished"
    assert train.result.checkpoint.is_file()
    assert str(train.result.checkpoint) in train.message.value  # the checkpoint path stays in the dock


def test_the_dock_says_what_is_wrong_before_a_run(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    load(viewer, bbbc007_nuclei)
    train = TrainWidget(viewer)
    train.patch_yx.value = 256  # a 256-row strip cannot be held aside from 450 rows and leave 256 for training
    qtbot.waitUntil(lambda: train.check_label.value != "", timeout=3000)
    assert train.check_label.value == (
        "Image layer 'A9_A9_p10d' (450 rows) cannot hold aside a 256-row validation strip and still train on "
        "256-row patches: lower patch Y, X to 224 or the validation fraction, or validate on layers."
    )
    train.patch_yx.value = 464
    qtbot.waitUntil(lambda: "larger than" in train.check_label.value, timeout=3000)
    assert "The patch (464x464) is larger than image layer 'A9_A9_p10d' (450x450): lower patch Y, X." == (
        train.check_label.value
    )
    train.patch_yx.value = 144
    train.form["train.learning_rate"].value = "fast"
    qtbot.waitUntil(lambda: train.check_label.value.startswith("learning rate"), timeout=3000)
    assert "val_split" not in train.check_label.value and "train." not in train.check_label.value
    train.form["train.learning_rate"].value = 1e-3
    qtbot.waitUntil(lambda: train.check_label.value == "", timeout=3000)
    assert train.check_label.native.isHidden()


@pytest.mark.parametrize(
    "shapes, ndim, hold, expected",
    [
        ([(64, 64)], 2, True, (0, 32, 0.5)),
        ([(64, 64, 64)], 3, True, (32, 32, 0.5)),
        ([(2048, 2048)], 2, True, (0, 256, 0.1)),
        ([(450, 450), (300, 500)], 2, False, (0, 256, None)),
        ([(100, 80)], 2, False, (0, 80, None)),
    ],
)
def test_fit_patch_fits_every_image_and_the_strip(shapes, ndim, hold, expected):
    depth, patch, fraction = fit_patch(shapes, ndim, hold)
    assert (depth, patch, fraction) == expected
    if hold:  # the engine's strip: max(fraction * height, patch) rows; the rest must hold a patch too
        height = shapes[0][-2]
        assert height - max(round(fraction * height), patch) >= patch


@pytest.mark.parametrize("shape", [(64, 64), (64, 64, 64)], ids=["2D 64", "3D 64"])
def test_defaults_train_on_the_smallest_reasonable_layers(
    make_napari_viewer, qtbot, wait_idle, messages, tmp_path, shape
):
    rng = np.random.default_rng(0)
    mask = np.zeros(shape, np.uint8)
    mask[(slice(8, 40),) * len(shape)] = 1  # a cube (square) of foreground
    viewer = make_napari_viewer()
    viewer.add_image((mask * 100 + rng.normal(20, 5, shape)).astype(np.float32), name="small")
    viewer.add_labels(mask, name="small mask")
    train = TrainWidget(viewer)
    assert train.run_check() is None, train.check_label.value
    train.form["output_dir"].value, train.form["train.epochs"].value = tmp_path, 1
    qtbot.mouseClick(train.train_button.native, Qt.LeftButton)
    wait_idle(train, 600)
    assert messages["error"] == [] and train.result.reason == "finished" and train.result.checkpoint.is_file()
