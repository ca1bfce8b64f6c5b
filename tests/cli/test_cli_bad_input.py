"""Bad input (issue section 7): one clear sentence naming the file, exit code 2 and one stderr line from the CLI,
raised before any training step, and nothing written: no experiment folder, no file written over."""

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from helpers import NUCLEI, crop_folders, tiny_config, tree, write_image
from skimage.io import imread

from napari_bioflow.cli import main
from napari_bioflow.engine.data.sources import folder_pairs
from napari_bioflow.engine.errors import InputError
from napari_bioflow.engine.predict.inference import predict_files
from napari_bioflow.engine.train import StepReport, Trainer
from napari_bioflow.engine.train.checkpoint import load_model, read_checkpoint


@pytest.fixture
def folders(tmp_path):
    """Four real 64x64 BBBC007 pairs in tmp_path/data/{raw,label}."""
    return crop_folders(tmp_path / "data", n=4, size=64)


def refused_by_engine(cfg, *names) -> str:
    """The trainer raises InputError naming `names` before its first report (so before any step or write)."""
    trainer = Trainer(cfg)
    with pytest.raises(InputError) as e:
        next(trainer.run())
    msg = str(e.value)
    for n in names:
        assert str(n) in msg, (n, msg)
    assert "\n" not in msg
    return msg


def refused_by_cli(capsys, argv, watched: Path, *names) -> str:
    """`napari-bioflow ARGV` exits 2 with exactly one stderr line naming `names`, and nothing under `watched` changes."""
    before = tree(watched)
    existed = watched.exists()
    capsys.readouterr()
    assert main([str(a) for a in argv]) == 2
    captured = capsys.readouterr()
    err = captured.err
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith("napari-bioflow: error: ")
    for n in names:
        assert str(n) in err, (n, err)
    assert "Traceback" not in captured.out
    assert tree(watched) == before
    assert watched.exists() == existed
    return err


def check_train_refused(capsys, tmp_path, cfg, *names) -> str:
    msg = refused_by_engine(cfg, *names)
    path = cfg.save(tmp_path / "bad.yaml")
    err = refused_by_cli(capsys, ["train", path], Path(cfg.output_dir), *names)
    assert msg in err
    assert not Path(cfg.output_dir).exists()  # not even an empty experiment folder
    return msg


def cfg_for(tmp_path, folders, **sections):
    return tiny_config(
        tmp_path / "runs", *folders, data={"patch_size": [32, 32], **sections.pop("data", {})}, **sections
    )


# ----------------------------------------------------------------------------------------------- training data


def test_raw_label_count_mismatch(tmp_path, capsys, folders):
    raw_dir, label_dir = folders
    sorted(label_dir.iterdir())[-1].unlink()
    msg = check_train_refused(capsys, tmp_path, cfg_for(tmp_path, folders), raw_dir, label_dir)
    assert "holds 4 image(s)" in msg and "holds 3" in msg


def test_shape_mismatch(tmp_path, capsys, folders):
    raw_dir, label_dir = folders
    bad = sorted(label_dir.iterdir())[1]
    tifffile.imwrite(bad, tifffile.imread(bad)[:, :60])
    msg = check_train_refused(capsys, tmp_path, cfg_for(tmp_path, folders), bad)
    assert "64x60" in msg and "64x64" in msg


def test_label_value_beyond_the_classes(tmp_path, capsys, folders):
    raw_dir, label_dir = folders
    bad = sorted(label_dir.iterdir())[2]
    label = tifffile.imread(bad)
    label[:5, :5] = 2
    tifffile.imwrite(bad, label)
    msg = check_train_refused(capsys, tmp_path, cfg_for(tmp_path, folders), bad)
    assert "label value 2" in msg and "2 classes" in msg
    # with three classes the same labels are fine: they get as far as the first training step
    ok = cfg_for(tmp_path, folders, n_classes=3)
    assert any(isinstance(r, StepReport) for r in Trainer(ok).run())


