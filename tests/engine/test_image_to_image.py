"""Image to image on real images with a known relation: a degraded copy (blurred, noisy) of a real time-lapse crop
or nuclei volume is the raw image, the real image the target. The 2D U-Net beats the identity baseline in PSNR on a
held-aside pair; EDSR, RCAN and DFCAN train and predict; a 3D U-Net trains and predicts; L1 and MSE are the losses
they claim to be; multi-channel raw and target work; mismatched pairs are refused before anything is written.
"""

import math
import re
from pathlib import Path

import numpy as np
import pytest
import tifffile
from helpers import NUCLEI, read_csv, reports_of, run_all, tiny_config, tree
from scipy.ndimage import gaussian_filter

from napari_bioflow.config import RunConfig
from napari_bioflow.engine.data.sources import folder_pairs, make_sample
from napari_bioflow.engine.errors import InputError
from napari_bioflow.engine.predict.inference import predict_array, predict_files
from napari_bioflow.engine.train import DoneReport, EpochReport, StartReport, Trainer
from napari_bioflow.engine.train.checkpoint import load_model, read_checkpoint

DATA = Path(__file__).parents[1] / "data"
TIMELAPSE = DATA / "timelapse_2d_crops.tif"  # four real 160x160 crops of the time-lapse (see data/ATTRIBUTION.md)

# tiny restoration networks (the defaults are sized for real use)
RESTORATION = {
    "edsr": {"n_feats": 8, "n_resblocks": 2},
    "rcan": {"n_resgroups": 2, "n_resblocks": 2, "n_feats": 8, "reduction": 4},
    "dfcan": {"n_feats": 8, "n_groups": 2, "n_blocks": 2, "reduction": 4},
}
# no normalization layers: instance norm makes a U-Net nearly blind to the brightness of each patch (it removes
# every channel's mean and scale), and restoring intensities needs it
UNET = {"feature_maps": [16, 32], "norm": "none"}


def psnr(prediction, target) -> float:
    """PSNR in dB with the target's value range as the peak, computed here independently of the engine."""
    prediction, target = np.asarray(prediction, np.float64), np.asarray(target, np.float64)
    return 10 * math.log10((target.max() - target.min()) ** 2 / np.mean((prediction - target) ** 2))


def degrade(image: np.ndarray, seed: int, blur: float = 1.0, noise: float = 0.16) -> np.ndarray:
    """The known relation: Gaussian blur, then Gaussian noise of `noise` x the image maximum; same dtype."""
    rng = np.random.default_rng(seed)
    top = float(image.max())
    out = gaussian_filter(image.astype(np.float32), blur) + rng.normal(0, noise * top, image.shape)
    return np.clip(np.round(out), 0, np.iinfo(image.dtype).max).astype(image.dtype)


def write_pairs(root: Path, roles: dict[str, list[int]]) -> dict[str, tuple[Path, Path]]:
    """(raw, target) folders per role from the time-lapse crops: raw the degraded crop, target the crop itself."""
    frames = tifffile.imread(TIMELAPSE)
    out = {}
    for role, indices in roles.items():
        raw_dir, target_dir = Path(root) / role / "raw", Path(root) / role / "target"
        raw_dir.mkdir(parents=True, exist_ok=True)
        target_dir.mkdir(parents=True, exist_ok=True)
        for i in indices:
            tifffile.imwrite(raw_dir / f"crop{i}.tif", degrade(frames[i], seed=i))
            tifffile.imwrite(target_dir / f"crop{i}.tif", frames[i])
        out[role] = (raw_dir, target_dir)
    return out


def i2i_config(output_dir: Path, pairs: tuple[Path, Path], **sections):
    return tiny_config(output_dir, *pairs, workflow="image_to_image", **sections)


# ----------------------------------------------------------------------------------------------------------------
# 2D U-Net: beats the identity baseline on a held-aside pair


@pytest.fixture(scope="module")
def unet_2d(tmp_path_factory):
    root = tmp_path_factory.mktemp("i2i2d")
    pairs = write_pairs(root, {"train": [0, 1], "val": [2], "test": [3]})
    cfg = RunConfig.from_dict(
        {
            "workflow": "image_to_image",
            "name": "restore",
            "output_dir": str(root / "out"),
            "device": "cpu",
            "seed": 0,
            "data": {
                "train_raw": str(pairs["train"][0]),
                "train_label": str(pairs["train"][1]),
                "val_raw": str(pairs["val"][0]),
                "val_label": str(pairs["val"][1]),
                "patch_size": [64, 64],
            },
            "model": {"options": dict(UNET)},
            "train": {"epochs": 4, "patience": 0, "batch_size": 4, "steps_per_epoch": 10, "learning_rate": 3e-3},
        }
    )
    trainer = Trainer(cfg)
    reports = run_all(trainer)
    (done,) = reports_of(reports, DoneReport)
    results = list(
        predict_files(load_model(done.checkpoint), folder_pairs(*pairs["test"], "test"), trainer.experiment.results)
    )
    return trainer, reports, results, pairs


