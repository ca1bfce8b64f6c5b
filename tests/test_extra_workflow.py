"""A workflow is one module: a small extra workflow, declared here and nowhere else, goes through `init`, `train`,
`predict`, `batch` and the Train/Predict docks. If a front end knew the workflows by name, this would fail."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from helpers import TINY_MODEL, dock, read_csv, shown

from napari_bioflow.cli import main
from napari_bioflow.config import RunConfig
from napari_bioflow.engine.workflows.base import register_workflow, unregister_workflow
from napari_bioflow.engine.workflows.image_to_image import ImageToImage
from napari_bioflow.engine.workflows.spec import Output


class IdentityThreshold(ImageToImage):
    """Identity image to image (the target is the raw image) with one more output: the pixels above the mean."""

    name = "identity_threshold"
    title = "identity with a threshold"
    order = 50
    losses = ("auto", "mse")
    outputs = (*ImageToImage.outputs, Output("mask", "above mean", layer="labels"))
    metric_keys = ("psnr", "ssim", "fraction_above")
    init_notes = ("Identity image to image with a threshold output: data.train_label holds copies of the raw images.",)

    @classmethod
    def init_values(cls, ndim: int) -> dict:
        return {"name": "my_identity", "train": {"loss": "mse"}}

    def write_outputs(self, prediction, store, out_dir, stem, cfg, target=None, inputs=None):
        from napari_bioflow.engine.data.io import write_tiff

        out = super().write_outputs(prediction, store, out_dir, stem, cfg, target, inputs)
        image = np.asarray(out["image"])[0]
        mask = (image > image.mean()).astype(np.uint8)
        write_tiff(out_dir / "above_mean" / f"{stem}.tif", mask)
        out["mask"] = mask
        out.setdefault("metrics", {})["fraction_above"] = float(mask.mean())
        return out


@pytest.fixture
def extra():
    register_workflow(IdentityThreshold)
    yield IdentityThreshold
    unregister_workflow(IdentityThreshold)


@pytest.fixture(scope="module")
def nuclei() -> np.ndarray:
    from helpers import BBBC

    return tifffile.imread(sorted((BBBC / "train" / "raw").glob("*.tif"))[0])[:128, :128]


def _folders(root: Path, image: np.ndarray) -> tuple[Path, Path]:
    raw, target = root / "raw", root / "target"
    for folder in (raw, target):
        folder.mkdir(parents=True)
        for i, crop in enumerate((image[:96, :96], image[32:, 32:])):
            tifffile.imwrite(folder / f"img_{i}.tif", np.ascontiguousarray(crop))
    return raw, target


def test_the_extra_workflow_through_the_command_line(extra, tmp_path, nuclei, capsys):
    raw, target = _folders(tmp_path / "data", nuclei)
    config = tmp_path / "identity.yaml"
    assert main(["init", "identity_threshold", "-o", str(config)]) == 0
    text = config.read_text()
    assert "workflow: identity_threshold" in text and "# Identity image to image with a threshold output" in text
    assert RunConfig.load(config).train.loss == "mse"
    out = tmp_path / "runs"
    sets = [
        "--set",
        f"data.train_raw={raw}",
        "--set",
        f"data.train_label={target}",
        "--set",
        f"output_dir={out}",
        "--set",
        "data.patch_size=[64,64]",
        "--set",
        f"model.options={{feature_maps: {TINY_MODEL['feature_maps']}}}",
        "--set",
        "train.epochs=1",
        "--set",
        "train.steps_per_epoch=2",
        "--set",
        "train.batch_size=2",
        "--set",
        "device=cpu",
        "--set",
        "data.val_split=0.5",
    ]
    assert main(["train", str(config), *sets]) == 0, capsys.readouterr().err
    checkpoint = out / "my_identity" / "checkpoints" / "my_identity_1-checkpoint-best.pth"
    assert checkpoint.is_file()
    assert main(["models"]) == 0
    assert "# identity with a threshold" in capsys.readouterr().out

    # predict: the workflow's own output is written, its metric reported
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(checkpoint),
                "--input",
                str(raw),
                "--labels",
                str(target),
                "--output",
                str(tmp_path / "pred"),
                "--set",
                "name=p",
            ]
        )
        == 0
    ), capsys.readouterr().err
    results = tmp_path / "pred" / "p" / "results" / "p_1"
    for i, size in ((0, 96), (1, 96)):
        mask = tifffile.imread(results / "above_mean" / f"img_{i}.tif")
        prediction = tifffile.imread(results / "per_image" / f"img_{i}.tif")[0]
        assert mask.shape == (size, size) and set(np.unique(mask)) == {0, 1}
        np.testing.assert_array_equal(mask, prediction > prediction.mean())
    rows = read_csv(results / "metrics.csv")
    assert [r["image"] for r in rows[:2]] == ["img_0.tif", "img_1.tif"] and 0 < float(rows[0]["fraction_above"]) < 1

    # batch, this process: the same outputs for every file
    assert (
        main(
            [
                "batch",
                "--checkpoint",
                str(checkpoint),
                "--input",
                str(raw),
                "--output",
                str(tmp_path / "batch"),
                "--device",
                "cpu",
            ]
        )
        == 0
    ), capsys.readouterr().err
    run_dir = tmp_path / "batch" / "batch" / "results" / "batch_1"
    assert sorted(p.name for p in (run_dir / "above_mean").iterdir()) == ["img_0.tif", "img_1.tif"]


def test_the_extra_workflow_through_the_docks(extra, make_napari_viewer, wait_idle, tmp_path, nuclei):
    from napari.layers import Image, Labels

    from napari_bioflow.widgets.predict import JUST_TRAINED, PredictWidget
    from napari_bioflow.widgets.train import TrainWidget

    viewer = make_napari_viewer()
    raw = viewer.add_image(nuclei, name="raw")
    copy = viewer.add_image(nuclei.copy(), name="copy")
    train = dock(viewer, TrainWidget(viewer))
    f = train.form
    assert "identity_threshold" in list(f["workflow"].choices)
    f["workflow"].value = "identity_threshold"
    pair = train.pairs.pairs[0]
    assert shown(pair.target_layer) and not shown(pair.labels_layer)  # it trains from raw + target images
    assert list(f["train.loss"].choices) == ["auto", "mse"]
    pair.image_layer.value, pair.target_layer.value = raw, copy
    train.patch_yx.value = 64
    train.feature_maps.value = ", ".join(map(str, TINY_MODEL["feature_maps"]))
    f["train.epochs"].value, f["train.steps_per_epoch"].value, f["train.batch_size"].value = 1, 2, 2
    f["output_dir"].value, f["device"].value = str(tmp_path), "cpu"
    train.train_button.native.click()
    wait_idle(train)
    assert train.result is not None and train.result.checkpoint.is_file()
    assert RunConfig.load(next((tmp_path).glob("*/config_files/*.yaml"))).workflow == "identity_threshold"

    predict = dock(viewer, PredictWidget(viewer))
    assert predict.model_source.value == JUST_TRAINED
    assert predict.kind is not None and predict.kind.workflow is IdentityThreshold
    assert shown(predict.target) and predict.target.label == "target"
    predict.image.value = raw
    predict.form["output_dir"].value, predict.form["device"].value = str(tmp_path / "pred"), "cpu"
    predict.predict_button.native.click()
    wait_idle(predict)
    assert predict.result is not None
    image, mask = viewer.layers["raw prediction"], viewer.layers["raw above mean"]
    assert isinstance(image, Image) and isinstance(mask, Labels)
    assert viewer.layers.index(mask) == viewer.layers.index(image) + 1  # declared order, bottom up
    np.testing.assert_array_equal(np.asarray(mask.data), np.asarray(image.data) > np.asarray(image.data).mean())
