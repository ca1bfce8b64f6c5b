"""The one output writer (engine/predict/writer.py): every array and file of a predicted image goes through it, it
returns their paths, and a batch's completion marker records those paths (nothing rescanned)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from test_ome_zarr_outputs import real_crop, restoration, segmentation


def run_item(tmp_path, loaded, stray: bool = False):
    from napari_bioflow.engine.batch.records import FileItem, TaskContext, marker_path
    from napari_bioflow.engine.batch.task import predict_item

    raw = tmp_path / "img.tif"
    tifffile.imwrite(raw, real_crop((80, 96)))
    run = tmp_path / "run"
    if stray:  # a file of another origin named like the image's outputs: not the writer's, never recorded
        (run / "per_image").mkdir(parents=True)
        (run / "per_image" / "img.notes.txt").write_text("mine")
    ctx = TaskContext(checkpoint="", config=loaded.config.model_dump(mode="json"), run_dir=str(run), device="cpu")
    record = predict_item(ctx, FileItem(0, str(raw), None, "img.tif", "img"), loaded=loaded)
    return run, record, json.loads(marker_path(run, "img").read_text())


def test_zarr_outputs_and_their_paths_in_the_batch_marker(tmp_path):
    run, record, marker = run_item(tmp_path, segmentation(2, output_format="zarr"), stray=True)
    assert marker["outputs"] == {
        "probabilities": "per_image/img.zarr/prediction",
        "labels": "per_image/img.zarr/labels",
    }
    assert marker["files"] == ["per_image/img.tif", "per_image_binarized/img.tif"]
    assert all(p.exists() for p in record.paths(run))


def test_ome_zarr_outputs_in_the_batch_marker_are_read_back_lazily(tmp_path):
    from napari_bioflow.engine.batch.results import lazy_results

    run, record, marker = run_item(tmp_path, segmentation(2, output_format="ome-zarr", save_tiff=False))
    assert marker["outputs"] == {
        "probabilities": "per_image/img.ome.zarr/0",
        "labels": "per_image_binarized/img.ome.zarr/0",
    }
    assert marker["files"] == []
    arrays = lazy_results(run)["img.tif"]
    assert arrays["probabilities"].shape == (2, 80, 96) and arrays["labels"].shape == (80, 96)
    np.testing.assert_array_equal(arrays["labels"].compute(), (real_crop((80, 96)) < 100).astype(np.uint8))


def test_restoration_outputs_through_the_writer(tmp_path):
    run, _, marker = run_item(tmp_path, restoration(output_format="zarr"))
    assert marker["outputs"] == {"image": "per_image/img.zarr/image"}
    assert marker["files"] == ["per_image/img.tif"]
    np.testing.assert_allclose(
        tifffile.imread(run / "per_image" / "img.tif")[0], real_crop((80, 96)).astype(np.float32) * 2 + 10, rtol=1e-6
    )


def test_a_redo_clears_what_an_unfinished_attempt_left_in_either_format(tmp_path):
    from napari_bioflow.engine.batch.task import clear_partial
    from napari_bioflow.engine.predict.writer import partial_outputs

    for path in partial_outputs(tmp_path, "img"):
        path.mkdir(parents=True)
    (tmp_path / "per_image" / "other.ome.zarr").mkdir()
    clear_partial(tmp_path, "img")
    assert not any(p.exists() for p in partial_outputs(tmp_path, "img"))
    assert (tmp_path / "per_image" / "other.ome.zarr").is_dir()


def test_results_are_never_overwritten(tmp_path):
    from napari_bioflow.engine.errors import InputError
    from napari_bioflow.engine.predict.inference import ImagePrediction

    (tmp_path / "per_image_binarized" / "img.ome.zarr").mkdir(parents=True)
    with pytest.raises(InputError, match=r"per_image_binarized/img\.ome\.zarr exists already; results are never"):
        ImagePrediction(segmentation(2, output_format="ome-zarr"), real_crop((40, 40)), "img", tmp_path, "img")
