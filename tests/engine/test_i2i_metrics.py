"""Image to image test metrics: MAE and MSE (in the target's intensities) beside PSNR and SSIM, exact when the
image is read chunk by chunk; declared for the docks and the CLI (metric_keys, their words)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from napari_bioflow.engine.workflows import get_workflow
from napari_bioflow.engine.workflows.image_to_image import chunked_image_metrics, image_metrics
from napari_bioflow.engine.workflows.spec import METRICS

FRAMES = Path(__file__).parents[1] / "data" / "timelapse_2d_consecutive.tif"  # real time-lapse frames


def test_mae_mse_exact_over_chunks(tmp_path):
    frames = tifffile.imread(FRAMES).astype(np.float32)
    prediction, target = frames[1][None], frames[2][None]  # frame t+1 as the "prediction" of frame t+2
    image = zarr.open_array(str(tmp_path / "p.zarr"), mode="w", shape=prediction.shape, chunks=(1, 64, 64), dtype="f4")
    image[...] = prediction
    got = chunked_image_metrics(image, lambda region: target[(slice(None), *region)], 2)
    d = prediction.astype(np.float64) - target
    assert got["mae"] == pytest.approx(np.abs(d).mean(), rel=1e-9)
    assert got["mse"] == pytest.approx(np.square(d).mean(), rel=1e-9)
    rng = target.max() - target.min()
    assert got["psnr"] == pytest.approx(10 * np.log10(rng**2 / np.square(d).mean()), rel=1e-9)
    whole = image_metrics(prediction, target)
    assert whole["mae"] == pytest.approx(got["mae"]) and whole["mse"] == pytest.approx(got["mse"])
    assert got["mae"] > 0 and got["mse"] > got["mae"]  # uint8 intensities: errors of several grey levels


def test_declared_for_the_front_ends():
    for wf in (get_workflow("image_to_image"), get_workflow("self_supervised", "crappify")):
        assert {"psnr", "ssim", "mae", "mse"} <= set(wf.metric_keys)
    assert METRICS["mae"].format(2.5) == "MAE 2.500" and METRICS["mse"].format(9.0) == "MSE 9.000"
