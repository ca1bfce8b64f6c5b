"""Self-supervised pretraining on real raw images alone.

crappify: the degradation itself (noise of 0.2 x the image maximum clipped to [0, max], bilinear down- and
up-sampling by sqrt(area) per axis, Z included in 3D), training patches degraded with their image's noise, a 2D
restoration that beats the degraded input on a held-aside image, and a 3D run on the tomogram whose degraded copies
land in the run folder and never next to the data. masking: the MAE loss falls with 2D and 3D tokens, and the MAE
checks (original, masked, reconstruction, reconstruction with the visible tokens) are written and consistent with
the grid mask. Bad input is refused before anything is written.
"""

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from helpers import NUCLEI, read_csv, reports_of, run_all, tiny_config, tree

from napari_bioflow.config import RunConfig, SelfSupervisedConfig
from napari_bioflow.engine.data.sampling import PatchSampler
from napari_bioflow.engine.data.sources import folder_pairs
from napari_bioflow.engine.errors import InputError
from napari_bioflow.engine.predict.inference import predict_files
from napari_bioflow.engine.train import DoneReport, EpochReport, StartReport, Trainer
from napari_bioflow.engine.train.checkpoint import load_model
from napari_bioflow.engine.workflows.self_supervised import crappify

DATA = Path(__file__).parents[1] / "data"
TIMELAPSE = DATA / "timelapse_2d_crops.tif"  # four real 160x160 crops of the time-lapse (see data/ATTRIBUTION.md)
TOMOGRAM = DATA / "tomo_3d_crop.tif"  # a real 16x64x64 cryo-ET crop

# the tiny MAE of these tests: 8-pixel tokens, ViT 64 wide x 2 deep (2 heads), decoder 32 wide x 1 deep
MAE = {
    "patch_size": 8,
    "embed_dim": 64,
    "depth": 2,
    "num_heads": 2,
    "decoder_embed_dim": 32,
    "decoder_depth": 1,
    "decoder_num_heads": 2,
}


def psnr(prediction, target) -> float:
    """PSNR in dB with the target's value range as the peak, computed here independently of the engine."""
    prediction, target = np.asarray(prediction, np.float64), np.asarray(target, np.float64)
    return 10 * math.log10((target.max() - target.min()) ** 2 / np.mean((prediction - target) ** 2))


def write_frames(root: Path, roles: dict[str, list[int]]) -> dict[str, Path]:
    """Write time-lapse crops into one folder per role, e.g. {"train": [0, 1], "val": [2], "test": [3]}."""
    frames = tifffile.imread(TIMELAPSE)
    folders = {}
    for role, indices in roles.items():
        folders[role] = Path(root) / role
        folders[role].mkdir(parents=True, exist_ok=True)
        for i in indices:
            tifffile.imwrite(folders[role] / f"crop{i}.tif", frames[i])
    return folders