def test_0_255_binary_masks_are_accepted_with_a_note(tmp_path, capsys):
    raw_dir, label_dir = crop_folders(
        tmp_path / "data", n=4, size=64, suffix=".png", label_transform=lambda l: (l * 255).astype(np.uint8)
    )
    cfg = cfg_for(tmp_path, (raw_dir, label_dir))
    path = cfg.save(tmp_path / "ok.yaml")
    capsys.readouterr()
    assert main(["train", str(path)]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    notes = [l for l in captured.out.splitlines() if l.startswith("note: ")]
    masks = [p for p in sorted(label_dir.iterdir()) if np.asarray(imread(p)).max() == 255]  # an empty crop is all 0
    assert len(masks) >= 3 and len(notes) == len(masks)
    for label_path in masks:
        assert any(str(label_path) in n and "0/255 binary mask" in n and "1 = foreground" in n for n in notes)
    assert (tmp_path / "runs/tiny/checkpoints/tiny_1-checkpoint-best.pth").is_file()


@pytest.mark.parametrize("which", ["raw", "label"])
def test_empty_folder(tmp_path, capsys, folders, which):
    raw_dir, label_dir = folders
    empty = raw_dir if which == "raw" else label_dir
    for p in empty.iterdir():
        p.unlink()
    msg = check_train_refused(capsys, tmp_path, cfg_for(tmp_path, folders), empty)
    assert "holds no TIFF, PNG or zarr image" in msg


def test_missing_folder(tmp_path, capsys, folders):
    raw_dir, label_dir = folders
    cfg = cfg_for(tmp_path, (raw_dir.parent / "raws", label_dir))
    check_train_refused(capsys, tmp_path, cfg, raw_dir.parent / "raws", "does not exist")


@pytest.mark.parametrize("suffix", [".tif", ".png"])
def test_unreadable_file(tmp_path, capsys, suffix):
    raw_dir, label_dir = crop_folders(tmp_path / "data", n=4, size=64, suffix=suffix)
    bad = sorted(raw_dir.iterdir())[1]
    bad.write_text("this is a text file, not an image\n")
    msg = check_train_refused(capsys, tmp_path, cfg_for(tmp_path, (raw_dir, label_dir)), bad)
    assert "cannot be read as an image" in msg


def test_truncated_tiff(tmp_path, capsys, folders):
    raw_dir, label_dir = folders
    bad = sorted(label_dir.iterdir())[0]
    bad.write_bytes(bad.read_bytes()[:100])
    check_train_refused(capsys, tmp_path, cfg_for(tmp_path, folders), bad)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_in_a_float_image(tmp_path, capsys, folders, value):
    raw_dir, label_dir = folders
    bad = sorted(raw_dir.iterdir())[3]
    raw = tifffile.imread(bad).astype(np.float32)
    raw[10, 20] = value
    tifffile.imwrite(bad, raw)
    msg = check_train_refused(capsys, tmp_path, cfg_for(tmp_path, folders), bad)
    assert "NaN or infinite" in msg


def test_patch_larger_than_the_image(tmp_path, capsys, folders):
    raw_dir, _ = folders
    cfg = cfg_for(tmp_path, folders, data={"patch_size": [96, 32]})
    msg = check_train_refused(capsys, tmp_path, cfg, raw_dir)
    assert "96x32 is larger than" in msg and "(64x64)" in msg


def test_2d_data_for_a_3d_config(tmp_path, capsys, folders):
    raw_dir, _ = folders
    cfg = cfg_for(tmp_path, folders, ndim=3, data={"patch_size": [4, 32, 32]})
    first = sorted(raw_dir.iterdir())[0]
    msg = check_train_refused(capsys, tmp_path, cfg, first)
    assert "2D data, but the config is 3D" in msg


def test_3d_data_for_a_2d_config(tmp_path, capsys):
    raw = tifffile.imread(NUCLEI / "train/raw/nuclei_train.tif")[:8, :64, :64]
    label = tifffile.imread(NUCLEI / "train/label/nuclei_train.tif")[:8, :64, :64]
    for i in range(2):
        write_image(tmp_path / f"vol/raw/v{i}.tif", raw)
        write_image(tmp_path / f"vol/label/v{i}.tif", label)
    cfg = cfg_for(tmp_path, (tmp_path / "vol/raw", tmp_path / "vol/label"))
    msg = check_train_refused(capsys, tmp_path, cfg, tmp_path / "vol/raw/v0.tif")
    assert "3D data, but the config is 2D" in msg


def test_wrong_number_of_channels(tmp_path, capsys, folders):
    raw_dir, _ = folders
    bad = sorted(raw_dir.iterdir())[0]
    gray = tifffile.imread(bad)
    tifffile.imwrite(bad, np.stack([gray, gray // 2, gray // 3], -1))  # Y,X,3
    msg = check_train_refused(capsys, tmp_path, cfg_for(tmp_path, folders), bad)
    assert "3 channel(s)" in msg and "expects 1" in msg
    # and the reverse: gray images for a 2-channel config
    gray_raw, gray_label = crop_folders(tmp_path / "gray", n=2, size=64)
    first = sorted(gray_raw.iterdir())[0]
    msg = check_train_refused(
        capsys, tmp_path, cfg_for(tmp_path, (gray_raw, gray_label), data={"in_channels": 2}), first
    )
    assert "1 channel(s)" in msg and "expects 2" in msg


def test_output_folder_not_writable_for_train(tmp_path, capsys, folders):
    blocker = tmp_path / "a_file"
    blocker.write_text("a regular file, so nothing can be created below it")
    cfg = tiny_config(blocker / "runs", *folders, data={"patch_size": [32, 32]})
    msg = refused_by_engine(cfg, blocker / "runs")
    assert "not writable" in msg
    refused_by_cli(capsys, ["train", cfg.save(tmp_path / "c.yaml")], tmp_path / "a_file", blocker / "runs")
    assert blocker.read_text().startswith("a regular file")


def test_bad_test_data_is_refused_before_training(tmp_path, capsys, folders):
    """data.test_raw is predicted after training: its problems must stop the run before training, not after."""
    test_raw, test_label = crop_folders(tmp_path / "test", n=2, size=64)
    bad = sorted(test_raw.iterdir())[0]
    bad.write_text("not an image")
    cfg = cfg_for(tmp_path, folders, data={"test_raw": str(test_raw), "test_label": str(test_label)})
    path = cfg.save(tmp_path / "c.yaml")
    err = refused_by_cli(capsys, ["train", path], tmp_path / "runs", bad)
    assert "cannot be read as an image" in err
    # a label count mismatch in the test folders too
    crop_folders(tmp_path / "test2", n=2, size=64)
    sorted((tmp_path / "test2/label").iterdir())[0].unlink()
    cfg = cfg_for(
        tmp_path, folders, data={"test_raw": str(tmp_path / "test2/raw"), "test_label": str(tmp_path / "test2/label")}
    )
    refused_by_cli(capsys, ["train", cfg.save(tmp_path / "c2.yaml")], tmp_path / "runs", tmp_path / "test2/raw")


# ----------------------------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A real checkpoint from a tiny 1-channel, 2-class run."""
    root = tmp_path_factory.mktemp("ckpt")
    folders = crop_folders(root / "data", n=4, size=64)
    cfg = tiny_config(root / "runs", *folders, data={"patch_size": [32, 32]})
    trainer = Trainer(cfg)
    for _ in trainer.run():
        pass
    return trainer.experiment.best_checkpoint


def forge(checkpoint: Path, dest: Path, edit) -> Path:
    ckpt = read_checkpoint(checkpoint)
    edit(ckpt)
    torch.save(ckpt, dest)
    return dest


def test_checkpoint_from_another_workflow(tmp_path, capsys, folders, checkpoint):
    def other_workflow(ckpt):
        ckpt["workflow"] = "instance_segmentation"
        ckpt["config"]["workflow"] = "instance_segmentation"

    forged = forge(checkpoint, tmp_path / "other.pth", other_workflow)
    with pytest.raises(InputError) as e:
        load_model(forged)
    assert str(forged) in str(e.value) and "instance segmentation" in str(e.value).replace("_", " ")
    raw_dir, _ = folders
    out = tmp_path / "pred"
    refused_by_cli(capsys, ["predict", "--checkpoint", forged, "--input", raw_dir, "--output", out], out, forged)
    assert not out.exists()
    # resuming from it is refused as well
    cfg = cfg_for(tmp_path, folders, train={"resume": str(forged)})
    check_train_refused(capsys, tmp_path, cfg, forged)


def test_segmentation_config_with_an_image_to_image_checkpoint(tmp_path, capsys, folders):
    """A real checkpoint of another workflow (not a forged one): a segmentation YAML refuses an image-to-image
    checkpoint, naming it and both workflows."""
    raw_dir, _ = folders
    i2i = Trainer(
        tiny_config(
            tmp_path / "i2i",
            raw_dir,
            raw_dir,
            workflow="image_to_image",
            data={"patch_size": [32, 32]},
            train={"epochs": 1, "steps_per_epoch": 1},
        )
    )
    for _ in i2i.run():
        pass
    ckpt = i2i.experiment.best_checkpoint
    out = tmp_path / "pred"
    seg = tiny_config(out, *folders, data={"patch_size": [32, 32], "test_raw": str(raw_dir)}).save(
        tmp_path / "seg.yaml"
    )
    err = refused_by_cli(capsys, ["predict", seg, "--set", f"predict.checkpoint={ckpt}"], out, ckpt)
    assert "trained for image to image, not semantic segmentation" in err
    assert not out.exists()


def test_not_a_checkpoint(tmp_path, capsys, folders):
    raw_dir, _ = folders
    fake = tmp_path / "fake.pth"
    torch.save({"weights": torch.zeros(3)}, fake)
    out = tmp_path / "pred"
    err = refused_by_cli(capsys, ["predict", "--checkpoint", fake, "--input", raw_dir, "--output", out], out, fake)
    assert "not a napari-bioflow checkpoint" in err
    text = tmp_path / "text.pth"
    text.write_text("hello")
    refused_by_cli(capsys, ["predict", "--checkpoint", text, "--input", raw_dir, "--output", out], out, text)
    refused_by_cli(
        capsys,
        ["predict", "--checkpoint", tmp_path / "none.pth", "--input", raw_dir, "--output", out],
        out,
        tmp_path / "none.pth",
    )


def test_checkpoint_with_other_channels(tmp_path, capsys, checkpoint):
    # RGB images for a 1-channel checkpoint
    rgb_dir = tmp_path / "rgb"
    raw_dir, _ = crop_folders(tmp_path / "data", n=2, size=64)
    for p in sorted(raw_dir.iterdir()):
        gray = tifffile.imread(p)
        write_image(rgb_dir / p.name, np.stack([gray, gray, gray], -1))
    first = sorted(rgb_dir.iterdir())[0]
    loaded = load_model(checkpoint)
    with pytest.raises(InputError) as e:
        list(predict_files(loaded, folder_pairs(rgb_dir, None, "test"), tmp_path / "engine_out"))
    assert str(first) in str(e.value) and "3 channel(s)" in str(e.value)
    with pytest.raises(InputError, match="expects 1 input channel"):
        load_model(checkpoint, expect_channels=3)
    out = tmp_path / "pred"
    err = refused_by_cli(
        capsys, ["predict", "--checkpoint", checkpoint, "--input", rgb_dir, "--output", out], out, first, checkpoint
    )
    assert "3 channel(s)" in err
    # resuming a 1-channel checkpoint in a 3-channel run
    labels = tmp_path / "data/label"
    cfg = tiny_config(
        tmp_path / "runs",
        rgb_dir,
        labels,
        data={"patch_size": [32, 32], "in_channels": 3, "val_split": 0.0},
        train={"resume": str(checkpoint)},
    )
    msg = check_train_refused(capsys, tmp_path, cfg, checkpoint)
    assert "channel" in msg


def test_predict_bad_images_write_nothing(tmp_path, capsys, checkpoint):
    """Every prediction input is checked before the experiment folder is created."""
    raw_dir, label_dir = crop_folders(tmp_path / "data", n=3, size=64)
    bad = sorted(raw_dir.iterdir())[2]  # the last one: the first two would be predicted before it fails
    img = tifffile.imread(bad).astype(np.float32)
    img[0, 0] = np.nan
    tifffile.imwrite(bad, img)
    out = tmp_path / "pred"
    err = refused_by_cli(capsys, ["predict", "--checkpoint", checkpoint, "--input", raw_dir, "--output", out], out, bad)
    assert "NaN" in err
    # labels that do not fit
    raw2, label2 = crop_folders(tmp_path / "data2", n=2, size=64)
    bad_label = sorted(label2.iterdir())[1]
    tifffile.imwrite(bad_label, tifffile.imread(bad_label)[:50])
    refused_by_cli(
        capsys,
        ["predict", "--checkpoint", checkpoint, "--input", raw2, "--labels", label2, "--output", out],
        out,
        bad_label,
    )
    # an empty input folder
    (tmp_path / "empty").mkdir()
    refused_by_cli(
        capsys,
        ["predict", "--checkpoint", checkpoint, "--input", tmp_path / "empty", "--output", out],
        out,
        tmp_path / "empty",
    )
    # 3D volumes for a 2D checkpoint
    vol = tifffile.imread(NUCLEI / "test/raw/nuclei_test.tif")[:8, :64, :64]
    write_image(tmp_path / "vol" / "v.tif", vol)
    refused_by_cli(
        capsys,
        ["predict", "--checkpoint", checkpoint, "--input", tmp_path / "vol", "--output", out],
        out,
        tmp_path / "vol" / "v.tif",
    )
    assert not out.exists()


def test_predict_output_not_writable(tmp_path, capsys, checkpoint):
    raw_dir, _ = crop_folders(tmp_path / "data", n=1, size=64)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    refused_by_cli(
        capsys,
        ["predict", "--checkpoint", checkpoint, "--input", raw_dir, "--output", blocker / "out"],
        blocker,
        blocker / "out",
    )
    assert blocker.read_text() == "x"


def test_resume_from_a_checkpoint_with_other_classes(tmp_path, capsys, folders, checkpoint):
    cfg = cfg_for(tmp_path, folders, n_classes=3, train={"resume": str(checkpoint)})
    msg = check_train_refused(capsys, tmp_path, cfg, checkpoint)
    assert "does not fit this run's model" in msg
