"""The training preview in the viewer: a layer per epoch with the region on screen, named after its epoch, in colours
of its own; it follows a pan; it goes when the training ends, unless kept."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from helpers import BBBC, TINY_MODEL, dock
from napari.layers import Labels

from napari_bioflow.widgets.preview import PreviewResult, camera, visible_region
from napari_bioflow.widgets.train import TrainWidget


@pytest.fixture(scope="module")
def crop():
    name = "A9_A9_p10d.tif"
    return (
        tifffile.imread(BBBC / "train" / "raw" / name)[:256, :256],
        tifffile.imread(BBBC / "train" / "label" / name)[:256, :256],
    )


def train_dock(viewer, crop, out, epochs: int = 2) -> TrainWidget:
    viewer.add_image(crop[0], name="nuclei")
    viewer.add_labels(crop[1], name="nuclei mask")
    widget = dock(viewer, TrainWidget(viewer))
    f = widget.form
    widget.patch_yx.value = 64
    widget.feature_maps.value = ", ".join(map(str, TINY_MODEL["feature_maps"]))
    f["train.epochs"].value, f["train.steps_per_epoch"].value, f["train.batch_size"].value = epochs, 2, 2
    f["output_dir"].value, f["device"].value = str(out), "cpu"
    widget.preview_ms.value = 600_000  # the whole view, however busy the machine (the cut: test_live_preview.py)
    cam = camera(viewer)
    cam.center, cam.zoom = (100, 150), 8.0  # a part of the image: at least a patch, less than the image
    return widget


def record_previews(widget) -> list[tuple]:
    """(layer name, data shape, region shape, colour of class 1) for each preview shown, as the dock shows it."""
    seen = []

    def on_report(report):
        if isinstance(report, PreviewResult):
            layer = widget.preview.layer
            color = tuple(np.round(layer.colormap.map([1])[0], 3))
            seen.append((layer.name, layer.data.shape, report.region.shape, tuple(layer.translate), color))

    widget._worker.yielded.connect(on_report)  # after the dock's own handler
    return seen


def test_a_preview_per_epoch_of_the_region_on_screen_then_removed(make_napari_viewer, wait_idle, tmp_path, crop):
    viewer = make_napari_viewer()
    widget = train_dock(viewer, crop, tmp_path)
    region = visible_region(viewer, viewer.layers["nuclei"], [0, 1], [64, 64])
    assert 64 <= region.shape[0] < 256 and 64 <= region.shape[1] < 256
    widget.start()
    seen = record_previews(widget)
    wait_idle(widget, 120)
    assert widget.result.reason == "finished"
    assert [name for name, *_ in seen] == ["nuclei preview (epoch 1)", "nuclei preview (epoch 2)"]
    for _, shape, shown, translate, color in seen:
        assert shape == shown == region.shape  # the viewed region
        assert translate == tuple(float(s.start) for s in region.slices)
        assert color == (1.0, 0.0, 1.0, 1.0)  # magenta: not the ground truth's colour of label 1
    assert tuple(viewer.layers["nuclei mask"].colormap.map([1])[0]) != (1.0, 0.0, 1.0, 1.0)
    assert not any("preview" in layer.name for layer in viewer.layers)  # removed at the end


def test_a_kept_preview_stays_and_a_pan_reaches_the_training(make_napari_viewer, qtbot, wait_idle, tmp_path, crop):
    viewer = make_napari_viewer()
    widget = train_dock(viewer, crop, tmp_path)
    widget.keep_preview.value = True
    widget.start()
    cam = camera(viewer)
    cam.center = (180, 60)  # a pan while training: the new field of view goes to the training's process
    moved = visible_region(viewer, viewer.layers["nuclei"], [0, 1], [64, 64])
    assert widget.preview.view == moved and widget.trainer._view == moved
    wait_idle(widget, 120)
    kept = viewer.layers["nuclei preview (epoch 2)"]
    assert isinstance(kept, Labels) and kept.data.shape == moved.shape
    assert set(np.unique(kept.data)) <= {0, 1} and widget.preview.layer is None  # the user's now: not updated


def test_no_preview_when_its_budget_is_zero(make_napari_viewer, wait_idle, tmp_path, crop):
    viewer = make_napari_viewer()
    widget = train_dock(viewer, crop, tmp_path, epochs=1)
    widget.preview_ms.value = 0
    widget.keep_preview.value = True
    widget.start()
    wait_idle(widget, 120)
    assert widget.result.reason == "finished" and widget.preview is None
    assert not any("preview" in layer.name for layer in viewer.layers)