def test_2d_unet_beats_the_identity_baseline_on_a_held_aside_pair(unet_2d):
    trainer, reports, (result,), pairs = unet_2d
    raw = tifffile.imread(pairs["test"][0] / "crop3.tif")
    target = tifffile.imread(pairs["test"][1] / "crop3.tif")
    identity = psnr(raw, target)
    out = trainer.experiment.results
    prediction = tifffile.imread(out / "per_image" / "crop3.tif")
    assert prediction.shape == (1, 160, 160) and prediction.dtype == np.float32
    m = result.metrics
    print(
        f"\nimage to image 2D on a held-aside pair: U-Net {m['psnr']:.2f} dB (SSIM {m['ssim']:.3f}), identity "
        f"{identity:.2f} dB (SSIM of the raw image {_ssim(raw, target):.3f}); validation PSNR by epoch "
        f"{[round(e.metrics['psnr'], 2) for e in reports_of(reports, EpochReport)]}"
    )
    # the engine's PSNR is that of the written prediction, in the target's intensities
    assert m["psnr"] == pytest.approx(psnr(prediction[0], target), abs=1e-6)
    assert 0 < m["ssim"] <= 1
    # seed 0: 25.3 dB against an identity of 18.1 dB (seeds 1-3 gave 26.4, 26.3 and 23.7 dB)
    assert 15 < identity < 21
    assert m["psnr"] > identity + 4
    assert m["ssim"] > _ssim(raw, target) + 0.1
    rows = read_csv(out / "metrics.csv")
    assert [r["image"] for r in rows] == ["crop3.tif", "ALL (mean)"]
    assert float(rows[0]["psnr"]) == pytest.approx(m["psnr"]) and float(rows[0]["ssim"]) == pytest.approx(m["ssim"])
    # the zarr store behind the viewer layer holds the same image
    import zarr

    np.testing.assert_array_equal(
        zarr.open_array(str(out / "per_image" / "crop3.zarr" / "image"), mode="r")[...], prediction
    )


def test_2d_unet_validation_psnr_rises_and_is_logged(unet_2d):
    trainer, reports, _, _ = unet_2d
    epochs = reports_of(reports, EpochReport)
    assert max(e.metrics["psnr"] for e in epochs[1:]) > epochs[0].metrics["psnr"] + 3
    rows = read_csv(trainer.experiment.results / "train_logs" / "restore_1_log.csv")
    assert [float(r["psnr"]) for r in rows] == pytest.approx([e.metrics["psnr"] for e in epochs])
    ckpt = read_checkpoint(trainer.experiment.best_checkpoint)
    assert ckpt["workflow"] == "image_to_image" and ckpt["model"]["out_channels"] == 1
    # the targets' own normalization travels in the checkpoint (predictions are mapped back to target intensities)
    assert set(ckpt["workflow_state"]) == {"target_normalization"}


def _ssim(a, b) -> float:
    from skimage.metrics import structural_similarity

    b = np.asarray(b, np.float64)
    return float(structural_similarity(np.asarray(a, np.float64), b, data_range=float(b.max() - b.min())))


# ----------------------------------------------------------------------------------------------------------------
# losses: L1 and MSE are what they say


@pytest.fixture(scope="module")
def small_pairs(tmp_path_factory):
    root = tmp_path_factory.mktemp("small")
    pairs = write_pairs(root, {"train": [0, 1], "val": [2]})
    # one 64x64 validation pair: a single validation patch, so its PSNR and the validation loss are tied exactly
    for folder in pairs["val"]:
        tifffile.imwrite(folder / "crop2.tif", tifffile.imread(folder / "crop2.tif")[40:104, 40:104])
    return pairs