def checkerboard(shape, tile, token: int) -> np.ndarray:
    """The 50% grid mask of BiaPy's MAE: in every tile, the tokens whose grid indices add up to an even number are
    hidden (1). Pixels of `shape`, tiles of `tile` side by side."""
    index = np.meshgrid(*[(np.arange(s) % t) // token for s, t in zip(shape, tile)], indexing="ij")
    return (sum(index) % 2 == 0).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------------
# crappify: the degradation


def test_defaults_are_biapys():
    ssl = SelfSupervisedConfig()
    assert (ssl.pretext, ssl.noise, ssl.downsample_area) == ("masking", 0.2, 4.0)  # BiaPy: masking by default


def test_noise_is_a_fifth_of_each_images_maximum_and_clipped_to_zero_and_the_maximum():
    gen = torch.Generator().manual_seed(0)
    x = torch.zeros(2, 1, 256, 256)
    x[:, :, :, 128:] = 0.5  # a mid-grey half, far from both clipping bounds
    x[:, :, 0, 0] = 1.0  # the maximum
    x[1] *= 4  # a second image four times brighter: its noise must be four times stronger
    out = crappify(x, 0.2, 1.0, gen)  # area 1: noise only
    for i, top in enumerate((1.0, 4.0)):
        grey = (out[i, 0, 1:, 128:] - 0.5 * top).numpy()
        assert grey.std() == pytest.approx(0.2 * top, rel=0.03)  # clipping at 2.5 sigma lowers it by ~1.5%
        assert abs(grey.mean()) < 0.01 * top
        assert out[i].min() >= 0 and out[i].max() <= top
        # the black half: the negative half of the noise is clipped to exactly 0
        assert (out[i, 0, 1:, :128] == 0).float().mean() == pytest.approx(0.5, abs=0.01)
    # an image at its maximum everywhere: the positive half is clipped to exactly the maximum, so the mean drops by
    # sigma / sqrt(2 pi) (the mean of the clipped half-normal)
    flat = torch.full((1, 1, 256, 256), 3.0)
    out = crappify(flat, 0.2, 1.0, gen)
    assert out.max() == 3.0 and out.min() >= 0
    assert (out == 3.0).float().mean() == pytest.approx(0.5, abs=0.01)
    assert out.mean() == pytest.approx(3.0 - 0.2 * 3.0 / math.sqrt(2 * math.pi), abs=0.005)


@pytest.mark.parametrize(
    "shape, area, small",
    [
        ((64, 48), 4.0, [32, 24]),
        ((64, 48), 16.0, [16, 12]),
        ((16, 32, 24), 4.0, [8, 16, 12]),  # Z is halved too
    ],
)
def test_down_and_up_sampling_by_the_square_root_of_the_area_per_axis(monkeypatch, shape, area, small):
    calls = []
    interpolate = torch.nn.functional.interpolate

    def spy(x, size=None, **kwargs):
        calls.append((list(size), kwargs["mode"]))
        return interpolate(x, size=size, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "interpolate", spy)
    out = crappify(torch.full((2, 1, *shape), 0.7), 0.0, area)
    mode = "bilinear" if len(shape) == 2 else "trilinear"
    assert calls == [(small, mode), (list(shape), mode)]
    # a constant image survives down- and up-sampling unchanged
    assert out.shape == (2, 1, *shape)
    torch.testing.assert_close(out, torch.full_like(out, 0.7), rtol=0, atol=1e-6)


@pytest.mark.parametrize("shape", [(64, 64), (16, 32, 32)])
def test_down_sampling_by_two_erases_the_finest_frequency_on_every_axis(shape):
    for axis in range(len(shape)):
        along = [-1 if a == axis else 1 for a in range(len(shape))]
        coord = torch.arange(shape[axis], dtype=torch.float32).reshape(along)
        finest = 1 + torch.cos(math.pi * coord).expand(shape)  # period 2 pixels: averaged away by 2x down-sampling
        slow = 1 + torch.cos(2 * math.pi * coord / 16).expand(shape)  # period 16 pixels: passes almost intact
        out = crappify(torch.stack([finest, slow])[:, None], 0.0, 4.0)
        assert float(out[0].max() - out[0].min()) < 1e-5, f"axis {axis}: the period-2 wave survived"
        kept = out[1, 0] - 1
        assert float((kept * (slow - 1)).sum() / (slow - 1).pow(2).sum()) > 0.85, f"axis {axis}: the slow wave was lost"


def test_training_patches_get_the_noise_of_their_whole_image(tmp_path):
    """The image maximum sets the noise in training as in prediction: a dark patch of a bright image is degraded
    with sigma = 0.2 x the image's maximum, not 0.2 x the patch's own (much lower) maximum."""
    folders = write_frames(tmp_path, {"train": [0]})
    cfg = tiny_config(
        tmp_path / "out",
        workflow="self_supervised",
        data={"train_raw": str(folders["train"]), "patch_size": [32, 32], "val_split": 0.0},
        self_supervised={"downsample_area": 1.0},
    )
    trainer = Trainer(cfg)
    run = trainer.run()
    assert isinstance(next(run), StartReport)  # set up: data checked, normalization and image maxima fitted
    run.close()
    (sample,) = trainer.dataset.train
    image = trainer.normalizer(np.asarray(sample.raw))[..., 0]
    image_max = float(image.max())
    assert image_max > 0.9
    # the darkest 32x32 window of the image
    windows = np.lib.stride_tricks.sliding_window_view(image, (32, 32))[::8, ::8].max(axis=(-2, -1))
    y, x = np.unravel_index(np.argmin(windows), windows.shape)
    start = (8 * int(y), 8 * int(x))
    sampler = PatchSampler([sample], cfg.data.patch_size, trainer.normalizer, 0, 0.0, trainer.workflow.read_target)
    xb, yb = sampler.read(0, start)
    clean = torch.from_numpy(xb)[None]
    assert float(clean.max()) < 0.1 * image_max  # a dark patch
    gen = torch.Generator().manual_seed(0)
    degraded, target = trainer.workflow.make_pair(clean, torch.from_numpy(yb)[None], gen, cfg)
    torch.testing.assert_close(target, clean, rtol=0, atol=0)  # the target is the clean patch
    # clipped at 0, the noise of sigma s on a near-black patch has a standard deviation of about 0.58 s
    noise = (degraded - clean).numpy()
    assert noise.std() == pytest.approx(0.58 * 0.2 * image_max, rel=0.15)


# ----------------------------------------------------------------------------------------------------------------
# crappify: training on real time-lapse crops


@pytest.fixture(scope="module")
def crappify_2d(tmp_path_factory):
    root = tmp_path_factory.mktemp("crappify2d")
    folders = write_frames(root, {"train": [0, 1], "val": [2], "test": [3]})
    data_tree = tree(root)
    cfg = RunConfig.from_dict(
        {
            "workflow": "self_supervised",
            "name": "crap",
            "output_dir": str(root / "out"),
            "device": "cpu",
            "seed": 0,
            "data": {"train_raw": str(folders["train"]), "val_raw": str(folders["val"]), "patch_size": [64, 64]},
            # no normalization layers: instance norm makes a U-Net blind to each patch's brightness, which restoration needs
            "model": {"options": {"feature_maps": [16, 32], "norm": "none"}},
            "train": {"epochs": 6, "patience": 0, "batch_size": 4, "steps_per_epoch": 10, "learning_rate": 3e-3},
        }
    )
    trainer = Trainer(cfg)
    reports = run_all(trainer)
    (done,) = reports_of(reports, DoneReport)
    results = list(
        predict_files(
            load_model(done.checkpoint), folder_pairs(folders["test"], None, "test"), trainer.experiment.results
        )
    )
    return trainer, reports, results, folders, data_tree


def test_crappify_2d_restoration_beats_the_degraded_input(crappify_2d):
    trainer, reports, (result,), folders, _ = crappify_2d
    out = trainer.experiment.results
    clean = tifffile.imread(folders["test"] / "crop3.tif")
    degraded = tifffile.imread(out / "degraded" / "crop3.tif")
    restored = tifffile.imread(out / "per_image" / "crop3.tif")
    assert degraded.shape == restored.shape == (1, 160, 160)
    m = result.metrics
    print(
        f"\ncrappify 2D on a held-aside crop: restored {m['psnr']:.2f} dB, degraded input "
        f"{m['psnr_degraded_input']:.2f} dB, SSIM {m['ssim']:.3f}; validation PSNR by epoch "
        f"{[round(e.metrics['psnr'], 2) for e in reports_of(reports, EpochReport)]}"
    )
    # the engine's numbers are the PSNRs of the written files against the clean image
    assert m["psnr"] == pytest.approx(psnr(restored[0], clean), abs=1e-6)
    assert m["psnr_degraded_input"] == pytest.approx(psnr(degraded[0], clean), abs=1e-6)
    # the degraded copy is the clean image with noise of about 0.2 x its maximum, smoothed by the down/up-sampling
    assert 15 < m["psnr_degraded_input"] < 30
    # seed 0: 26.1 dB against 22.2 dB; seeds 1-3 gained 4.3 to 4.4 dB
    assert m["psnr"] > m["psnr_degraded_input"] + 2.5
    rows = read_csv(out / "metrics.csv")
    assert rows[0]["image"] == "crop3.tif" and float(rows[0]["psnr"]) == pytest.approx(m["psnr"])
    assert float(rows[0]["psnr_degraded_input"]) == pytest.approx(m["psnr_degraded_input"])
    # the validation PSNR (restored validation patches against the clean ones) is logged every epoch
    log = read_csv(out / "train_logs" / "crap_1_log.csv")
    epochs = reports_of(reports, EpochReport)
    assert [float(r["psnr"]) for r in log] == pytest.approx([e.metrics["psnr"] for e in epochs])


def test_crappify_keeps_the_data_folders_untouched(crappify_2d):
    trainer, _, _, folders, data_tree = crappify_2d
    root = folders["train"].parent
    assert {k: v for k, v in tree(root).items() if not k.startswith("out/")} == data_tree
    assert not any(p.name == "degraded" for p in root.rglob("*") if "out" not in p.relative_to(root).parts)


def test_crappify_3d_on_the_tomogram(tmp_path):
    data = tmp_path / "tomogram"
    data.mkdir()
    shutil.copy(TOMOGRAM, data / "tomo.tif")
    before = tree(tmp_path)
    cfg = tiny_config(
        tmp_path / "out",
        workflow="self_supervised",
        ndim=3,
        data={"train_raw": str(data), "patch_size": [8, 32, 32], "val_split": 0.5},
        train={"epochs": 1, "steps_per_epoch": 2, "batch_size": 2},
    )
    trainer = Trainer(cfg)
    reports = run_all(trainer)
    (start,) = reports_of(reports, StartReport)
    assert (start.n_train, start.n_val) == (1, 1)  # the training and validation halves of the volume
    (epoch,) = reports_of(reports, EpochReport)
    assert np.isfinite(epoch.train_loss) and np.isfinite(epoch.val_loss) and np.isfinite(epoch.metrics["psnr"])
    out = trainer.experiment.results
    (result,) = predict_files(load_model(reports[-1].checkpoint), folder_pairs(data, None, "test"), out)
    degraded = tifffile.imread(out / "degraded" / "tomo.tif")
    restored = tifffile.imread(out / "per_image" / "tomo.tif")
    assert degraded.shape == restored.shape == (1, 16, 64, 64)
    assert np.isfinite(result.metrics["psnr"]) and np.isfinite(result.metrics["psnr_degraded_input"])
    clean = tifffile.imread(TOMOGRAM)
    assert result.metrics["psnr_degraded_input"] == pytest.approx(psnr(degraded[0], clean), abs=1e-6)
    # the degraded copy is cached in the run's results folder; the data folder is exactly as it was
    assert {k: v for k, v in tree(tmp_path).items() if not k.startswith("out/")} == before
    assert out == tmp_path / "out" / "tiny" / "results" / "tiny_1"


# ----------------------------------------------------------------------------------------------------------------
# masking: a masked autoencoder


@pytest.fixture(scope="module")
def mae_2d(tmp_path_factory):
    root = tmp_path_factory.mktemp("mae2d")
    folders = write_frames(root, {"train": [0, 1], "val": [2], "test": [3]})
    cfg = RunConfig.from_dict(
        {
            "workflow": "self_supervised",
            "name": "mae",
            "output_dir": str(root / "out"),
            "device": "cpu",
            "seed": 0,
            "self_supervised": {"pretext": "masking"},
            "data": {"train_raw": str(folders["train"]), "val_raw": str(folders["val"]), "patch_size": [32, 32]},
            "model": {"name": "mae", "options": {**MAE, "img_size": 32}},
            "train": {"epochs": 5, "patience": 0, "batch_size": 8, "steps_per_epoch": 10, "learning_rate": 1e-3},
        }
    )
    trainer = Trainer(cfg)
    reports = run_all(trainer)
    (done,) = reports_of(reports, DoneReport)
    results = list(
        predict_files(
            load_model(done.checkpoint), folder_pairs(folders["test"], None, "test"), trainer.experiment.results
        )
    )
    return trainer, reports, results, folders


def test_mae_2d_loss_falls(mae_2d):
    trainer, reports, _, _ = mae_2d
    epochs = reports_of(reports, EpochReport)
    train, val = [e.train_loss for e in epochs], [e.val_loss for e in epochs]
    print(
        f"\nMAE 2D (8-pixel tokens) loss by epoch: train {[round(v, 4) for v in train]}, "
        f"validation {[round(v, 4) for v in val]}"
    )
    assert train[-1] < 0.5 * train[0]
    assert min(val[1:]) < 0.8 * val[0]
    rows = read_csv(trainer.experiment.results / "train_logs" / "mae_1_log.csv")
    assert [float(r["train_loss"]) for r in rows] == pytest.approx(train)


def check_mae_outputs(folder: Path, stem: str, clean: np.ndarray, patch: list[int], token: int):
    """The four MAE checks of one image: shapes, and the masked input / pasted reconstruction against the grid mask."""
    checks = {
        name: tifffile.imread(folder / f"{stem}_{name}.tif")
        for name in ("original", "masked", "reconstruction", "reconstruction_and_visible")
    }
    assert {k: v.shape for k, v in checks.items()} == dict.fromkeys(checks, (1, *clean.shape))
    assert all(np.isfinite(v).all() for v in checks.values())
    np.testing.assert_array_equal(checks["original"][0], clean)
    hidden = checkerboard(clean.shape, patch, token) == 1
    assert hidden.mean() == 0.5
    masked, reconstruction = checks["masked"][0], checks["reconstruction"][0]
    pasted = checks["reconstruction_and_visible"][0]
    assert (masked[hidden] == 0).all()  # zero exactly where tokens were hidden
    np.testing.assert_array_equal(masked[~hidden], clean[~hidden])  # and the original elsewhere
    np.testing.assert_array_equal(pasted[hidden], reconstruction[hidden])
    np.testing.assert_array_equal(pasted[~hidden], clean[~hidden])
    return checks


def test_mae_2d_writes_the_mae_checks(mae_2d):
    trainer, _, (result,), folders = mae_2d
    clean = tifffile.imread(folders["test"] / "crop3.tif").astype(np.float32)
    checks = check_mae_outputs(trainer.experiment.results / "MAE_checks", "crop3", clean, [32, 32], 8)
    # the reconstruction of the hidden tokens follows the image (a trained MAE, not a constant)
    hidden = checkerboard(clean.shape, [32, 32], 8) == 1
    # the PSNR of the hidden pixels alone (the visible ones are the input), with the image's range as the peak
    error = np.mean((checks["reconstruction"][0][hidden] - clean[hidden]) ** 2)
    assert result.metrics["psnr_masked_patches"] == pytest.approx(10 * math.log10(np.ptp(clean) ** 2 / error), abs=1e-4)
    corr = np.corrcoef(checks["reconstruction"][0][hidden], clean[hidden])[0, 1]
    print(f"\nMAE 2D: correlation of the hidden tokens' reconstruction with the original {corr:.3f}")
    assert corr > 0.2


def test_mae_3d_tokens_loss_falls_and_checks(tmp_path):
    volume = tifffile.imread(NUCLEI / "train/raw/nuclei_train.tif")  # real nuclei, 32x128x256
    (tmp_path / "train").mkdir()
    (tmp_path / "test").mkdir()
    tifffile.imwrite(tmp_path / "train/vol.tif", volume[:16, :, :128])
    tifffile.imwrite(tmp_path / "test/vol.tif", volume[16:, 64:, 128:192])
    cfg = tiny_config(
        tmp_path / "out",
        workflow="self_supervised",
        ndim=3,
        self_supervised={"pretext": "masking"},
        data={"train_raw": str(tmp_path / "train"), "patch_size": [16, 32, 32], "val_split": 0.25},
        model={"name": "mae", "options": {**MAE, "img_size": [16, 32, 32]}},
        train={"epochs": 4, "steps_per_epoch": 8, "batch_size": 4, "learning_rate": 1e-3},
    )
    trainer = Trainer(cfg)
    reports = run_all(trainer)
    assert trainer.model.encoder.grid == (2, 4, 4)  # 3D tokens of 8x8x8 voxels
    epochs = reports_of(reports, EpochReport)
    train = [e.train_loss for e in epochs]
    print(
        f"\nMAE 3D (8x8x8 tokens) loss by epoch: train {[round(v, 4) for v in train]}, "
        f"validation {[round(e.val_loss, 4) for e in epochs]}"
    )
    assert train[-1] < 0.5 * train[0]
    out = trainer.experiment.results
    (result,) = predict_files(load_model(reports[-1].checkpoint), folder_pairs(tmp_path / "test", None, "test"), out)
    check_mae_outputs(out / "MAE_checks", "vol", volume[16:, 64:, 128:192].astype(np.float32), [16, 32, 32], 8)
    assert np.isfinite(result.metrics["psnr_masked_patches"])


def test_mae_loss_counts_the_hidden_tokens_only():
    from napari_bioflow.engine.models import create_model
    from napari_bioflow.engine.workflows import get_workflow

    torch.manual_seed(0)
    model = create_model("mae", ndim=2, in_channels=1, out_channels=1, **MAE, img_size=32)
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        loss = get_workflow("self_supervised", "masking").training_loss(model, x, x, None)
        pred = model(x)  # the grid mask hides the same tokens every time
    hidden = torch.from_numpy(checkerboard((32, 32), (32, 32), 8)).bool()
    error = (pred - x) ** 2
    assert float(loss) == pytest.approx(float(error[..., hidden].mean()), rel=1e-5)
    assert float(error[..., hidden].mean()) != pytest.approx(float(error.mean()), rel=1e-3)


def test_mae_validation_psnr_scores_the_hidden_tokens_only():
    """The chart metric of the MAE (validation PSNR) compares the hidden tokens' reconstruction with the original:
    the visible tokens never change it, the hidden ones do."""
    from napari_bioflow.engine.models import create_model
    from napari_bioflow.engine.workflows import get_workflow

    torch.manual_seed(0)
    cfg = RunConfig.from_dict(
        {
            "workflow": "self_supervised",
            "self_supervised": {"pretext": "masking"},
            "data": {"patch_size": [32, 32]},
            "model": {"name": "mae", "options": {**MAE, "img_size": 32}},
        }
    )
    wf = get_workflow(cfg)
    model = create_model("mae", ndim=2, in_channels=1, out_channels=1, **MAE, img_size=32).eval()
    x = torch.from_numpy(tifffile.imread(TIMELAPSE)[:2, 64:96, 64:96].astype(np.float32) / 255)[:, None]
    with torch.inference_mode():
        x, y = wf.make_pair(x, x, None, cfg)
        _, prediction = wf.validation_step(model, x, y, None)
        pred = model(x)
    prediction, target = prediction.numpy(), y.numpy()

    def score(p):
        metrics = wf.metrics(cfg)
        metrics.update(p, target)
        return metrics.compute()["psnr"]

    hidden = checkerboard((32, 32), (32, 32), 8) == 1
    error = ((pred.numpy() - target)[:, 0][:, hidden] ** 2).mean(axis=1)  # per patch, hidden pixels only
    assert score(prediction) == pytest.approx(float(np.mean(10 * np.log10(1 / error))), rel=1e-5)
    whole = float(np.mean(10 * np.log10(1 / ((pred.numpy() - target) ** 2).mean(axis=(1, 2, 3)))))
    assert score(prediction) != pytest.approx(whole, abs=0.05)
    exact_visible = prediction.copy()
    exact_visible[:, 0][:, ~hidden] = target[:, 0][:, ~hidden]  # the visible tokens pasted back unchanged
    assert score(exact_visible) == pytest.approx(score(prediction), rel=1e-6)
    off_by_005 = prediction.copy()
    off_by_005[:, 0][:, hidden] = target[:, 0][:, hidden] + 0.05  # every hidden pixel 0.05 off: 26.02 dB
    assert score(off_by_005) == pytest.approx(10 * math.log10(1 / 0.05**2), abs=1e-3)


def test_mae_random_mask_checks(tmp_path):
    frames = tifffile.imread(TIMELAPSE)
    folders = write_frames(tmp_path, {"train": [0, 1]})
    (tmp_path / "test").mkdir()
    clean = frames[3][32:96, 64:128]
    tifffile.imwrite(tmp_path / "test" / "crop.tif", clean)
    cfg = tiny_config(
        tmp_path / "out",
        workflow="self_supervised",
        self_supervised={"pretext": "masking"},
        data={"train_raw": str(folders["train"]), "patch_size": [32, 32]},
        model={"name": "mae", "options": {**MAE, "img_size": 32, "mask_type": "random"}},
    )
    trainer = Trainer(cfg)
    reports = run_all(trainer)
    (result,) = predict_files(
        load_model(reports[-1].checkpoint), folder_pairs(tmp_path / "test", None, "test"), trainer.experiment.results
    )
    assert np.isfinite(result.metrics["psnr_masked_patches"])
    folder = trainer.experiment.results / "MAE_checks"
    original, masked, reconstruction, pasted = (
        tifffile.imread(folder / f"crop_{n}.tif")[0]
        for n in ("original", "masked", "reconstruction", "reconstruction_and_visible")
    )
    assert clean.min() > 0  # so a hidden pixel is one whose masked value differs from the original
    hidden = masked != original
    assert (masked[hidden] == 0).all()
    np.testing.assert_array_equal(pasted[hidden], reconstruction[hidden])
    np.testing.assert_array_equal(pasted[~hidden], original[~hidden])
    # whole 8x8 tokens, half of the 16 of every 32x32 tile
    tokens = hidden.reshape(8, 8, 8, 8).transpose(0, 2, 1, 3).reshape(8, 8, 64)
    assert (tokens.all(-1) | ~tokens.any(-1)).all()
    per_tile = tokens[..., 0].reshape(2, 4, 2, 4).sum(axis=(1, 3))
    assert (per_tile == 8).all()
    assert not np.array_equal(hidden, checkerboard(clean.shape, [32, 32], 8) == 1)  # random, not the grid


# ----------------------------------------------------------------------------------------------------------------
# bad input: one sentence, nothing written


@pytest.fixture(scope="module")
def frames_folder(tmp_path_factory):
    return write_frames(tmp_path_factory.mktemp("frames"), {"train": [0, 1]})["train"]


@pytest.mark.parametrize(
    "ndim, patch, message",
    [
        (2, [36, 36], "The MAE token size 8 does not divide the patch size 36x36"),
        (3, [12, 32, 32], "The MAE token size 8 does not divide the patch size 12x32x32"),
    ],
)
def test_token_size_must_divide_the_patch(tmp_path, frames_folder, ndim, patch, message):
    train = frames_folder
    if ndim == 3:
        train = tmp_path / "vol"
        train.mkdir()
        tifffile.imwrite(train / "vol.tif", tifffile.imread(TOMOGRAM))
    cfg = tiny_config(
        tmp_path / "out",
        workflow="self_supervised",
        ndim=ndim,
        self_supervised={"pretext": "masking"},
        data={"train_raw": str(train), "patch_size": patch, "val_split": 0.0},
        model={"name": "mae", "options": dict(MAE)},
    )
    with pytest.raises(InputError, match=message):
        run_all(Trainer(cfg))
    assert not (tmp_path / "out").exists()


def test_masking_needs_a_masked_autoencoder(tmp_path, frames_folder):
    cfg = tiny_config(
        tmp_path / "out",
        workflow="self_supervised",
        self_supervised={"pretext": "masking"},
        data={"train_raw": str(frames_folder), "patch_size": [32, 32]},
    )
    with pytest.raises(
        InputError,
        match=r"Model 'unet' does not fit self-supervised, masking \(masked autoencoder\); use mae, mae_vit_base \(model.name\)",
    ):
        run_all(Trainer(cfg))
    assert not (tmp_path / "out").exists()


def test_3d_mae_on_2d_images_is_refused(tmp_path, frames_folder):
    cfg = tiny_config(
        tmp_path / "out",
        workflow="self_supervised",
        ndim=3,
        self_supervised={"pretext": "masking"},
        data={"train_raw": str(frames_folder), "patch_size": [8, 32, 32]},
        model={"name": "mae", "options": dict(MAE)},
    )
    with pytest.raises(InputError, match=r"crop0\.tif has shape 160x160: that is 2D data, but the config is 3D"):
        run_all(Trainer(cfg))
    assert not (tmp_path / "out").exists()
