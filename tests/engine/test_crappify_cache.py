"""self_supervised.cache_degraded: crappify's degraded training/validation copies written once to
results/<run>/crappified/<key>/{train,val}/, the training pairs read from them, reused on resume, the user's folders
untouched."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from helpers import run_all, tiny_config, tree

from napari_bioflow.engine.data.sampling import PatchSampler
from napari_bioflow.engine.train import Trainer

TIMELAPSE = Path(__file__).parent.parent / "data" / "timelapse_2d_crops.tif"


def write_frames(root: Path, roles: dict[str, list[int]]) -> dict[str, Path]:
    frames = tifffile.imread(TIMELAPSE)
    for role, indices in roles.items():
        (root / role).mkdir(parents=True, exist_ok=True)
        for i in indices:
            tifffile.imwrite(root / role / f"crop{i}.tif", frames[i])
    return {role: root / role for role in roles}


def test_degraded_copies_cached_used_and_reused(tmp_path):
    folders = write_frames(tmp_path / "data", {"train": [0, 1], "val": [2]})
    before = tree(tmp_path / "data")
    cfg = tiny_config(
        tmp_path / "out",
        workflow="self_supervised",
        data={"train_raw": str(folders["train"]), "val_raw": str(folders["val"]), "patch_size": [32, 32]},
        self_supervised={"pretext": "crappify", "cache_degraded": True},
        train={"epochs": 1, "steps_per_epoch": 2},
    )
    trainer = Trainer(cfg)
    run_all(trainer)
    assert tree(tmp_path / "data") == before  # nothing written beside the user's data
    (folder,) = (trainer.experiment.results / "crappified").iterdir()
    assert len(folder.name) == 12 and (folder / "settings.json").is_file()
    assert sorted(p.name for p in (folder / "train").iterdir()) == ["crop0.tif", "crop1.tif"]
    assert [p.name for p in (folder / "val").iterdir()] == ["crop2.tif"]
    wf = trainer.workflow
    splits = [("train", s) for s in trainer.dataset.train] + [("val", s) for s in trainer.dataset.val]
    for split, sample in splits:
        copy = tifffile.imread(folder / split / f"{Path(sample.name).stem}.tif")
        assert copy.dtype == np.float32 and copy.shape == (160, 160, 1)  # channel last, as the image
        copy = copy[..., 0]
        # the copy is what the workflow's degradation makes of the image
        expected = wf.degrade(np.asarray(sample.raw, np.float32), cfg)[0]
        np.testing.assert_allclose(copy, expected, rtol=1e-5, atol=1e-4)
        assert not np.allclose(copy, np.asarray(sample.raw)[..., 0])
    # the training pair: the input is the cached copy's patch (normalized), the target the clean patch
    sample = trainer.dataset.train[0]
    sampler = PatchSampler([sample], cfg.data.patch_size, trainer.normalizer, 0, 0.0, wf.read_target)
    xb, yb = sampler.read(0, (10, 20))
    x_in, target = wf.make_pair(torch.from_numpy(xb)[None], torch.from_numpy(yb)[None], torch.Generator(), cfg)
    copy = tifffile.imread(folder / "train" / f"{Path(sample.name).stem}.tif")
    np.testing.assert_allclose(x_in[0, 0].numpy(), trainer.normalizer(copy[10:42, 20:52])[..., 0], atol=1e-6)
    np.testing.assert_array_equal(target.numpy(), xb[None])
    # augmented (flips, intensity jitter) together: the input stays the augmented target's degraded copy
    ax, ay = wf.augment(torch.from_numpy(xb)[None], torch.from_numpy(yb)[None], cfg, torch.Generator().manual_seed(3))
    a_in, a_target = wf.make_pair(ax, ay, torch.Generator(), cfg)
    gain = (a_target.std() / torch.from_numpy(xb).std()).item()
    assert a_in.shape == a_target.shape == (1, 1, 32, 32)
    assert (a_in.std() / x_in.std()).item() == pytest.approx(gain, rel=1e-4)
    # reused: a second preparation of the run (as a resume does) reads the copies, it does not write them again;
    # other degradation settings give another key
    from napari_bioflow.engine.workflows.crappify_cache import cache_key

    other = cfg.model_copy(update={"self_supervised": cfg.self_supervised.model_copy(update={"noise": 0.3})})
    assert cache_key(wf, trainer.dataset, other) != cache_key(wf, trainer.dataset, cfg)
    stamp = {p: p.stat().st_mtime_ns for p in folder.rglob("*.tif")}
    wf.prepare_run(trainer.experiment.results, trainer.dataset, cfg)
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*.tif")} == stamp
    # a second run of the experiment with the same settings takes the copies over from the first: marked copies
    # come back as they were marked, so they were copied, not degraded again
    marked = folder / "train" / "crop0.tif"
    tifffile.imwrite(marked, np.full((160, 160, 1), 7.0, np.float32))
    second = Trainer(cfg)
    run_all(second)
    assert second.experiment.results != trainer.experiment.results
    copied = second.experiment.results / "crappified" / folder.name / "train" / "crop0.tif"
    assert np.all(tifffile.imread(copied) == 7.0)


def test_off_by_default(tmp_path):
    folders = write_frames(tmp_path / "data", {"train": [0], "val": [2]})
    cfg = tiny_config(
        tmp_path / "out",
        workflow="self_supervised",
        data={"train_raw": str(folders["train"]), "val_raw": str(folders["val"]), "patch_size": [32, 32]},
        self_supervised={"pretext": "crappify"},
        train={"epochs": 1, "steps_per_epoch": 1},
    )
    trainer = Trainer(cfg)
    run_all(trainer)
    assert not (trainer.experiment.results / "crappified").exists()