@pytest.mark.parametrize("loss", ["l1", "mse"])
def test_l1_and_mse_losses(tmp_path, small_pairs, loss):
    cfg = i2i_config(
        tmp_path,
        small_pairs["train"],
        data={
            "val_raw": str(small_pairs["val"][0]),
            "val_label": str(small_pairs["val"][1]),
            "patch_size": [64, 64],
            "normalization": "percentile",  # errors below 1 on this scale (the bounds below need it)
        },
        model={"options": dict(UNET)},
        train={"loss": loss, "epochs": 2},
    )
    trainer = Trainer(cfg)
    epochs = reports_of(run_all(trainer), EpochReport)
    for e in epochs:
        assert np.isfinite(e.train_loss) and e.val_loss > 0
        value = e.metrics["psnr"]  # PSNR on the normalized scale (peak 1) of the one validation patch
        if loss == "mse":
            assert value == pytest.approx(-10 * math.log10(e.val_loss), abs=1e-4)
        else:  # mean |error| = L1 < 1: MSE lies between L1^2 and L1
            assert -10 * math.log10(e.val_loss) + 0.5 < value <= -20 * math.log10(e.val_loss) + 1e-4
    assert read_checkpoint(trainer.experiment.last_checkpoint)["config"]["train"]["loss"] == loss


# ----------------------------------------------------------------------------------------------------------------
# EDSR, RCAN, DFCAN: one short epoch, then a prediction of the right shape


@pytest.mark.parametrize("name", sorted(RESTORATION))
def test_restoration_models_train_and_predict(tmp_path, small_pairs, name):
    cfg = i2i_config(
        tmp_path,
        small_pairs["train"],
        data={"patch_size": [32, 32], "val_split": 0.5},
        model={"name": name, "options": RESTORATION[name]},
        train={"epochs": 1, "steps_per_epoch": 2},
    )
    trainer = Trainer(cfg)
    reports = run_all(trainer)
    (epoch,) = reports_of(reports, EpochReport)
    assert np.isfinite(epoch.train_loss) and np.isfinite(epoch.val_loss) and np.isfinite(epoch.metrics["psnr"])
    loaded = load_model(reports[-1].checkpoint)
    assert loaded.model.model_name == name
    image = tifffile.imread(small_pairs["train"][0] / "crop0.tif")[:100, :90]  # any size: these models keep it
    prediction = predict_array(loaded, image)
    assert prediction.shape == (1, 100, 90) and np.isfinite(prediction).all()
    np.testing.assert_array_equal(prediction, predict_array(trainer.loaded_model(), image))
    # test images without targets: a prediction, no metrics
    out = tmp_path / "no_targets"
    (result,) = predict_files(loaded, folder_pairs(small_pairs["val"][0], None, "test"), out)
    assert result.metrics == {} and not (out / "metrics.csv").exists()
    assert tifffile.imread(out / "per_image" / "crop2.tif").shape == (1, 64, 64)


@pytest.mark.parametrize("in_channels, target_channels", [(2, 1), (1, 2)])
def test_multichannel_raw_and_target(tmp_path, in_channels, target_channels):
    frames = tifffile.imread(TIMELAPSE)
    raw_dir, target_dir = tmp_path / "raw", tmp_path / "target"
    raw_dir.mkdir()
    target_dir.mkdir()
    for i in (0, 1):
        degraded = [degrade(frames[i], seed=i), degrade(frames[i], seed=10 + i, blur=2.0)]  # two degraded views
        tifffile.imwrite(raw_dir / f"crop{i}.tif", degraded[0] if in_channels == 1 else np.stack(degraded, -1))
        target = frames[i] if target_channels == 1 else np.stack([frames[i], gaussian_filter(frames[i], 2)], -1)
        tifffile.imwrite(target_dir / f"crop{i}.tif", target)
    cfg = i2i_config(
        tmp_path / "out",
        (raw_dir, target_dir),
        data={"patch_size": [32, 32], "in_channels": in_channels, "target_channels": target_channels},
        train={"epochs": 1, "steps_per_epoch": 2},
    )
    trainer = Trainer(cfg)
    reports = run_all(trainer)
    assert np.isfinite(reports_of(reports, EpochReport)[0].metrics["psnr"])
    results = list(
        predict_files(
            load_model(reports[-1].checkpoint), folder_pairs(raw_dir, target_dir, "test"), trainer.experiment.results
        )
    )
    assert len(results) == 2
    for r in results:
        assert np.isfinite(r.metrics["psnr"]) and np.isfinite(r.metrics["ssim"])
    assert tifffile.imread(trainer.experiment.results / "per_image" / "crop0.tif").shape == (target_channels, 160, 160)


# ----------------------------------------------------------------------------------------------------------------
# 3D U-Net on the real nuclei volume


