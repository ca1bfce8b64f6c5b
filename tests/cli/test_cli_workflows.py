"""The command line on the image-to-image and self-supervised workflows: `init` configs for each, `train` and
`predict` from YAML writing per_image/, degraded/, MAE_checks/ and metrics.csv, and bad input as one line, exit 2,
nothing written. Real data: time-lapse frames t -> t+1 (tests/data) and the shipped BBBC007 crops."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from helpers import crop_folders, read_csv, write_image

from napari_bioflow.cli import main
from napari_bioflow.config import RunConfig

TIMELAPSE = Path(__file__).parents[1] / "data" / "timelapse_2d_consecutive.tif"  # frames 15-18 of one crop
TINY_MAE = {
    "patch_size": 8,
    "embed_dim": 32,
    "depth": 1,
    "num_heads": 2,
    "decoder_embed_dim": 16,
    "decoder_depth": 1,
    "decoder_num_heads": 2,
}


def sets(*items: str) -> list[str]:
    return [a for s in items for a in ("--set", s)]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """Image-to-image folders: frames 0, 1 -> 1, 2 for training, frame 2 -> 3 for test (same file names)."""
    root = tmp_path_factory.mktemp("i2i_data")
    frames = tifffile.imread(TIMELAPSE)
    folders = {k: root / k for k in ("train_raw", "train_label", "test_raw", "test_label")}
    for t in (0, 1):
        write_image(folders["train_raw"] / f"t{t}.tif", frames[t])
        write_image(folders["train_label"] / f"t{t}.tif", frames[t + 1])
    write_image(folders["test_raw"] / "t2.tif", frames[2])
    write_image(folders["test_label"] / "t2.tif", frames[3])
    return folders


@pytest.fixture(scope="module")
def raws(tmp_path_factory):
    """Self-supervision folders: raw BBBC007 crops only."""
    root = tmp_path_factory.mktemp("ssl_data")
    train, _ = crop_folders(root / "train", "train", n=3, size=96)
    test, _ = crop_folders(root / "test", "test", n=1, size=128, origin=(60, 60))
    return {"train_raw": train, "test_raw": test}


def tiny_run(out: Path, name: str, data: dict, *extra: str) -> list[str]:
    items = [
        f"name={name}",
        f"output_dir={out}",
        "device=cpu",
        "data.patch_size=[64, 64]",
        "data.val_split=0.25",
        "train.epochs=1",
        "train.steps_per_epoch=2",
        "train.batch_size=2",
        "predict.tile_size=[96, 96]",
        *(f"data.{k}={v}" for k, v in data.items()),
        *extra,
    ]
    return sets(*items)


def init(tmp_path: Path, *args: str) -> Path:
    path = tmp_path / f"{'_'.join(a.strip('-') for a in args)}.yaml"
    assert main(["init", *args, "-o", str(path)]) == 0
    return path


@pytest.mark.parametrize(
    "args, workflow, pretext, model",
    [
        (("image_to_image",), "image_to_image", "masking", "unet"),  # the (unused) pretext field's default
        (("image_to_image", "--ndim", "3"), "image_to_image", "masking", "unet"),
        (("self_supervised",), "self_supervised", "masking", "mae"),  # the reference page's defaults
        (("self_supervised", "--pretext", "crappify", "--ndim", "3"), "self_supervised", "crappify", "unet"),
        (("self_supervised", "--pretext", "masking"), "self_supervised", "masking", "mae"),
        (("self_supervised", "--pretext", "masking", "--ndim", "3"), "self_supervised", "masking", "mae"),
    ],
)
def test_init_writes_a_commented_config_per_workflow(tmp_path, args, workflow, pretext, model):
    path = init(tmp_path, *args)
    text = path.read_text()
    cfg = RunConfig.load(path)
    assert cfg.workflow == workflow and cfg.self_supervised.pretext == pretext and cfg.model.name == model
    assert cfg.ndim == (3 if "3" in args else 2) and len(cfg.data.patch_size) == cfg.ndim
    assert sum(line.lstrip().startswith("# ") for line in text.splitlines()) > 60  # every field documented
    if workflow == "image_to_image":
        assert cfg.data.train_label is not None and cfg.train.loss == "l1" and "edsr" in text
    else:
        assert cfg.data.train_label is None
    if workflow == "self_supervised" and pretext == "masking":
        token = cfg.model.options["patch_size"]
        assert all(p % token == 0 for p in cfg.data.patch_size)
        assert cfg.model.options["embed_dim"] <= 256 and cfg.model.options["mask_type"] == "grid"  # sized for a CPU
        assert "MAE_checks/" in text and "mae_vit_base" in text
    elif workflow == "self_supervised":
        assert "degraded/" in text and "--pretext masking" in text


def test_init_refuses_a_pretext_for_other_workflows(tmp_path, capsys):
    path = tmp_path / "x.yaml"
    assert main(["init", "image_to_image", "--pretext", "masking", "-o", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--pretext" in err and not path.exists()


@pytest.fixture(scope="module")
def i2i_run(pairs, tmp_path_factory):
    work = tmp_path_factory.mktemp("i2i_run")
    cfg = init(work, "image_to_image")
    out = work / "runs"
    assert main(["train", str(cfg), *tiny_run(out, "i2i", pairs, "model.options.feature_maps=[8, 16]")]) == 0
    return out / "i2i"


def test_image_to_image_train_writes_per_image_and_metrics(i2i_run):
    res = i2i_run / "results" / "i2i_1"
    image = tifffile.imread(res / "per_image" / "t2.tif")
    assert image.shape == (1, 160, 160) and image.dtype == np.float32
    assert (res / "per_image" / "t2.zarr" / "image").is_dir() and not (
        res / "per_image" / "t2.zarr" / "accumulator"
    ).exists()
    rows = read_csv(res / "metrics.csv")
    assert [r["image"] for r in rows] == ["t2.tif", "ALL (mean)"]
    assert np.isfinite(float(rows[0]["psnr"])) and -1 <= float(rows[0]["ssim"]) <= 1
    assert (res / "charts" / "i2i_1_psnr.png").is_file()


def test_image_to_image_predict_command(i2i_run, pairs, tmp_path):
    ckpt = i2i_run / "checkpoints" / "i2i_1-checkpoint-best.pth"
    out = tmp_path / "pred"
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(ckpt),
                "--input",
                str(pairs["test_raw"]),
                "--labels",
                str(pairs["test_label"]),
                "--output",
                str(out),
            ]
        )
        == 0
    )
    res = out / "i2i" / "results" / "i2i_1"
    np.testing.assert_allclose(
        tifffile.imread(res / "per_image" / "t2.tif"),
        tifffile.imread(i2i_run / "results" / "i2i_1" / "per_image" / "t2.tif"),
        atol=1e-5,
    )
    assert float(read_csv(res / "metrics.csv")[0]["psnr"]) == pytest.approx(
        float(read_csv(i2i_run / "results" / "i2i_1" / "metrics.csv")[0]["psnr"]), abs=1e-4
    )


def test_crappify_train_writes_degraded_restored_and_metrics(raws, tmp_path, capsys):
    cfg = init(tmp_path, "self_supervised", "--pretext", "crappify")
    out = tmp_path / "runs"
    assert main(["train", str(cfg), *tiny_run(out, "crap", raws, "model.options.feature_maps=[8, 16]")]) == 0
    assert "psnr_degraded_input=" in capsys.readouterr().out
    res = out / "crap" / "results" / "crap_1"
    (stem,) = [p.name.split(".")[0] for p in raws["test_raw"].iterdir()]
    degraded, restored = (tifffile.imread(res / sub / f"{stem}.tif") for sub in ("degraded", "per_image"))
    assert degraded.shape == restored.shape == (1, 128, 128) and restored.dtype == np.float32
    row = read_csv(res / "metrics.csv")[0]
    assert {"psnr", "ssim", "psnr_degraded_input"} <= set(row)
    assert not list(raws["test_raw"].parent.rglob("*degraded*"))  # never next to the user's data
    # `predict CONFIG` takes the prediction-time settings from that YAML: here, restore the images as they are
    ckpt = next((out / "crap" / "checkpoints").glob("*best.pth"))
    again = tmp_path / "again"
    assert (
        main(
            [
                "predict",
                str(cfg),
                "--checkpoint",
                str(ckpt),
                "--input",
                str(raws["test_raw"]),
                "--output",
                str(again),
                "--set",
                "self_supervised.degrade_at_prediction=false",
            ]
        )
        == 0
    )
    (res2,) = (again / "my_self_supervised_crappify_2d" / "results").iterdir()
    assert (res2 / "per_image" / f"{stem}.tif").exists() and not (res2 / "degraded").exists()
    assert "psnr_degraded_input" not in (read_csv(res2 / "metrics.csv")[0] if (res2 / "metrics.csv").exists() else {})


@pytest.fixture(scope="module")
def masking_run(raws, tmp_path_factory):
    work = tmp_path_factory.mktemp("mae_run")
    cfg = init(work, "self_supervised", "--pretext", "masking")
    out = work / "runs"
    assert (
        main(["train", str(cfg), *tiny_run(out, "mae", raws, *(f"model.options.{k}={v}" for k, v in TINY_MAE.items()))])
        == 0
    )
    return out / "mae"


def test_masking_train_writes_the_mae_checks(masking_run, raws):
    res = masking_run / "results" / "mae_1"
    (stem,) = [p.name.split(".")[0] for p in raws["test_raw"].iterdir()]
    checks = {
        n: tifffile.imread(res / "MAE_checks" / f"{stem}_{n}.tif")
        for n in ("original", "masked", "reconstruction", "reconstruction_and_visible")
    }
    assert all(a.shape == (1, 128, 128) and a.dtype == np.float32 for a in checks.values())
    hidden = checks["masked"] == 0
    assert 0.3 < hidden.mean() < 0.7
    np.testing.assert_allclose(checks["reconstruction_and_visible"][~hidden], checks["original"][~hidden], atol=1e-3)
    assert (res / "per_image" / f"{stem}.tif").is_file()
    assert "psnr_masked_patches" in read_csv(res / "metrics.csv")[0]


def test_masking_predict_command(masking_run, raws, tmp_path):
    ckpt = masking_run / "checkpoints" / "mae_1-checkpoint-best.pth"
    out = tmp_path / "pred"
    assert main(["predict", "--checkpoint", str(ckpt), "--input", str(raws["test_raw"]), "--output", str(out)]) == 0
    res = out / "mae" / "results" / "mae_1"
    assert len(list((res / "MAE_checks").glob("*.tif"))) == 4 and (res / "metrics.csv").is_file()


def bad(tmp_path: Path, name: str, shape=None, channels=None, count=None) -> dict:
    """Copies of the image-to-image folders with the targets spoilt: fewer files, other shape or more channels."""
    out = {k: tmp_path / name / k for k in ("train_raw", "train_label")}
    frames = tifffile.imread(TIMELAPSE)
    for t in range(count or 2):
        target = frames[t + 1] if shape is None else frames[t + 1][: shape[0], : shape[1]]
        if channels:
            target = np.stack([target] * channels)
        write_image(out["train_label"] / f"t{t}.tif", target)
    for t in range(2):
        write_image(out["train_raw"] / f"t{t}.tif", frames[t])
    return out


@pytest.mark.parametrize(
    "case", ["count", "shape", "channels", "token", "mae_3d_on_2d", "mae_3d_on_2d_training", "start_from"]
)
def test_bad_input_is_one_line_and_writes_nothing(case, raws, i2i_run, tmp_path, capsys):
    out = tmp_path / "runs"
    ckpt = i2i_run / "checkpoints" / "i2i_1-checkpoint-best.pth"
    if case in ("count", "shape", "channels"):
        folders = bad(
            tmp_path,
            case,
            count=1 if case == "count" else None,
            shape=(150, 160) if case == "shape" else None,
            channels=2 if case == "channels" else None,
        )
        cfg, extra = init(tmp_path, "image_to_image"), ["model.options.feature_maps=[8, 16]"]
        expected = {
            "count": [str(folders["train_raw"]), "2 image(s)", "holds 1"],
            "shape": [str(folders["train_label"] / "t0.tif"), "150x160", "160x160"],
            "channels": [str(folders["train_label"] / "t0.tif"), "2 channel(s)", "target_channels"],
        }[case]
    else:
        folders = raws
        cfg = init(tmp_path, "self_supervised", "--pretext", "masking")
        extra = [f"model.options.{k}={v}" for k, v in TINY_MAE.items()]
        if case == "token":
            extra.append("model.options.patch_size=24")
            expected = ["token size 24", "64x64"]
        elif case == "mae_3d_on_2d":
            extra += ["ndim=3", "data.patch_size=[16, 64, 64]", "predict.tile_size=null"]
            expected = [str(raws["test_raw"]), "2D data", "config is 3D"]  # the test images are checked first
        elif case == "mae_3d_on_2d_training":  # no test images: the training images are refused themselves
            extra += ["ndim=3", "data.patch_size=[16, 64, 64]", "predict.tile_size=null", "data.test_raw=null"]
            expected = [str(raws["train_raw"]), "2D data", "config is 3D"]
        else:
            extra.append(f"model.start_from={ckpt}")
            expected = [str(ckpt), "shares no weights with model 'mae'", "'unet' model"]
    argv = ["train", str(cfg), *tiny_run(out, "bad", folders, *extra)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("napari-bioflow: error: "), err
    for text in expected:
        assert text in err, (text, err)
    assert not out.exists()


def test_predict_refuses_a_target_with_more_channels_than_the_model(i2i_run, pairs, tmp_path, capsys):
    ckpt = i2i_run / "checkpoints" / "i2i_1-checkpoint-best.pth"
    labels = tmp_path / "two"
    frames = tifffile.imread(TIMELAPSE)
    write_image(labels / "t2.tif", np.stack([frames[3], frames[3]]))
    out = tmp_path / "pred"
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(ckpt),
                "--input",
                str(pairs["test_raw"]),
                "--labels",
                str(labels),
                "--output",
                str(out),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(labels / "t2.tif") in err and "2 channel(s)" in err
    assert not out.exists()
