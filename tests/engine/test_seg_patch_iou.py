"""Semantic segmentation: per-patch test IoU (patch_size tiles) beside per-image and set IoU in metrics.csv."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import crop_folders, read_csv, tiny_config

from napari_bioflow import api
from napari_bioflow.engine.train.metrics import iou, patch_iou


def test_patch_iou_is_the_mean_over_tiles():
    rng = np.random.default_rng(0)
    labels, truth = rng.integers(0, 2, (100, 90)), rng.integers(0, 2, (100, 90))
    got = patch_iou(labels, lambda r: truth[r], 2, [64, 64])
    tiles = [(slice(0, 64), slice(0, 64)), (slice(0, 64), slice(64, 90)), (slice(64, 100), slice(0, 64))]
    tiles.append((slice(64, 100), slice(64, 90)))
    want = np.mean([iou(labels[t], truth[t], 2)["iou_foreground"] for t in tiles])
    assert got["iou_patch_foreground"] == pytest.approx(want)


def test_metrics_csv_holds_patch_iou(tmp_path):
    raw, lab = crop_folders(tmp_path / "train", n=2, size=96)
    traw, tlab = crop_folders(tmp_path / "test", split="test", n=1, size=128)
    run = api.train(tiny_config(tmp_path / "runs", raw, lab, data={"test_raw": str(traw), "test_label": str(tlab)}))
    rows = read_csv(run.results_dir / "metrics.csv")
    assert 0 <= float(rows[0]["iou_patch_foreground"]) <= 1 and "iou_foreground" in rows[0]
