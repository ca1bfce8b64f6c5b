"""`napari-bioflow export` (BioImage Model Zoo): a package written and tested, the formats and the test printed,
then used as a checkpoint by `predict` and `batch`; mistakes are one line and exit code 2."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import tifffile
from helpers import BBBC, headless_checkpoint

pytest.importorskip("bioimageio.core")

from napari_bioflow.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    name = "A9_A9_p10d.tif"
    raw = tifffile.imread(BBBC / "train" / "raw" / name)[:128, :128]
    label = tifffile.imread(BBBC / "train" / "label" / name)[:128, :128]
    out = tmp_path_factory.mktemp("cli_export")
    (out / "images").mkdir()
    tifffile.imwrite(out / "images" / "crop.tif", raw)
    return headless_checkpoint(out, raw, (label > 0).astype(np.uint8)), out / "images"


def test_export_then_predict_and_batch_with_the_package(checkpoint, tmp_path, capsys):
    ckpt, images = checkpoint
    package = tmp_path / "model.zip"
    code = main(
        [
            "export",
            str(ckpt),
            "-o",
            str(package),
            "--author",
            "Ada Lovelace",
            "--author",
            "Alan Turing",
            "--input",
            str(images / "crop.tif"),
            "--formats",
            "pytorch_state_dict",
            "onnx",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"wrote {package}" in out and "  pytorch_state_dict: converted" in out and "  onnx: converted" in out
    assert "torchscript" not in out.split("bioimageio.core test")[0]
    assert "bioimageio.core test: passed (Reproduce test outputs from test inputs (onnx): passed;" in out
    with zipfile.ZipFile(package) as z:
        assert {"weights.pt", "weights.onnx"} <= set(z.namelist()) and "weights_torchscript.pt" not in z.namelist()
    assert main(["predict", "--checkpoint", str(package), "--input", str(images), "--output", str(tmp_path)]) == 0
    pred = next(tmp_path.rglob("per_image/crop.tif"))
    assert tifffile.imread(pred).shape == (2, 128, 128)
    assert main(["batch", "--checkpoint", str(package), "--input", str(images), "--output", str(tmp_path / "b")]) == 0
    assert next((tmp_path / "b").rglob("batch_summary.csv")).read_text().count("done") == 1


def test_export_mistakes_are_one_line_exit_2(checkpoint, tmp_path, capsys):
    ckpt, _ = checkpoint
    assert main(["export", str(ckpt), "-o", str(tmp_path / "m.zip")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("A BioImage Model Zoo package needs at least one author.") and "\n" not in err
    assert main(["export", str(ckpt), "-o", str(tmp_path / "m.txt"), "--author", "A"]) == 2
    assert "must be a .zip file" in capsys.readouterr().err
    assert main(["predict", "--checkpoint", str(tmp_path / "none.zip"), "--input", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "m.zip").exists()