def test_3d_unet_trains_and_predicts(tmp_path):
    volume = tifffile.imread(NUCLEI / "train/raw/nuclei_train.tif")  # 32x128x256 uint16
    parts = {"train": volume[:16, :96, :128], "test": volume[16:, 64:, 128:]}
    for role, clean in parts.items():
        (tmp_path / role / "raw").mkdir(parents=True)
        (tmp_path / role / "target").mkdir(parents=True)
        tifffile.imwrite(tmp_path / role / "raw" / "vol.tif", degrade(clean, seed=len(role)))
        tifffile.imwrite(tmp_path / role / "target" / "vol.tif", clean)
    cfg = tiny_config(
        tmp_path / "out",
        tmp_path / "train/raw",
        tmp_path / "train/target",
        workflow="image_to_image",
        ndim=3,
        data={"patch_size": [8, 32, 32], "val_split": 0.34},
        model={"options": {**UNET, "feature_maps": [8, 16]}},
        train={"epochs": 2, "steps_per_epoch": 3, "batch_size": 2},
    )
    trainer = Trainer(cfg)
    reports = run_all(trainer)
    (start,) = reports_of(reports, StartReport)
    assert (start.n_train, start.n_val) == (1, 1)
    (result,) = predict_files(
        load_model(reports[-1].checkpoint),
        folder_pairs(tmp_path / "test/raw", tmp_path / "test/target", "test"),
        trainer.experiment.results,
    )
    prediction = tifffile.imread(trainer.experiment.results / "per_image" / "vol.tif")
    assert prediction.shape == (1, 16, 64, 128)
    identity = psnr(tifffile.imread(tmp_path / "test/raw/vol.tif"), parts["test"])
    print(
        f"\nimage to image 3D on a held-aside nuclei crop: U-Net {result.metrics['psnr']:.2f} dB, "
        f"identity {identity:.2f} dB"
    )
    assert np.isfinite(result.metrics["psnr"]) and np.isfinite(result.metrics["ssim"])
    assert result.metrics["psnr"] == pytest.approx(psnr(prediction[0], parts["test"]), abs=1e-6)
    # six steps learn little (18 steps of a [16, 32] U-Net gained 1.8 to 3.5 dB), but the prediction is mapped back
    # to the target's intensities
    target = parts["test"].astype(np.float64)
    assert abs(prediction.mean() - target.mean()) < 0.25 * (target.max() - target.min())


# ----------------------------------------------------------------------------------------------------------------
# bad input: one sentence naming the file, nothing written


@pytest.fixture
def bad_pairs(tmp_path):
    return write_pairs(tmp_path / "data", {"train": [0, 1]})["train"]


def test_target_with_more_channels_than_the_model(tmp_path, bad_pairs):
    raw_dir, target_dir = bad_pairs
    target = tifffile.imread(target_dir / "crop1.tif")
    tifffile.imwrite(target_dir / "crop1.tif", np.stack([target, target]))  # 2 channels, the config says 1
    cfg = i2i_config(tmp_path / "out", bad_pairs)
    message = re.escape(f"{target_dir / 'crop1.tif'} has 2 channel(s) but data.target_channels expects 1.")
    with pytest.raises(InputError, match=message):
        run_all(Trainer(cfg))
    assert not (tmp_path / "out").exists()


def test_raw_and_target_counts_differ(tmp_path, bad_pairs):
    raw_dir, target_dir = bad_pairs
    (target_dir / "crop1.tif").unlink()
    cfg = i2i_config(tmp_path / "out", bad_pairs)
    message = re.escape(
        f"The training raw folder {raw_dir} holds 2 image(s) and the training label folder "
        f"{target_dir} holds 1, which do not pair one to one by file name (no label for crop1.tif)"
    )
    with pytest.raises(InputError, match=message):
        run_all(Trainer(cfg))
    assert not (tmp_path / "out").exists()


def test_raw_and_target_shapes_differ(tmp_path, bad_pairs):
    raw_dir, target_dir = bad_pairs
    tifffile.imwrite(target_dir / "crop1.tif", tifffile.imread(target_dir / "crop1.tif")[:150])
    before = tree(tmp_path / "data")
    cfg = i2i_config(tmp_path / "out", bad_pairs)
    message = re.escape(f"{target_dir / 'crop1.tif'} has shape 150x160 but its raw image has 160x160.")
    with pytest.raises(InputError, match=message):
        run_all(Trainer(cfg))
    assert not (tmp_path / "out").exists() and tree(tmp_path / "data") == before


def test_layer_shapes_differ(tmp_path):
    frames = tifffile.imread(TIMELAPSE)
    cfg = i2i_config(tmp_path / "out", (None, None))
    with pytest.raises(InputError, match="target layer has shape 160x150 but its raw image has 160x160"):
        Trainer(cfg, train=[make_sample(degrade(frames[0], 0), "raw layer", cfg, frames[0][:, :150], "target layer")])
    good = make_sample(degrade(frames[0], 0), "raw layer", cfg, frames[0], "target layer")
    reports = run_all(Trainer(cfg, train=[good], val=[good]))
    assert reports_of(reports, DoneReport)[0].reason == "finished"
