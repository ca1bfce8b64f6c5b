"""Full-image prediction (predict.full_image: one pass per image, full_image*/ folders, refused with one sentence when
it does not fit) and post-processing outputs (the filtered labels in their own folder, IoU before and after, 2D
images filtered as one 3D stack with predict.stack_2d, a filter that cannot apply said in one sentence)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from helpers import read_csv
from scipy.ndimage import median_filter
from test_ome_zarr_outputs import real_crop, segmentation

from napari_bioflow.engine.errors import InputError


def zarr_format(**predict):
    return {"output_format": "zarr", **predict}


def test_full_image_predicts_in_one_pass_into_the_full_image_folders(tmp_path):
    """A 150x170 image with a 64 px tile: tiled, it is 12 tiles into per_image*/; with predict.full_image one tile of
    the whole image into full_image/ and full_image_binarized/, the same labels, no per_image*/ folder."""
    from napari_bioflow.engine.predict.inference import ImagePrediction

    image = real_crop()
    tiled = ImagePrediction(segmentation(2, **zarr_format()), image, "img", tmp_path / "tiled", "img")
    tiled_result = tiled.run()
    assert len(tiled.plan.tiles) > 1
    job = ImagePrediction(segmentation(2, **zarr_format(full_image=True)), image, "img", tmp_path / "full", "img")
    assert len(job.plan.tiles) == 1 and job.plan.tile_shape == (150, 170)
    result = job.run()
    job.cleanup()
    full = tmp_path / "full"
    assert sorted(p.name for p in full.iterdir()) == ["full_image", "full_image_binarized"]
    labels = tifffile.imread(full / "full_image_binarized" / "img.tif")
    np.testing.assert_array_equal(labels, (image < 100).astype(np.uint8))
    np.testing.assert_array_equal(labels, tifffile.imread(tmp_path / "tiled" / "per_image_binarized" / "img.tif"))
    assert tifffile.imread(full / "full_image" / "img.tif").shape == (2, 150, 170)
    assert result.paths["labels"][0] == full / "full_image" / "img.zarr" / "labels"
    assert tiled_result.paths["labels"][0] == tmp_path / "tiled" / "per_image" / "img.zarr" / "labels"


def test_full_image_that_does_not_fit_is_refused_in_one_sentence(tmp_path, monkeypatch):
    from napari_bioflow.engine.predict.inference import ImagePrediction
    from napari_bioflow.engine.train import memory

    monkeypatch.setattr(memory, "available", lambda device: (50 * 10**6, "of RAM"))
    with pytest.raises(InputError) as e:
        ImagePrediction(segmentation(2, full_image=True), real_crop(), "image layer 'cells'", tmp_path, "cells")
    assert str(e.value).startswith(
        "image layer 'cells' does not fit in one pass (predict.full_image): its 150x170 forward pass needs about "
    )
    assert str(e.value).endswith("50 MB of RAM is free; turn predict.full_image off to predict it tile by tile.")
    assert not any(tmp_path.iterdir())  # refused before anything is written


def test_3d_post_processing_goes_to_its_own_folder_with_iou_before_and_after(tmp_path):
    """3D labels filtered along Z (z_filter 5): per_image_binarized/ keeps the labels as predicted,
    per_image_post_processing/ holds the filtered ones, metrics.csv the IoU of both against the ground truth."""
    from napari_bioflow.engine.predict.inference import predict_files

    rng = np.random.default_rng(1)
    data = np.where(rng.random((12, 40, 48)) < 0.5, 50, 500).astype(np.uint16)
    truth = median_filter((data < 100).astype(np.uint8), size=(5, 1, 1))
    tifffile.imwrite(tmp_path / "vol.tif", data)
    tifffile.imwrite(tmp_path / "vol_mask.tif", truth)
    out = tmp_path / "out"
    loaded = segmentation(3, **zarr_format(z_filter=5))
    (result,) = list(predict_files(loaded, [(tmp_path / "vol.tif", tmp_path / "vol_mask.tif")], out))
    predicted = tifffile.imread(out / "per_image_binarized" / "vol.tif")
    np.testing.assert_array_equal(predicted, (data < 100).astype(np.uint8))
    np.testing.assert_array_equal(tifffile.imread(out / "per_image_post_processing" / "vol.tif"), truth)
    assert result.metrics["iou_foreground"] < 0.9 and result.metrics["iou_foreground_post_processing"] == 1.0
    rows = read_csv(out / "metrics.csv")
    assert [r["image"] for r in rows] == ["vol.tif", "ALL (pixels pooled)"]
    assert float(rows[1]["iou_foreground_post_processing"]) == 1.0
    assert float(rows[1]["iou_foreground"]) == pytest.approx(result.metrics["iou_foreground"])


def test_2d_images_post_processed_as_a_3d_stack(tmp_path):
    """Three 2D images of one shape and one of another, predict.stack_2d with z_filter 3: the three are filtered
    across images (the median of each pixel over neighbouring images), the fourth is named in one sentence."""
    from napari_bioflow.engine.predict.inference import predict_files

    rng = np.random.default_rng(2)
    images = [np.where(rng.random((40, 50)) < 0.5, 50, 500).astype(np.uint16) for _ in range(3)]
    items = []
    for i, image in enumerate([*images, np.full((30, 30), 500, np.uint16)]):
        tifffile.imwrite(tmp_path / f"img_{i}.tif", image)
        tifffile.imwrite(tmp_path / f"img_{i}_mask.tif", (image < 100).astype(np.uint8))
        items.append((tmp_path / f"img_{i}.tif", tmp_path / f"img_{i}_mask.tif"))
    out = tmp_path / "out"
    results = list(predict_files(segmentation(2, **zarr_format(z_filter=3, stack_2d=True)), items, out))
    labels = np.stack([(image < 100).astype(np.uint8) for image in images])
    expected = median_filter(labels, size=(3, 1, 1))
    for i in range(3):
        np.testing.assert_array_equal(tifffile.imread(out / "per_image_post_processing" / f"img_{i}.tif"), expected[i])
        np.testing.assert_array_equal(tifffile.imread(out / "per_image_binarized" / f"img_{i}.tif"), labels[i])
        assert results[i].metrics["iou_foreground"] == 1.0
    # the ends of the stack reflect (their median is themselves); the middle image changes
    after = [r.metrics["iou_foreground_post_processing"] for r in results[:3]]
    assert after[0] == after[2] == 1.0 and after[1] < 0.9
    assert not (out / "per_image_post_processing" / "img_3.tif").exists()
    assert results[-1].notes == [
        f"predict.z_filter/yz_filter not applied to {tmp_path / 'img_3.tif'}: not of the stack's shape 40x50."
    ]
    header = list(read_csv(out / "metrics.csv")[0])
    assert "iou_foreground_post_processing" in header


def test_filters_that_do_not_apply_say_so(tmp_path):
    from napari_bioflow.config import RunConfig
    from napari_bioflow.engine.predict.inference import ImagePrediction, predict_files

    # one 2D image cannot be a stack
    tifffile.imwrite(tmp_path / "one.tif", real_crop((40, 40)))
    (result,) = list(
        predict_files(segmentation(2, z_filter=3, stack_2d=True), [(tmp_path / "one.tif", None)], tmp_path)
    )
    assert result.notes == [
        "predict.z_filter/yz_filter not applied: stacking 2D images (predict.stack_2d) needs two or more."
    ]
    # a volume of one Z plane
    job = ImagePrediction(segmentation(3, z_filter=3), np.zeros((1, 40, 40), np.uint16), "flat", tmp_path, "flat")
    assert job.run().notes == ["predict.z_filter/yz_filter not applied: the volume has a single Z plane."]
    # the config says which settings do not apply
    with pytest.raises(InputError, match=r"predict\.z_filter does not apply to 2D semantic segmentation \(set predict"):
        RunConfig.from_dict({"predict": {"z_filter": 3}})
    with pytest.raises(InputError, match=r"predict\.stack_2d does not apply to 3D semantic segmentation"):
        RunConfig.from_dict({"ndim": 3, "data": {"patch_size": [8, 32, 32]}, "predict": {"stack_2d": True}})
    with pytest.raises(InputError, match=r"predict\.stack_2d does not apply to 2D image to image"):
        RunConfig.from_dict({"workflow": "image_to_image", "train": {"loss": "l1"}, "predict": {"stack_2d": True}})
    with pytest.raises(InputError, match=r"predict\.full_image does not apply to classification"):
        RunConfig.from_dict(
            {"workflow": "classification", "model": {"name": "simple_cnn"}, "predict": {"full_image": True}}
        )
