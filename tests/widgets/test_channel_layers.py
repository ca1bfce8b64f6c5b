"""Layers with a channel axis (issue 12 item 1) reach the engine as the docks read them: an RGB layer, a leading
channel axis of any length (a 9-channel multiplex-like layer is channels, not a 9-slice volume, once the dock's
channels field says 9), or data.axes for a channel axis in the middle; the predicted layers are placed over space."""

from pathlib import Path

import numpy as np
from helpers import bbbc_pairs, read_pair
from napari.layers import Image

from napari_bioflow.config import RunConfig
from napari_bioflow.engine.data.sources import make_sample
from napari_bioflow.widgets.layers import layer_channels, spatial_axes


def test_channel_axes_of_layers_follow_the_channels_field():
    rng = np.random.default_rng(0)
    nine = Image(rng.integers(0, 255, (9, 48, 64), dtype=np.uint8))
    assert spatial_axes(nine, 2) is None  # no channels given: 9 is no colour axis, and 3 axes are not 2D
    assert spatial_axes(nine, 2, 9) == [1, 2] and layer_channels(nine, 2, 9) == 9
    assert spatial_axes(nine, 3, 1) == [0, 1, 2]  # the same layer read as a 9-slice volume by a 3D, 1-channel config
    rgb = Image(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8), rgb=True)
    assert spatial_axes(rgb, 2) == [0, 1] and layer_channels(rgb, 2) == 3
    zcyx = Image(rng.integers(0, 255, (4, 12, 32, 32), dtype=np.uint8))
    assert spatial_axes(zcyx, 3, 12, "ZCYX") == [0, 2, 3]
    cfg = RunConfig.from_dict({"data": {"in_channels": 9, "patch_size": [32, 32]}})
    sample = make_sample(nine.data, "image layer 'nine'", cfg, label=np.zeros((48, 64), np.uint8))
    assert sample.raw.shape == (48, 64, 9) and np.array_equal(np.asarray(sample.raw)[..., 4], nine.data[4])
    cfg3 = RunConfig.from_dict({"ndim": 3, "data": {"in_channels": 12, "axes": "ZCYX", "patch_size": [4, 16, 16]}})
    sample = make_sample(zcyx.data, "image layer 'zcyx'", cfg3, label=np.zeros((4, 32, 32), np.uint8))
    assert sample.raw.shape == (4, 32, 32, 12) and np.array_equal(np.asarray(sample.raw)[2, ..., 7], zcyx.data[2, 7])


def test_nine_channel_layer_trains_and_predicts_through_the_docks(make_napari_viewer, wait_idle, tmp_path):
    """A leading 9-channel axis (nuclei, H&E R, G, B, luminance and time-lapse frames: tests/data) through the docks:
    the dock's channels field makes it channels, training and prediction run, the outputs sit over space."""
    import tifffile

    from napari_bioflow.widgets.predict import PredictWidget
    from napari_bioflow.widgets.train import TrainWidget

    data = Path(__file__).parents[1] / "data"
    nuclei, mask = (a[100:228, 100:228] for a in read_pair(*bbbc_pairs()[0]))
    he = tifffile.imread(data / "skin_he_crop.tif")[:128, :128]
    frames = tifffile.imread(data / "timelapse_2d_crops.tif")[:, :128, :128]
    gray = np.round(he @ np.array([0.2125, 0.7154, 0.0721])).astype(np.uint8)
    stack = np.stack([nuclei.astype(np.uint8), *np.moveaxis(he, -1, 0), gray, *frames])
    viewer = make_napari_viewer()
    viewer.add_image(stack, name="multiplex", scale=(1, 2, 2))
    viewer.add_labels((mask > 0).astype(np.uint8), name="multiplex mask", scale=(2, 2))
    train = TrainWidget(viewer)
    viewer.window.add_dock_widget(train)
    f = train.form
    f["ndim"].value, f["data.in_channels"].value = 2, 9  # the user says: 2D, 9 channels
    train.patch_yx.value, train.feature_maps.value = 64, "8, 16"
    f["train.epochs"].value, f["train.steps_per_epoch"].value, f["train.batch_size"].value = 1, 2, 2
    f["output_dir"].value, f["device"].value = str(tmp_path), "cpu"
    train.pairs.pairs[0].labels_layer.value = viewer.layers["multiplex mask"]
    train.train_button.native.click()
    wait_idle(train, 120)
    assert train.result is not None and train.result.reason == "finished", train.result
    predict = PredictWidget(viewer)
    viewer.window.add_dock_widget(predict)
    predict.image.value = viewer.layers["multiplex"]
    predict.form["output_dir"].value, predict.form["device"].value = tmp_path, "cpu"
    predict.predict_button.native.click()
    wait_idle(predict, 120)
    prob, labels = viewer.layers["multiplex probabilities"], viewer.layers["multiplex labels"]
    assert prob.data.shape == (2, 128, 128) and labels.data.shape == (128, 128)
    assert tuple(labels.scale) == (2, 2)  # placed over the layer's spatial axes, not its channel axis
