"""TensorBoard logs in results/<run>/tensorboard/: the per-epoch losses, metrics and learning rate as scalars,
read back with tensorboard's own reader; off with train.tensorboard: false; a note, not a crash, without it."""

from __future__ import annotations

import pytest
from helpers import crop_folders, reports_of, run_all, tiny_config

from napari_bioflow.engine.train import StartReport, Trainer
from napari_bioflow.engine.train import tensorboard as tb_module


def scalars(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_scalars_per_epoch(tmp_path):
    raw, lab = crop_folders(tmp_path / "data", n=2, size=96)
    trainer = Trainer(tiny_config(tmp_path / "runs", raw, lab, train={"epochs": 2}))
    run_all(trainer)
    got = scalars(trainer.experiment.results / "tensorboard")
    assert {"loss/train_loss", "loss/val_loss", "train/learning_rate", "metrics/iou_foreground"} <= set(got)
    assert [s for s, _ in got["loss/train_loss"]] == [1, 2]
    assert got["train/learning_rate"][0][1] == pytest.approx(3e-3)


def test_off_and_absent(tmp_path, monkeypatch):
    raw, lab = crop_folders(tmp_path / "data", n=2, size=96)
    trainer = Trainer(tiny_config(tmp_path / "off", raw, lab, train={"tensorboard": False}))
    run_all(trainer)
    assert not (trainer.experiment.results / "tensorboard").exists()
    monkeypatch.setattr(tb_module, "tensorboard_installed", lambda: False)
    trainer = Trainer(tiny_config(tmp_path / "absent", raw, lab))
    (start,) = reports_of(run_all(trainer), StartReport)
    assert any("tensorboard is not installed" in n for n in start.notes)
    assert trainer.best_checkpoint.is_file() and not (trainer.experiment.results / "tensorboard").exists()


def test_image_samples(tmp_path):
    """The first validation patch (raw, target, prediction) as images per epoch, at the patch's size."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    raw, lab = crop_folders(tmp_path / "data", n=2, size=96)
    trainer = Trainer(tiny_config(tmp_path / "runs", raw, lab, train={"epochs": 2}))
    run_all(trainer)
    acc = EventAccumulator(str(trainer.experiment.results / "tensorboard"), size_guidance={"images": 0})
    acc.Reload()
    tags = set(acc.Tags()["images"])
    assert {"samples/raw", "samples/target", "samples/prediction"} <= tags
    patch = trainer.cfg.data.patch_size
    for tag in tags:
        events = acc.Images(tag)
        assert [e.step for e in events] == [1, 2]
        assert (events[0].height, events[0].width) == tuple(patch[-2:])
