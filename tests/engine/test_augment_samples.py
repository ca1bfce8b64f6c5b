"""augment.samples: N augmented training patches in results/<run>/aug/, raw and label side by side."""

from __future__ import annotations

import numpy as np
from helpers import crop_folders, run_all, tiny_config
from skimage.io import imread

from napari_bioflow.engine.train import Trainer


def test_samples_written_at_the_start(tmp_path):
    raw, lab = crop_folders(tmp_path / "data", n=2, size=96)
    trainer = Trainer(tiny_config(tmp_path / "runs", raw, lab, augment={"samples": 3}))
    run_all(trainer)
    files = sorted((trainer.experiment.results / "aug").glob("*.png"))
    assert [f.name for f in files] == ["aug_001.png", "aug_002.png", "aug_003.png"]
    im = imread(files[0])
    assert im.shape == (64, 64 + 4 + 64)  # raw | separator | label, one 64x64 patch each
    assert set(np.unique(im[:, 68:])) <= {0, 255}  # the label side holds the two classes
    none = Trainer(tiny_config(tmp_path / "none", raw, lab))
    run_all(none)
    assert not (none.experiment.results / "aug").exists()
