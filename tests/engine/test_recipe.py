"""The training recipe of issue 14: batches that cover small data without repeats, the binarization threshold chosen
on the validation data (stored in the checkpoint, used by prediction; older checkpoints keep argmax), weight
averaging in the checkpoints, the GPU-only flags on the CPU, and the new defaults learning faster than the old ones
on a held-aside split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from helpers import crop_folders, reports_of, run_all, tiny_config

from napari_bioflow.cli import main
from napari_bioflow.engine.data.sampling import PatchSampler
from napari_bioflow.engine.data.sources import Sample
from napari_bioflow.engine.errors import InputError
from napari_bioflow.engine.predict.labels import argmax_labels
from napari_bioflow.engine.train import DoneReport, Trainer
from napari_bioflow.engine.train.accel import StepAccelerator
from napari_bioflow.engine.train.checkpoint import read_checkpoint, save_checkpoint
from napari_bioflow.engine.train.threshold import ThresholdPicker

OLD = {"scheduler": "none", "loss": "ce", "sampling": "random", "ema": 0.0, "pick_threshold": False}


def _samples(n: int, side: int = 32) -> list[Sample]:
    rng = np.random.default_rng(0)
    return [
        Sample(
            name=f"s{i}",
            raw=np.full((side, side, 1), i, np.float32),
            label=(rng.random((side, side)) > 0.5).astype(np.uint8),
        )
        for i in range(n)
    ]


def test_cover_batches_hold_each_tile_once_per_round():
    """4 tiles of the patch size, batch 4: every batch holds the 4 tiles (drawn with replacement, most would repeat
    one); 2 tiles twice the patch area: each comes twice per round of 4."""
    sampler = PatchSampler(_samples(4), (32, 32), lambda x: x, seed=3, cover=True)
    for _ in range(20):
        x, _ = sampler.batch(4)
        assert sorted(x[:, 0, 0, 0].tolist()) == [0, 1, 2, 3]
    random = PatchSampler(_samples(4), (32, 32), lambda x: x, seed=3)
    repeats = sum(len(set(random.batch(4)[0][:, 0, 0, 0].tolist())) < 4 for _ in range(50))
    assert repeats > 25  # the old order: about 9 batches in 10 repeat a tile
    wide = [Sample(name=f"w{i}", raw=np.full((32, 64, 1), i, np.float32)) for i in range(2)]
    sampler = PatchSampler(wide, (32, 32), lambda x: x, seed=1, cover=True, read_target=lambda s, sl, x: x[0])
    for _ in range(5):
        x, _ = sampler.batch(4)
        assert sorted(x[:, 0, 0, 0].tolist()) == [0, 0, 1, 1]


def test_threshold_picker_scores_every_threshold():
    prob_fg = np.array([0.9, 0.8, 0.35, 0.3, 0.2, 0.1, 0.05, 0.02])  # two foreground pixels at 0.35/0.3
    target = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    pred = np.stack([1 - prob_fg, prob_fg])[None, :, None, :]  # (B, 2, 1, 8)
    picker = ThresholdPicker()
    assert picker.applies(pred, target[None, None])
    picker.update(pred, target[None, None])
    threshold, iou = picker.best()
    assert 0.2 < threshold <= 0.3 and iou == 1.0  # argmax (0.5) would miss two of four: IoU 0.5
    assert not ThresholdPicker.applies(np.zeros((2, 1, 4, 4)), np.zeros((2, 4, 4), np.int64))  # one sigmoid
    assert ThresholdPicker().best() is None  # no foreground seen


def test_three_classes_weigh_the_background():
    """With 3 classes the threshold weighs the background against the likeliest other class: here the background
    wins argmax on two pixels of class 2 (shares p_2 / (p_0 + p_2) of 0.42 and 0.44) and one of class 1 (0.45), the
    background pixel's share is 0.05: a threshold between gives every class its pixels, and the labels follow it."""
    p = np.array(  # (3 classes, 6 pixels): true classes 1, 1, 2, 2, 2, 0
        [
            [0.10, 0.50, 0.55, 0.50, 0.20, 0.90],
            [0.85, 0.41, 0.05, 0.10, 0.10, 0.05],
            [0.05, 0.09, 0.40, 0.40, 0.70, 0.05],
        ]
    )
    target = np.array([1, 1, 2, 2, 2, 0])
    np.testing.assert_array_equal(argmax_labels(p), [1, 0, 0, 0, 2, 0])  # argmax: IoU 0.5 and 1/3
    picker = ThresholdPicker()
    picker.update(p[None, :, None, :], target[None, None])
    threshold, iou = picker.best()
    assert 0.4 < threshold <= 0.42 and iou == 1.0  # of equal scores, the one nearest 0.5
    np.testing.assert_array_equal(argmax_labels(p, threshold), target)
    np.testing.assert_array_equal(argmax_labels(p, 0.5), argmax_labels(p))  # 0.5 is argmax


