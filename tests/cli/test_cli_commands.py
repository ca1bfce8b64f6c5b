"""The command line, called in-process (`cli.main`), plus one call of the installed console script."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from helpers import crop_folders, labels_expected, read_csv, tree

from napari_bioflow.cli import main
from napari_bioflow.config import RunConfig, commented_config, config_reference


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_data")
    train = crop_folders(root / "train", "train", n=4, size=96)
    test = crop_folders(root / "test", "test", n=2, size=160, origin=(60, 60))
    return {"train": train, "test": test}


def data_overrides(data, out: Path, name="cli") -> list[str]:
    (train_raw, train_label), (test_raw, test_label) = data["train"], data["test"]
    sets = [
        f"name={name}",
        f"output_dir={out}",
        "device=cpu",
        f"data.train_raw={train_raw}",
        f"data.train_label={train_label}",
        f"data.test_raw={test_raw}",
        f"data.test_label={test_label}",
        "data.patch_size=[64, 64]",
        "data.val_split=0.25",
        "model.options.feature_maps=[8, 16]",
        "train.epochs=1",
        "train.steps_per_epoch=3",
        "train.batch_size=2",
        "predict.tile_size=[96, 96]",
    ]
    return [a for s in sets for a in ("--set", s)]


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """init, then train the written config with --set overrides, twice (run ids 1 and 2)."""
    work = tmp_path_factory.mktemp("cli_run")
    cfg_path = work / "semantic.yaml"
    assert main(["init", "semantic_segmentation", "-o", str(cfg_path)]) == 0
    out = work / "runs"
    assert main(["train", str(cfg_path), *data_overrides(data, out)]) == 0
    first = tree(out / "cli")
    assert main(["train", str(cfg_path), *data_overrides(data, out)]) == 0
    return {"cfg": cfg_path, "out": out, "root": out / "cli", "first": first}


def test_init_writes_a_commented_config(tmp_path, capsys):
    path = tmp_path / "c3.yaml"
    assert main(["init", "semantic_segmentation", "--ndim", "3", "-o", str(path)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {path}"
    from napari_bioflow.engine.workflows.base import workflow_class

    cls = workflow_class("semantic_segmentation")
    assert path.read_text() == commented_config("semantic_segmentation", 3, cls.init_values(3), cls.init_notes)
    assert "# Pairs: each raw image" in path.read_text()
    assert RunConfig.load(path).ndim == 3
    # never overwritten without --force
    path.write_text("# mine\n")
    assert main(["init", "semantic_segmentation", "-o", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err and "--force" in err
    assert path.read_text() == "# mine\n"
    assert main(["init", "semantic_segmentation", "-o", str(path), "--force"]) == 0
    assert RunConfig.load(path).ndim == 2


def test_train_writes_the_experiment_folder(trained, data):
    root = trained["root"]
    files = trained["first"]
    for rel in (
        "config_files/cli_1.yaml",
        "checkpoints/cli_1-checkpoint-best.pth",
        "checkpoints/cli_1-checkpoint-last.pth",
        "results/cli_1/train_logs/cli_1_log.csv",
        "results/cli_1/charts/cli_1_loss.png",
        "results/cli_1/charts/cli_1_iou_foreground.png",
        "results/cli_1/metrics.csv",
    ):
        assert rel in files, rel
    res = root / "results" / "cli_1"
    for sub in ("charts", "train_logs", "per_image", "per_image_binarized"):
        assert (res / sub).is_dir(), sub
    test_raw, _ = data["test"]
    stems = sorted(p.name.split(".")[0] for p in test_raw.iterdir())
    for stem in stems:
        prob = tifffile.imread(res / "per_image" / f"{stem}.tif")
        labels = tifffile.imread(res / "per_image_binarized" / f"{stem}.tif")
        assert prob.shape == (2, 160, 160) and prob.dtype == np.float32
        np.testing.assert_allclose(prob.sum(0), 1, atol=1e-4)
        assert labels.shape == (160, 160)
        np.testing.assert_array_equal(labels, labels_expected(prob, root / "checkpoints" / "cli_1-checkpoint-best.pth"))
        store = res / "per_image" / f"{stem}.zarr"
        np.testing.assert_array_equal(zarr.open_array(str(store / "labels"), mode="r")[...], labels)
        assert not (store / "accumulator").exists()  # the running sums are cleaned up
    rows = read_csv(res / "metrics.csv")
    assert [r["image"] for r in rows] == [f"{s}.tif" for s in stems] + ["ALL (pixels pooled)"]
    assert all(0 <= float(r["iou_foreground"]) <= 1 for r in rows)
    saved = RunConfig.load(root / "config_files" / "cli_1.yaml")
    assert saved.train.epochs == 1 and saved.model.options == {"feature_maps": [8, 16]}
    assert saved.data.test_label == data["test"][1]


def test_second_run_gets_id_2_and_leaves_run_1_alone(trained):
    root = trained["root"]
    now = tree(root)
    assert {k: v for k, v in now.items() if k in trained["first"]} == trained["first"]
    for rel in (
        "config_files/cli_2.yaml",
        "checkpoints/cli_2-checkpoint-best.pth",
        "results/cli_2/metrics.csv",
        "results/cli_2/train_logs/cli_2_log.csv",
    ):
        assert rel in now, rel


def test_train_prints_progress(data, tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(["train", str(write_default(tmp_path)), *data_overrides(data, out, "talk")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"run talk_1 in {out / 'talk'}: 3 training / 1 validation images, 3 steps per epoch")
    assert any(l.startswith("epoch 1/1 loss=") and "val_loss=" in l and "iou_foreground=" in l for l in lines)
    assert any(l.startswith("training finished after 1 epoch(s); best epoch 1") for l in lines)
    assert sum(l.startswith("predicted ") for l in lines) == 2
    assert lines[-2] == f"metrics: {out / 'talk/results/talk_1/metrics.csv'}"
    assert lines[-1] == f"results: {out / 'talk/results/talk_1'}"


def write_default(folder: Path) -> Path:
    return RunConfig().save(folder / "default.yaml")


def test_saved_config_repeats_the_run(trained):
    """Training again from config_files/cli_1.yaml gives the same losses (same seed, CPU is deterministic here)."""
    root = trained["root"]
    assert main(["train", str(root / "config_files" / "cli_1.yaml")]) == 0
    runs = sorted(p.name for p in (root / "results").iterdir())
    new = runs[-1]
    assert new not in ("cli_1", "cli_2")
    a = read_csv(root / "results" / "cli_1" / "train_logs" / "cli_1_log.csv")
    b = read_csv(root / "results" / new / "train_logs" / f"{new}_log.csv")
    assert float(a[0]["train_loss"]) == float(b[0]["train_loss"])
    assert float(a[0]["val_loss"]) == float(b[0]["val_loss"])
    # run 2 (same command) got the same numbers too
    c = read_csv(root / "results" / "cli_2" / "train_logs" / "cli_2_log.csv")
    assert float(c[0]["train_loss"]) == float(a[0]["train_loss"])
    m1, m3 = read_csv(root / "results/cli_1/metrics.csv"), read_csv(root / "results" / new / "metrics.csv")
    assert [r["iou_foreground"] for r in m1] == [r["iou_foreground"] for r in m3]


def test_predict_with_a_checkpoint_and_no_labels(trained, data, tmp_path, capsys):
    ckpt = trained["root"] / "checkpoints" / "cli_1-checkpoint-best.pth"
    test_raw, _ = data["test"]
    out = tmp_path / "pred"
    assert main(["predict", "--checkpoint", str(ckpt), "--input", str(test_raw), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "metrics:" not in printed and printed.count("predicted ") == 2
    res = out / "cli" / "results" / "cli_1"
    assert not (res / "metrics.csv").exists()
    for raw_path in sorted(test_raw.iterdir()):
        stem = raw_path.name.split(".")[0]
        prob = tifffile.imread(res / "per_image" / f"{stem}.tif")
        assert prob.shape == (2, 160, 160)
        store = res / "per_image" / f"{stem}.zarr"
        assert zarr.open_array(str(store / "prediction"), mode="r").shape == (2, 160, 160)
        assert zarr.open_array(str(store / "labels"), mode="r").shape == (160, 160)
        # the same image, the same checkpoint: the same probabilities as after training
        trained_prob = tifffile.imread(trained["root"] / "results/cli_1/per_image" / f"{stem}.tif")
        np.testing.assert_allclose(prob, trained_prob, atol=1e-6)
    saved = RunConfig.load(out / "cli" / "config_files" / "cli_1.yaml")
    assert saved.predict.checkpoint == ckpt and saved.data.test_raw == test_raw and saved.data.test_label is None
    # predicting again never overwrites: a new run id
    assert main(["predict", "--checkpoint", str(ckpt), "--input", str(test_raw), "--output", str(out)]) == 0
    assert (out / "cli" / "results" / "cli_2" / "per_image").is_dir()


def test_predict_with_a_config_and_labels(trained, data, tmp_path):
    ckpt = trained["root"] / "checkpoints" / "cli_1-checkpoint-best.pth"
    test_raw, test_label = data["test"]
    cfg = RunConfig.from_dict(
        {
            "name": "pred",
            "output_dir": str(tmp_path),
            "device": "cpu",
            "model": {"options": {"feature_maps": [8, 16]}},
            "predict": {"save_tiff": False, "tile_size": [96, 96]},
        }
    )
    path = cfg.save(tmp_path / "p.yaml")
    assert (
        main(
            [
                "predict",
                str(path),
                "--set",
                f"predict.checkpoint={ckpt}",
                "--input",
                str(test_raw),
                "--labels",
                str(test_label),
            ]
        )
        == 0
    )
    res = tmp_path / "pred" / "results" / "pred_1"
    rows = read_csv(res / "metrics.csv")
    assert len(rows) == 3
    assert not list((res / "per_image").glob("*.tif"))  # save_tiff false: zarr only
    assert len(list((res / "per_image").glob("*.zarr"))) == 2
    # the same checkpoint and tiles as the prediction after training: the same IoU
    trained_rows = read_csv(trained["root"] / "results/cli_1/metrics.csv")
    assert [float(r["iou_foreground"]) for r in rows] == pytest.approx(
        [float(r["iou_foreground"]) for r in trained_rows]
    )


def test_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: napari-bioflow")
    for cmd in ("train", "predict", "init", "sample", "docs", "models"):
        assert cmd in out
    with pytest.raises(SystemExit) as e:
        main(["train", "--help"])
    assert e.value.code == 0 and "--set SECTION.FIELD=VALUE" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["frobnicate"])
    assert e.value.code == 2


def test_docs_and_models(tmp_path, capsys):
    out = tmp_path / "d" / "config.md"
    assert main(["docs", "-o", str(out)]) == 0
    assert out.read_text() == config_reference()
    capsys.readouterr()
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert {l.split(":")[0] for l in lines} >= {"unet", "resunet", "attention_unet"}
    assert any("feature_maps" in l for l in lines)


def test_set_overrides_are_validated(tmp_path, capsys):
    path = write_default(tmp_path)
    assert main(["train", str(path), "--set", "train.epochs=zero"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "train.epochs" in err and str(path) in err
    assert not (tmp_path / "bioflow_runs").exists()


def test_console_script_entry_point(tmp_path):
    script = Path(sys.executable).parent / "napari-bioflow"
    assert script.is_file()
    out = tmp_path / "start.yaml"
    proc = subprocess.run(
        [str(script), "init", "semantic_segmentation", "--ndim", "3", "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"wrote {out}" and proc.stderr == ""
    assert RunConfig.load(out).ndim == 3


def test_train_with_training_disabled_only_predicts(trained, data, tmp_path):
    ckpt = trained["root"] / "checkpoints" / "cli_1-checkpoint-best.pth"
    out = tmp_path / "runs"
    argv = [
        "train",
        str(trained["cfg"]),
        *data_overrides(data, out, "only_predict"),
        "--set",
        "train.enable=false",
        "--set",
        f"predict.checkpoint={ckpt}",
    ]
    assert main(argv) == 0
    root = out / "only_predict"
    assert not list((root / "checkpoints").iterdir())  # nothing trained
    assert not (root / "results/only_predict_1/train_logs").exists()
    assert len(read_csv(root / "results/only_predict_1/metrics.csv")) == 3
    assert len(list((root / "results/only_predict_1/per_image").glob("*.zarr"))) == 2
    # without a checkpoint there is nothing to predict with
    assert (
        main(
            ["train", str(trained["cfg"]), *data_overrides(data, tmp_path / "none", "x"), "--set", "train.enable=false"]
        )
        == 2
    )
    assert not (tmp_path / "none").exists()
