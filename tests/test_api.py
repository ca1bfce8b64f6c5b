"""The Python API (napari_bioflow.api): train from a config or arrays, predict an array or a file, read a run back;
all through the engine's own objects, so the folders are those of the CLI."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from helpers import TINY_MODEL, bbbc_pairs, crop_folders, read_pair, tiny_config

from napari_bioflow import api
from napari_bioflow.engine.errors import InputError


def test_train_from_config_then_predict_array_file_and_read_back(tmp_path):
    raw, lab = crop_folders(tmp_path / "train", n=2, size=96)
    traw, tlab = crop_folders(tmp_path / "test", split="test", n=1, size=96)
    cfg = tiny_config(tmp_path / "runs", raw, lab, data={"test_raw": str(traw), "test_label": str(tlab)})
    reports = []
    run = api.train(cfg, on_report=reports.append)
    assert run.name == "tiny_1" and run.best_checkpoint.is_file()
    assert [r["epoch"] for r in run.history] == [1] and 0 <= run.history[0]["iou_foreground"] <= 1
    assert type(reports[0]).__name__ == "StartReport" and type(reports[-1]).__name__ == "DoneReport"
    assert [r["image"] for r in run.metrics][-1] == "ALL (pixels pooled)"  # the test folder was predicted
    assert run.files("per_image_binarized")

    image, truth = read_pair(*bbbc_pairs("test")[0])
    pred = api.predict(run.best_checkpoint, image[:96, :96], truth[:96, :96], name="arr")
    assert pred.outputs["labels"].shape == (96, 96) and pred.outputs["probabilities"].shape == (2, 96, 96)
    assert set(np.unique(pred.outputs["labels"])) <= {0, 1}
    assert 0 <= pred.metrics["image"]["iou_foreground"] <= 1
    assert pred.results_dir.name == "arr_1" and (pred.results_dir / "per_image_binarized" / "image.tif").is_file()

    one = next(traw.iterdir())
    pred = api.predict(run.best_checkpoint, one)
    assert list(pred.images) == [str(one)] and pred.metrics[str(one)] == {}

    again = api.open_run(run.experiment_dir / "config_files" / "tiny_1.yaml")
    assert again.history == run.history and again.config.workflow == "semantic_segmentation"
    assert api.open_run(run.best_checkpoint).results_dir == run.results_dir


def test_train_image_to_image_from_arrays(tmp_path):
    frames = tifffile.imread(_frames())
    cfg = api.config(
        workflow="image_to_image",
        name="i2i",
        output_dir=tmp_path,
        device="cpu",
        data={"patch_size": [64, 64]},
        model={"options": dict(TINY_MODEL)},
        train={"epochs": 1, "steps_per_epoch": 2, "batch_size": 2},
    )
    run = api.train(cfg, list(frames[:2]), list(frames[1:3]), val_images=[frames[2]], val_labels=[frames[3]])
    assert np.isfinite(run.history[0]["psnr"])
    pred = api.predict(run.best_checkpoint, frames[2], frames[3])
    assert pred.outputs["image"].shape == (1, 160, 160)
    assert {"psnr", "ssim", "mae", "mse"} <= set(pred.metrics["image"])


def _frames():
    from pathlib import Path

    return Path(__file__).parent / "data" / "timelapse_2d_consecutive.tif"


def test_config_template_and_bad_input(tmp_path):
    cfg = api.config(workflow="self_supervised/crappify", output_dir=tmp_path)
    assert cfg.workflow == "self_supervised" and cfg.self_supervised.pretext == "crappify"
    assert cfg.data.train_raw is None  # the template's placeholder paths are not kept
    cfg = api.config(workflow="semantic_segmentation", output_dir=tmp_path, device="cpu", model={"options": TINY_MODEL})
    with pytest.raises(InputError, match="2 training images but 1 labels"):
        api.train(cfg, [np.zeros((64, 64))] * 2, [np.zeros((64, 64), np.uint8)])
    with pytest.raises(InputError, match="need their labels"):
        api.train(cfg, [np.zeros((64, 64))])
    with pytest.raises(InputError, match="is not a run"):
        api.open_run(tmp_path)
