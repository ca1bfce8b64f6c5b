"""`--format ome-zarr` and `--full-image` of `predict` and `batch` (predict.output_format / predict.full_image), and
the post-processing settings' sentences, through the command line in-process."""

import json

import numpy as np
import pytest
import tifffile
import zarr
from helpers import BBBC, headless_checkpoint

from napari_bioflow.cli import main


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_format")
    raw = tifffile.imread(sorted((BBBC / "train" / "raw").glob("*.tif"))[0])[:192, :192]
    label = (tifffile.imread(sorted((BBBC / "train" / "label").glob("*.tif"))[0])[:192, :192] > 0).astype(np.uint8)
    ckpt = headless_checkpoint(root / "train", raw, label)
    images = root / "images"
    images.mkdir()
    for i in range(2):  # OME-TIFFs with their pixel size
        tifffile.imwrite(
            images / f"cell_{i}.tif",
            raw[i * 16 : i * 16 + 64, :80],
            ome=True,
            metadata={"axes": "YX", "PhysicalSizeX": 0.4, "PhysicalSizeY": 0.4},
        )
    return ckpt, images


def scale_of(group) -> list:
    meta = json.loads((group / "zarr.json").read_text())["attributes"]["ome"]["multiscales"][0]
    return meta["datasets"][0]["coordinateTransformations"][0]["scale"]


def test_predict_format_ome_zarr(setup, tmp_path, capsys):
    ckpt, images = setup
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", str(ckpt), "--input", str(images), "--output", str(out), "--format",
                 "ome-zarr"]) == 0  # fmt: skip
    res = out / "ckpt" / "results" / "ckpt_1"
    for i in range(2):
        prob, labels = res / "per_image" / f"cell_{i}.ome.zarr", res / "per_image_binarized" / f"cell_{i}.ome.zarr"
        assert scale_of(prob) == [1.0, 0.4, 0.4] and scale_of(labels) == [0.4, 0.4]
        assert zarr.open_array(str(prob / "0"), mode="r").shape == (2, 64, 80)
        np.testing.assert_array_equal(
            zarr.open_array(str(labels / "0"), mode="r")[:],
            tifffile.imread(res / "per_image_binarized" / f"cell_{i}.tif"),
        )
    assert "output_format: ome-zarr" in (out / "ckpt" / "config_files" / "ckpt_1.yaml").read_text()


def test_batch_format_ome_zarr_full_image_records_its_paths(setup, tmp_path, capsys):
    ckpt, images = setup
    out = tmp_path / "runs"
    argv = ["batch", "--checkpoint", str(ckpt), "--input", str(images), "--output", str(out)]
    assert main([*argv, "--format", "ome-zarr", "--full-image", "--device", "cpu"]) == 0
    run = out / "batch" / "results" / "batch_1"
    marker = json.loads((run / "batch" / "done" / "cell_0.json").read_text())
    assert marker["outputs"] == {
        "probabilities": "full_image/cell_0.ome.zarr/0",
        "labels": "full_image_binarized/cell_0.ome.zarr/0",
    }
    assert marker["files"] == ["full_image/cell_0.tif", "full_image_binarized/cell_0.tif"]
    assert not (run / "per_image").exists()
    assert scale_of(run / "full_image" / "cell_1.ome.zarr") == [1.0, 0.4, 0.4]


def test_settings_that_do_not_apply_are_one_line(setup, tmp_path, capsys):
    ckpt, images = setup
    argv = ["predict", "--checkpoint", str(ckpt), "--input", str(images), "--output", str(tmp_path)]
    assert main([*argv, "--set", "predict.z_filter=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(
        "predict.z_filter does not apply to 2D semantic segmentation (set predict.stack_2d to filter 2D images as "
        "one 3D stack)."
    )
    assert len(err.splitlines()) == 1 and not any(tmp_path.iterdir())
    assert main([*argv, "--set", "predict.z_filter=3", "--set", "predict.stack_2d=true"]) == 0
    printed = capsys.readouterr().out
    res = tmp_path / "ckpt" / "results" / "ckpt_1"
    assert "note: predict.z_filter/yz_filter not applied to" not in printed  # two images of one shape: a stack
    assert sorted(p.name for p in (res / "per_image_post_processing").iterdir()) == ["cell_0.tif", "cell_1.tif"]
