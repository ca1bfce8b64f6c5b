"""Several raw images per target (issue 12 item 9, the image-to-image page's multiple-raw loader): sample
sub-folders of raw images, one target per sample (an image named after the sub-folder, or a sub-folder with one
image); every raw image trains against its sample's target and validation holds aside whole samples. Real time-lapse
crops: the raw views of a sample are degraded copies of the crop (blur, noise), the target the crop itself."""

from pathlib import Path

import numpy as np
import pytest
import tifffile
from helpers import read_csv, reports_of, run_all, tiny_config, tree
from scipy.ndimage import gaussian_filter

from napari_bioflow.engine.data.multi_raw import multi_raw_groups
from napari_bioflow.engine.data.sources import folder_pairs
from napari_bioflow.engine.errors import InputError
from napari_bioflow.engine.predict.inference import predict_files
from napari_bioflow.engine.train import EpochReport, StartReport, Trainer
from napari_bioflow.engine.train.checkpoint import load_model

TIMELAPSE = Path(__file__).parents[1] / "data" / "timelapse_2d_crops.tif"  # 4 real 160x160 crops


def view(image: np.ndarray, seed: int, blur: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = gaussian_filter(image.astype(np.float32), blur) + rng.normal(0, 0.1 * float(image.max()), image.shape)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def write_samples(root: Path, crops: np.ndarray, views: int = 3) -> tuple[Path, Path]:
    raw_dir, target_dir = root / "raw", root / "target"
    for k, crop in enumerate(crops):
        (raw_dir / f"cell{k}").mkdir(parents=True)
        for v in range(views):
            tifffile.imwrite(raw_dir / f"cell{k}" / f"view{v}.tif", view(crop[:96, :96], 10 * k + v, 0.5 + v))
        if k % 2:  # the target as a sub-folder holding one image
            (target_dir / f"cell{k}").mkdir(parents=True)
            tifffile.imwrite(target_dir / f"cell{k}" / "clean.tif", crop[:96, :96])
        else:
            target_dir.mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(target_dir / f"cell{k}.tif", crop[:96, :96])
    return raw_dir, target_dir


def multi_raw_config(out: Path, raw_dir: Path, target_dir: Path, val_split: float):
    """A tiny image-to-image run on sample sub-folders (data.multiple_raw)."""
    return tiny_config(
        out,
        raw_dir,
        target_dir,
        workflow="image_to_image",
        data={"multiple_raw": True, "patch_size": [32, 32], "val_split": val_split},
        model={"options": {"feature_maps": [8, 16], "norm": "none"}},
    )


def test_several_raw_images_per_target_train_with_whole_samples_held_aside(tmp_path):
    crops = tifffile.imread(TIMELAPSE)
    raw_dir, target_dir = write_samples(tmp_path / "data", crops)
    groups = multi_raw_groups(raw_dir, target_dir, "training")
    assert [(name, len(raws), target.name) for name, raws, target in groups] == [
        ("cell0", 3, "cell0.tif"),
        ("cell1", 3, "clean.tif"),
        ("cell2", 3, "cell2.tif"),
        ("cell3", 3, "clean.tif"),
    ]
    trainer = Trainer(multi_raw_config(tmp_path / "out", raw_dir, target_dir, 0.25))
    reports = run_all(trainer)
    (start,) = reports_of(reports, StartReport)
    assert (start.n_train, start.n_val) == (9, 3)  # one sample of four, with its three views
    assert "Validation: 1 of 4 samples held aside with all their raw images." in start.notes
    assert "Training: 12 raw images of 4 samples (data.multiple_raw)." in start.notes
    val_groups = {s.group for s in trainer.dataset.val}
    assert len(val_groups) == 1 and not val_groups & {s.group for s in trainer.dataset.train}
    targets = {name: str(target) for name, _, target in groups}
    assert all(s.label_name == targets[s.group] and Path(s.name).parent.name == s.group for s in trainer.dataset.train)
    assert np.isfinite(reports_of(reports, EpochReport)[-1].metrics["psnr"])
    rows = read_csv(next(trainer.experiment.results.glob("train_logs/*.csv")))
    assert len(rows) == 1
    # the held-aside sample's views predicted against its target
    (held,) = val_groups
    k = int(held.removeprefix("cell"))
    test_raw, test_target = tmp_path / "test/raw", tmp_path / "test/target"
    test_raw.mkdir(parents=True)
    test_target.mkdir(parents=True)
    for v in range(3):
        tifffile.imwrite(test_raw / f"view{v}.tif", tifffile.imread(raw_dir / held / f"view{v}.tif"))
        tifffile.imwrite(test_target / f"view{v}.tif", crops[k][:96, :96])
    results = list(
        predict_files(
            load_model(reports[-1].checkpoint), folder_pairs(test_raw, test_target, "test"), trainer.experiment.results
        )
    )
    assert len(results) == 3 and all(np.isfinite(r.metrics["psnr"]) for r in results)


def test_multiple_raw_refusals(tmp_path):
    crops = tifffile.imread(TIMELAPSE)[:2]
    raw_dir, target_dir = write_samples(tmp_path / "data", crops, views=2)
    (target_dir / "cell0.tif").unlink()
    with pytest.raises(InputError, match=r"1 training sample\(s\) of .*raw have no target in .*target \(cell0\)"):
        multi_raw_groups(raw_dir, target_dir, "training")
    tifffile.imwrite(target_dir / "cell0.tif", crops[0][:96, :96])
    tifffile.imwrite(target_dir / "cell9.tif", crops[0][:96, :96])
    with pytest.raises(InputError, match=r"1 target\(s\) in .*target have no sample sub-folder in .*raw \(cell9\)"):
        multi_raw_groups(raw_dir, target_dir, "training")
    (target_dir / "cell9.tif").unlink()
    tifffile.imwrite(target_dir / "cell1" / "second.tif", crops[1][:96, :96])
    with pytest.raises(InputError, match=r"cell1 holds 2 images \(clean.tif, second.tif\); a sample has one target"):
        multi_raw_groups(raw_dir, target_dir, "training")
    (target_dir / "cell1" / "second.tif").unlink()
    tifffile.imwrite(raw_dir / "loose.tif", crops[0][:96, :96])
    with pytest.raises(InputError, match=r"mixes sample sub-folders with loose images \(e.g. loose.tif\)"):
        multi_raw_groups(raw_dir, target_dir, "training")
    (raw_dir / "loose.tif").unlink()
    cfg = tiny_config(
        tmp_path / "out",
        raw_dir,
        target_dir,
        workflow="self_supervised",
        data={"multiple_raw": True, "patch_size": [32, 32]},
    )
    with pytest.raises(InputError, match="data.multiple_raw pairs several raw images with one target"):
        run_all(Trainer(cfg))
    assert tree(tmp_path / "out") == {}
    cfg = tiny_config(
        tmp_path / "out",
        raw_dir,
        None,
        workflow="classification",
        model={"name": "simple_cnn"},
        data={"multiple_raw": True},
    )
    with pytest.raises(InputError, match="classification takes one class per image from its class sub-folders"):
        run_all(Trainer(cfg))
    assert tree(tmp_path / "out") == {}


def test_sample_folders_predict_view_by_view_in_predict_and_batch(tmp_path, capsys):
    """A model trained with data.multiple_raw predicts a folder of sample sub-folders (views sharing file names
    across samples) with `predict` and `batch`: every view, named sample/view, measured against its sample's
    target; a flat folder of images still predicts image by image."""
    from napari_bioflow.cli import main

    crops = tifffile.imread(TIMELAPSE)
    raw_dir, target_dir = write_samples(tmp_path / "data", crops[:2])
    trainer = Trainer(multi_raw_config(tmp_path / "out", raw_dir, target_dir, 0.5))
    checkpoint = run_all(trainer)[-1].checkpoint
    test_raw, test_target = write_samples(tmp_path / "test", crops[2:])
    before = tree(tmp_path / "test")
    main(["predict", "--checkpoint", str(checkpoint), "--input", str(test_raw), "--labels", str(test_target),
          "--output", str(tmp_path / "pred")])  # fmt: skip
    out = capsys.readouterr().out
    assert out.count("predicted ") == 6
    (results,) = (tmp_path / "pred").glob("*/results/*")
    rows = read_csv(results / "metrics.csv")
    names = [r["image"] for r in rows if not r["image"].startswith("ALL")]
    assert sorted(names) == [f"cell{k}/view{v}.tif" for k in (0, 1) for v in range(3)]
    assert all(np.isfinite(float(r["psnr"])) for r in rows)
    stems = sorted(p.name.split(".")[0] for p in (results / "per_image").glob("*.tif"))
    assert stems == [f"cell{k}_view{v}" for k in (0, 1) for v in range(3)]  # one file per view, none written over
    # each view is measured against its own sample's target: a view's PSNR equals the one computed by hand
    from napari_bioflow.engine.workflows.image_to_image import psnr

    predicted = tifffile.imread(results / "per_image" / "cell1_view0.tif").astype(np.float64).squeeze()
    own, other = (
        tifffile.imread(p).astype(np.float64) for p in (test_target / "cell1/clean.tif", test_target / "cell0.tif")
    )
    row = next(r for r in rows if r["image"] == "cell1/view0.tif")
    assert float(row["psnr"]) == pytest.approx(psnr(predicted, own), abs=0.05)
    assert abs(float(row["psnr"]) - psnr(predicted, other)) > 0.05  # not the other sample's target
    # batch: the same six views, the same names
    main(["batch", "--checkpoint", str(checkpoint), "--input", str(test_raw), "--labels", str(test_target),
          "--output", str(tmp_path / "batch")])  # fmt: skip
    (batch_run,) = (tmp_path / "batch").glob("*/results/*")
    batch_stems = sorted(p.name.split(".")[0] for p in (batch_run / "per_image").glob("*.tif"))
    assert batch_stems == stems
    assert tree(tmp_path / "test") == before  # the user's folders untouched
    # a flat folder still predicts image by image with this model
    flat = tmp_path / "flat"
    flat.mkdir()
    tifffile.imwrite(flat / "one.tif", tifffile.imread(test_raw / "cell0" / "view0.tif"))
    main(["predict", "--checkpoint", str(checkpoint), "--input", str(flat), "--output", str(tmp_path / "flat_out")])
    assert "predicted " in capsys.readouterr().out
    assert next((tmp_path / "flat_out").glob("*/results/*/per_image/one.tif")).is_file()
