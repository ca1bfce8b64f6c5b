"""data.save_prob_map: the patch-sampling probability map of each training image in results/<run>/prob_map/."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from helpers import crop_folders, run_all, tiny_config

from napari_bioflow.engine.train import Trainer


def test_prob_maps_weight_foreground(tmp_path):
    raw, lab = crop_folders(tmp_path / "data", n=4, size=96)
    before = sorted(p.name for p in raw.iterdir()) + sorted(p.name for p in lab.iterdir())
    cfg = tiny_config(tmp_path / "runs", raw, lab, data={"foreground_sampling": 0.8, "save_prob_map": True})
    trainer = Trainer(cfg)
    run_all(trainer)
    files = sorted((trainer.experiment.results / "prob_map").glob("*.tif"))
    train = trainer.dataset.train
    assert len(files) == len(train) == 3  # val_split 0.25 holds one image aside
    assert sorted(p.name for p in raw.iterdir()) + sorted(p.name for p in lab.iterdir()) == before
    checked = 0
    for sample in train:
        prob = tifffile.imread(trainer.experiment.results / "prob_map" / f"{sample.name.rsplit('/', 1)[-1][:-4]}.tif")
        assert prob.dtype == np.float32 and prob.shape == (96, 96)
        assert prob.min() >= 0 and prob.sum() == pytest.approx(1.0, rel=1e-4)
        fg = np.asarray(sample.label).reshape(96, 96) > 0
        inner = np.zeros((96, 96), bool)
        inner[32:65, 32:65] = True  # the centres a 64x64 patch can have
        assert prob[~inner].max() == 0  # no patch is centred outside the area a patch's centre can have
        if (fg & inner).any():  # foreground there carries more chance per pixel than background
            assert prob[fg & inner].mean() > 2 * prob[~fg & inner].mean()
            checked += 1
    assert checked


def test_uniform_without_foreground_sampling(tmp_path):
    raw, lab = crop_folders(tmp_path / "data", n=2, size=96)
    trainer = Trainer(tiny_config(tmp_path / "runs", raw, lab, data={"save_prob_map": True}))
    run_all(trainer)
    (path,) = sorted((trainer.experiment.results / "prob_map").glob("*.tif"))
    prob = tifffile.imread(path)
    assert np.unique(prob[prob > 0]).size == 1 and (prob > 0).sum() == 33 * 33
    off = Trainer(tiny_config(tmp_path / "off", raw, lab))
    run_all(off)
    assert not (off.experiment.results / "prob_map").exists()