def _predict_labels(tmp_path: Path, ckpt: Path, images: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    out = tmp_path / name
    assert main(["predict", "--checkpoint", str(ckpt), "--input", str(images), "--output", str(out)]) == 0
    labels = next(out.rglob("per_image_binarized/*.tif"))
    probs = next(p for p in out.rglob("per_image/*.tif"))
    return tifffile.imread(probs), tifffile.imread(labels)


def test_threshold_is_stored_and_prediction_binarizes_with_it(tmp_path):
    raw_dir, label_dir = crop_folders(tmp_path / "data", n=4, size=64)
    cfg = tiny_config(tmp_path / "runs", raw_dir, label_dir, train={"epochs": 2, "steps_per_epoch": 2})
    trainer = Trainer(cfg)
    done = reports_of(run_all(trainer), DoneReport)[0]
    ckpt = read_checkpoint(done.checkpoint)
    threshold = ckpt["workflow_state"]["threshold"]
    assert 0.05 <= threshold <= 0.95
    assert set(ckpt) >= {"state_dict", "train_state_dict", "ema_updates"}  # EMA weights predict, raw ones resume
    assert ckpt["ema_updates"] == 4

    # a threshold far from 0.5 makes the difference visible: labels follow it, not argmax
    ckpt["workflow_state"]["threshold"] = 0.2
    low = save_checkpoint(tmp_path / "low.pth", ckpt)
    prob, labels = _predict_labels(tmp_path, low, raw_dir, "low")
    assert prob.shape[0] == 2
    np.testing.assert_array_equal(labels, (prob[1] >= 0.2).astype(labels.dtype))
    assert (labels != prob.argmax(0)).any()
    np.testing.assert_array_equal(argmax_labels(prob, 0.2), labels)

    # an older checkpoint (no threshold) keeps argmax
    del ckpt["workflow_state"]["threshold"]
    old = save_checkpoint(tmp_path / "old.pth", ckpt)
    prob, labels = _predict_labels(tmp_path, old, raw_dir, "old")
    np.testing.assert_array_equal(labels, prob.argmax(0).astype(labels.dtype))


def test_gpu_flags_on_the_cpu(tmp_path):
    cfg = tiny_config(tmp_path, train={"amp": "auto", "channels_last": True})
    acc = StepAccelerator(cfg, "cpu")
    assert acc.dtype is None and acc.scaler is None and not acc.channels_last and not acc.compile
    assert acc.describe() == ""
    import torch

    x = torch.zeros(2, 1, 8, 8)
    assert acc.layout(x) is x and acc.host((np.zeros(2),))[0].is_pinned() is False
    raw_dir, label_dir = crop_folders(tmp_path / "data", n=2, size=64)
    cfg = tiny_config(tmp_path / "runs", raw_dir, label_dir, train={"compile": True})
    with pytest.raises(InputError, match=r"^train.compile needs a CUDA GPU .*set train.compile to false"):
        run_all(Trainer(cfg))
    assert not (tmp_path / "runs").exists()  # refused before the run's folder


def test_three_class_checkpoints_store_the_threshold_and_predict_with_it(tmp_path):
    """A 3-class run (BBBC007 boundary / interior) stores the threshold picked on its validation data; the predicted
    labels are the probabilities weighed with it, not argmax, when it is far from 0.5."""
    from skimage.segmentation import find_boundaries

    def three(lab):
        out = (lab > 0).astype(np.uint8) * 2
        out[find_boundaries(lab, mode="inner")] = 1
        return out

    raw_dir, label_dir = crop_folders(tmp_path / "data", n=4, size=64, label_transform=three)
    cfg = tiny_config(tmp_path / "runs", raw_dir, label_dir, n_classes=3, train={"epochs": 2, "steps_per_epoch": 2})
    done = reports_of(run_all(Trainer(cfg)), DoneReport)[0]
    ckpt = read_checkpoint(done.checkpoint)
    assert 0.05 <= ckpt["workflow_state"]["threshold"] <= 0.95
    ckpt["workflow_state"]["threshold"] = 0.2
    low = save_checkpoint(tmp_path / "low.pth", ckpt)
    out = tmp_path / "pred"
    assert main(["predict", "--checkpoint", str(low), "--input", str(raw_dir), "--output", str(out)]) == 0
    prob = tifffile.imread(next(out.rglob("per_image/*.tif")))
    labels = tifffile.imread(next(out.rglob("per_image_binarized/*.tif")))
    assert prob.shape[0] == 3
    fg = prob[1:].max(0)
    expected = np.where(fg >= 0.2 * (prob[0] + fg), prob[1:].argmax(0) + 1, 0)
    np.testing.assert_array_equal(labels, expected.astype(labels.dtype))
    assert (labels != prob.argmax(0)).any() and (labels > 0).sum() > (prob.argmax(0) > 0).sum()


def _test_iou(trainer, pairs) -> float:
    from napari_bioflow.engine.predict.inference import predict_array

    loaded = trainer.loaded_model()
    inter = union = 0
    for raw, lab in pairs:
        pred = argmax_labels(predict_array(loaded, raw), trainer.workflow.state.get("threshold"))
        inter += np.sum((pred > 0) & (lab > 0))
        union += np.sum((pred > 0) | (lab > 0))
    return inter / union


def test_new_defaults_learn_faster_than_the_old_ones(tmp_path):
    """Same tiny model, data and 24 steps: the test IoU on held-aside images (other BBBC007 images) is higher with
    the new defaults than with the old recipe, for each of two seeds."""
    from helpers import bbbc_pairs, read_pair

    raw_dir, label_dir = crop_folders(tmp_path / "data", n=4, size=64)
    val_raw, val_label = crop_folders(tmp_path / "val", split="test", n=1, size=64, origin=(20, 20))
    test = [read_pair(*p) for p in bbbc_pairs("test")]
    test = [(r[200:328, 200:328], (lab[200:328, 200:328] > 0).astype(np.uint8)) for r, lab in test]
    for seed in (0, 1):
        scores = {}
        for name, train in (("old", OLD), ("new", {})):
            cfg = tiny_config(
                tmp_path / f"{name}{seed}",
                raw_dir,
                label_dir,
                seed=seed,
                data={"val_raw": str(val_raw), "val_label": str(val_label)},
                train={"epochs": 4, "steps_per_epoch": 6, "batch_size": 4, **train},
            )
            trainer = Trainer(cfg)
            run_all(trainer)
            scores[name] = _test_iou(trainer, test)
        assert scores["new"] > scores["old"] + 0.02, scores


def test_threshold_crops_cover_what_the_validation_patches_cover():
    """The threshold is picked on validation images cropped to one prediction tile, as many as the validation
    patches cover (patches thinned to 64 of 80 here: 4 of the 5 images), each crop centred, labels alongside."""
    from types import SimpleNamespace

    from napari_bioflow.engine.data.training_data import PatchData

    val = _samples(5, side=64)
    cfg = SimpleNamespace(
        seed=0,
        data=SimpleNamespace(patch_size=(16, 16), foreground_sampling=0.0),
        train=SimpleNamespace(sampling="cover"),
    )
    data = PatchData(SimpleNamespace(train=_samples(2), val=val), cfg, lambda x: x, None)
    assert len(data.positions) == 64
    crops = list(data.threshold_crops(2048))
    assert [raw[0, 0, 0] for raw, _ in crops] == [0, 1, 2, 3]
    assert all(raw.shape == (64, 64, 1) and lab.shape == (64, 64) for raw, lab in crops)
    np.testing.assert_array_equal(crops[2][1], val[2].label)
    small = list(data.threshold_crops(40))  # a tile cap below the image size: the centre 40 x 40
    assert len(small) == 5 and small[0][0].shape == (40, 40, 1)
    np.testing.assert_array_equal(small[1][1], val[1].label[12:52, 12:52])
    import dask.array as da

    lazy = [Sample(name="lazy", raw=da.from_array(val[0].raw, chunks=16), label=val[0].label)]
    data = PatchData(SimpleNamespace(train=_samples(2), val=lazy), cfg, lambda x: x, None)
    (raw, lab), *_ = data.threshold_crops(2048)  # a lazy image is read into memory (one tile at most)
    assert isinstance(raw, np.ndarray) and raw.shape == (64, 64, 1) and lab.shape == (64, 64)


def test_threshold_is_picked_on_patches_and_whole_validation_images(tmp_path):
    """The stored threshold is the best one over the validation patches (64 x 64, as training sees them) together
    with the validation image predicted as prediction predicts it (one 128 x 128 tile): the U-Net's instance norm
    answers differently on each, and either alone would pick another threshold."""
    from napari_bioflow.engine.predict.inference import predict_array

    raw_dir, label_dir = crop_folders(tmp_path / "data", n=4, size=64)
    val_raw, val_label = crop_folders(tmp_path / "val", split="test", n=1, size=128, origin=(20, 20))
    cfg = tiny_config(
        tmp_path / "runs",
        raw_dir,
        label_dir,
        data={"val_raw": str(val_raw), "val_label": str(val_label)},
        train={"epochs": 2, "steps_per_epoch": 3, "batch_size": 4},
    )
    trainer = Trainer(cfg)
    run_all(trainer)
    raw = tifffile.imread(next(val_raw.glob("*.tif")))
    label = (tifffile.imread(next(val_label.glob("*.tif"))) > 0).astype(np.int64)
    whole, patches, both = ThresholdPicker(), ThresholdPicker(), ThresholdPicker()
    loaded = trainer.loaded_model()
    prob = predict_array(loaded, raw)[None]
    whole.update(prob, label[None])
    both.update(prob, label[None])
    for y in (0, 64):
        for x in (0, 64):
            patch = predict_array(loaded, raw[y : y + 64, x : x + 64])[None]
            patches.update(patch, label[None, y : y + 64, x : x + 64])
            both.update(patch, label[None, y : y + 64, x : x + 64])
    stored = trainer.workflow.state["threshold"]
    assert stored == pytest.approx(both.best()[0])
    assert whole.best()[0] != pytest.approx(stored) and patches.best()[0] != pytest.approx(stored)
