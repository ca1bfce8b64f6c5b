"""BioImage Model Zoo export (issue 13): export -> bioimageio.core's own test -> import -> the same predictions, for
U-Net segmentation 2D and 3D, image to image and a classifier; bioimageio.core's prediction on the package (each
weight format, tiled) against napari-bioflow's; refusals in one sentence."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml

pytest.importorskip("bioimageio.core")

from helpers import NUCLEI, TINY_MODEL, bbbc_pairs  # noqa: E402

from napari_bioflow.engine.errors import InputError  # noqa: E402

AUTHOR = ["Test Author"]
TIMELAPSE = Path("/work/shared/data/timelapse_2d/2D_timelapse.tif")
CLASSES = Path(__file__).resolve().parents[1] / "data" / "classification_2d"


def _train(out: Path, cfg_dict: dict, samples) -> Path:
    from napari_bioflow.config import RunConfig
    from napari_bioflow.engine.data.sources import make_sample
    from napari_bioflow.engine.train import Trainer

    base = {"name": "bmz", "output_dir": str(out), "device": "cpu", "seed": 0}
    cfg = RunConfig.from_dict({**base, **cfg_dict})
    train = (
        [make_sample(r, f"raw{i}", cfg, label=t, need_label=t is not None) for i, (r, t) in enumerate(samples)]
        if samples
        else None
    )
    trainer = Trainer(cfg, train=train)
    for _ in trainer.run():
        pass
    return trainer.best_checkpoint


def _train_cfg(**extra) -> dict:
    return {"train": {"epochs": 1, "steps_per_epoch": 1, "batch_size": 2, "patience": 0}, **extra}


@pytest.fixture(scope="module")
def seg2d(tmp_path_factory):
    """A tiny 2D U-Net (batch norm: per-pixel at prediction, so tiles can be compared) and its package."""
    from napari_bioflow.engine.export.exporter import export_model

    out = tmp_path_factory.mktemp("seg2d")
    raw, lab = (tifffile.imread(p) for p in bbbc_pairs()[0])
    ckpt = _train(
        out,
        _train_cfg(
            data={"patch_size": [64, 64], "val_split": 0.25},
            model={"options": {**TINY_MODEL, "norm": "batch"}},
        ),
        [(raw[:128, :128], (lab[:128, :128] > 0).astype(np.uint8))],
    )
    image = out / "image.tif"
    tifffile.imwrite(image, tifffile.imread(bbbc_pairs()[1][0])[:128, :128])
    result = export_model(
        ckpt, out / "seg2d.zip", authors=AUTHOR, cite=["U-Net 10.1007/978-3-319-24574-4_28"], input_image=image
    )
    return ckpt, result, image


def _rdf(package: Path) -> dict:
    with zipfile.ZipFile(package) as z:
        return yaml.safe_load(z.read("rdf.yaml"))


def _roundtrip(ckpt: Path, package: Path, image: np.ndarray, atol: float = 1e-5) -> np.ndarray:
    from napari_bioflow.engine.predict.inference import predict_array
    from napari_bioflow.engine.train.checkpoint import load_model

    a, b = predict_array(load_model(ckpt), image), predict_array(load_model(package), image)
    assert a.shape == b.shape
    np.testing.assert_allclose(b, a, atol=atol)
    return a


def test_2d_segmentation_package_describes_the_checkpoint(seg2d):
    from napari_bioflow.engine.train.checkpoint import read_checkpoint

    ckpt, result, _ = seg2d
    assert result.path.is_file() and result.converted == ["pytorch_state_dict", "torchscript", "onnx"]
    assert result.failed == {} and result.test.count("passed") == 3
    rdf = _rdf(result.path)
    assert rdf["format_version"] == "0.5.12" and rdf["authors"] == [{"name": "Test Author"}]
    assert rdf["cite"][0] == {"text": "U-Net", "doi": "10.1007/978-3-319-24574-4_28"}
    inp, out = rdf["inputs"][0], rdf["outputs"][0]
    assert [a.get("id", a["type"]) for a in inp["axes"]] == ["batch", "channel", "y", "x"]
    assert inp["axes"][2]["size"]["step"] == 2  # the tiny U-Net's size divisor
    norm = read_checkpoint(ckpt)["normalization"]
    pre = {p["id"]: p["kwargs"] for p in inp["preprocessing"]}
    assert pre["fixed_zero_mean_unit_variance"]["mean"] == pytest.approx(norm["offset"])
    assert pre["fixed_zero_mean_unit_variance"]["std"] == pytest.approx(norm["scale"])
    assert out["id"] == "probabilities" and out["axes"][2]["halo"] == 2  # overlap 0.0625 of a 64 px tile, halved
    assert set(rdf["weights"]) == {"pytorch_state_dict", "torchscript", "onnx"}
    with zipfile.ZipFile(result.path) as z:
        names = set(z.namelist())
        assert {"README.md", "cover.png", "training_config.yaml", "test_input.npy", "test_output.npy"} <= names
        assert "## Validation" in z.read("README.md").decode() and "train_log.csv" in names
        state = json.loads(z.read("bioflow_checkpoint.json"))
    assert state["model"]["name"] == "unet" and state["config"]["workflow"] == "semantic_segmentation"
    from napari_bioflow.engine.train.checkpoint_info import checkpoint_info

    info = checkpoint_info(result.path)  # what the Predict dock shows for a package, read without its weights
    assert info is not None and info.workflow.name == "semantic_segmentation" and info.ndim == 2
    assert info.config == state["config"]


def test_2d_segmentation_roundtrip_predicts_as_the_checkpoint(seg2d, tmp_path):
    ckpt, result, image = seg2d
    prob = _roundtrip(ckpt, result.path, tifffile.imread(image))
    assert prob.shape == (2, 128, 128)
    from napari_bioflow.engine.train.checkpoint import read_weights

    weights, name = read_weights(result.path)  # model.start_from reads a package as a checkpoint
    assert name == "unet" and set(weights) == set(read_weights(ckpt)[0])


def test_bioimageio_core_predicts_the_package_as_napari_bioflow(seg2d):
    """The cross-check: bioimageio.core's own prediction (each weight format, whole and tiled by its blocks with the
    package's halo) against napari-bioflow's prediction of the same real image."""
    from bioimageio.core import create_prediction_pipeline, predict
    from bioimageio.spec import ValidationContext, load_model_description

    from napari_bioflow.engine.predict.inference import predict_array
    from napari_bioflow.engine.train.checkpoint import load_model

    ckpt, result, image = seg2d
    raw = tifffile.imread(image)
    ours = predict_array(load_model(ckpt), raw)
    inner = (slice(None), slice(16, -16), slice(16, -16))  # away from the border, which bioimageio.core pads
    with ValidationContext(perform_io_checks=False):
        descr = load_model_description(result.path)
        for fmt in result.converted:
            pipeline = create_prediction_pipeline(descr, weight_format=fmt, devices=["cpu"])
            whole = predict(model=pipeline, inputs={"raw": raw[None, None].astype(np.float32)})
            whole = np.asarray(whole.members["probabilities"].data)[0]
            np.testing.assert_allclose(whole[inner], ours[inner], atol=1e-4, err_msg=fmt)
            tiled = predict(model=pipeline, inputs={"raw": raw[None, None].astype(np.float32)}, blocksize_parameter=29)
            tiled = np.asarray(tiled.members["probabilities"].data)[0]  # 64 px blocks
            assert tiled.shape == ours.shape
            assert np.abs(tiled[inner] - ours[inner]).mean() < 0.01, fmt
            assert (tiled.argmax(0) == ours.argmax(0)).mean() > 0.99, fmt


def test_3d_segmentation_roundtrip(tmp_path):
    from napari_bioflow.engine.export.exporter import export_model

    vol = tifffile.imread(NUCLEI / "train" / "raw" / "nuclei_train.tif")[:16, :64, :64]
    lab = (tifffile.imread(NUCLEI / "train" / "label" / "nuclei_train.tif")[:16, :64, :64] > 0).astype(np.uint8)
    ckpt = _train(
        tmp_path,
        _train_cfg(ndim=3, data={"patch_size": [16, 32, 32], "val_split": 0.25}, model={"options": TINY_MODEL}),
        [(vol, lab)],
    )
    tifffile.imwrite(tmp_path / "vol.tif", vol)
    result = export_model(ckpt, tmp_path / "seg3d.zip", authors=AUTHOR, input_image=tmp_path / "vol.tif")
    assert result.test.count("passed") == len(result.converted) >= 2
    axes = [a.get("id", a["type"]) for a in _rdf(result.path)["inputs"][0]["axes"]]
    assert axes == ["batch", "channel", "z", "y", "x"]
    assert _roundtrip(ckpt, result.path, vol).shape == (2, 16, 64, 64)


def test_image_to_image_roundtrip_maps_back_to_intensities(tmp_path):
    from napari_bioflow.engine.export.exporter import export_model
    from napari_bioflow.engine.train.checkpoint import read_checkpoint

    frames = tifffile.imread(TIMELAPSE)[:2, 100:260, 100:260]
    ckpt = _train(
        tmp_path,
        _train_cfg(
            workflow="image_to_image", data={"patch_size": [64, 64], "val_split": 0.25}, model={"options": TINY_MODEL}
        ),
        [(frames[0], frames[1])],
    )
    tifffile.imwrite(tmp_path / "frame.tif", frames[0])
    result = export_model(ckpt, tmp_path / "i2i.zip", authors=AUTHOR, input_image=tmp_path / "frame.tif")
    out = _rdf(result.path)["outputs"][0]
    target = read_checkpoint(ckpt)["workflow_state"]["target_normalization"]
    post = out["postprocessing"][0]
    assert out["id"] == "image" and post["id"] == "scale_linear"
    assert post["kwargs"]["gain"] == pytest.approx(target["scale"])
    assert post["kwargs"]["offset"] == pytest.approx(target["offset"])
    with zipfile.ZipFile(result.path) as z:  # the test output is in the targets' intensities
        import io

        expected = np.load(io.BytesIO(z.read("test_output.npy")))
    assert expected.max() > 10  # uint8 frames: intensities, not the normalized 0-1 scale
    _roundtrip(ckpt, result.path, frames[0])


def test_classifier_roundtrip(tmp_path):
    from napari_bioflow.engine.export.exporter import export_model
    from napari_bioflow.engine.predict.classification_results import classify_array
    from napari_bioflow.engine.train.checkpoint import load_model

    ckpt = _train(
        tmp_path,
        _train_cfg(
            workflow="classification",
            data={"train_raw": str(CLASSES / "train"), "patch_size": [32, 32], "val_split": 0.25},
            model={"name": "simple_cnn", "options": {"feature_maps": [8, 16]}},
        ),
        None,
    )
    result = export_model(ckpt, tmp_path / "cls.zip", authors=AUTHOR)
    rdf = _rdf(result.path)
    assert [a["type"] for a in rdf["outputs"][0]["axes"]] == ["batch", "channel"]
    assert len(rdf["outputs"][0]["axes"][1]["channel_names"]) == 4
    assert rdf["inputs"][0]["axes"][2]["size"] == 32  # the patch size: napari-bioflow fits images to it first
    image = next((CLASSES / "test").rglob("*.png"))
    from napari_bioflow.engine.data.io import open_image

    arr = np.asarray(open_image(image))
    a, b = classify_array(load_model(ckpt), arr), classify_array(load_model(result.path), arr)
    np.testing.assert_allclose(b, a, atol=1e-6)


def _foreign(package: Path, out: Path, drop=("pytorch_state_dict",)) -> Path:
    """The package as another tool would ship it: no napari-bioflow section, without the weights `drop`."""
    with zipfile.ZipFile(package) as src, zipfile.ZipFile(out, "w") as dst:
        for item in src.namelist():
            data = src.read(item)
            if item == "rdf.yaml":
                rdf = yaml.safe_load(data)
                rdf["config"].pop("napari_bioflow")
                for fmt in drop:
                    rdf["weights"].pop(fmt)
                for entry in rdf["weights"].values():
                    if entry.get("parent") in drop:
                        entry.pop("parent")
                data = yaml.safe_dump(rdf).encode()
            dst.writestr(item, data)
    return out


def test_a_package_of_another_tool_predicts_through_its_torchscript_or_onnx(seg2d, tmp_path):
    """No napari-bioflow section, no PyTorch state dict: prediction only, through bioimageio.core with the
    package's own preprocessing, tiled by napari-bioflow (an image not a multiple of the step is padded)."""
    from napari_bioflow.engine.predict.inference import predict_array
    from napari_bioflow.engine.train.checkpoint import load_model

    ckpt, result, image = seg2d
    raw = tifffile.imread(image)[:100, :126]
    ours = predict_array(load_model(ckpt), raw)
    for drop in (("pytorch_state_dict",), ("pytorch_state_dict", "torchscript")):  # torchscript, then onnx
        loaded = load_model(_foreign(result.path, tmp_path / f"{len(drop)}.zip", drop))
        assert loaded.workflow.target_is_image and loaded.config.data.target_channels == 2
        theirs = predict_array(loaded, raw)
        assert theirs.shape == ours.shape == (2, 100, 126)
        inner = (slice(None), slice(16, -16), slice(16, -16))  # bioimageio.core pads the border by the halo
        np.testing.assert_allclose(theirs[inner], ours[inner], atol=1e-4)
    from napari_bioflow.engine.train.checkpoint_info import checkpoint_info, checkpoint_ndim

    assert checkpoint_info(tmp_path / "1.zip") is None  # another tool's package: no napari-bioflow config to show
    assert checkpoint_ndim(tmp_path / "1.zip") == checkpoint_ndim(result.path) == 2  # its input's space axes
    # the Batch dock's tile size reaches a foreign package's run (its set-up reads the package's axes)
    from napari_bioflow.engine.batch import BatchRequest, BatchSummary
    from napari_bioflow.widgets.batch_form import make_batch_run

    folder = tmp_path / "in"
    folder.mkdir()
    tifffile.imwrite(folder / "a.tif", raw)
    request = BatchRequest(checkpoint=tmp_path / "1.zip", input_dir=folder, output_dir=tmp_path / "out", device="cpu")
    run = make_batch_run(request, 64)
    assert list(run.cfg.predict.tile_size) == [64, 64]
    reports = list(run.run())
    summary = reports[-1]
    assert isinstance(summary, BatchSummary) and summary.done == ["a.tif"] and not summary.failed
    only_state = _foreign(result.path, tmp_path / "state.zip", ("torchscript", "onnx"))
    with pytest.raises(InputError, match="holds neither TorchScript nor ONNX weights"):
        load_model(only_state)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"authors": []}, "needs at least one author"),
        ({"licence": "not a licence"}, "is not an SPDX licence id"),
        ({"cite": ["just some text"]}, "needs a DOI"),
        ({"name": "a/b"}, "may hold only"),
        ({"formats": ["keras"]}, "Weight formats must be among"),
    ],
)
def test_export_refusals_are_one_sentence(seg2d, tmp_path, kwargs, words):
    from napari_bioflow.engine.export.exporter import export_model

    ckpt = seg2d[0]
    with pytest.raises(InputError, match=words):
        export_model(ckpt, tmp_path / "m.zip", **{"authors": AUTHOR, **kwargs})
    assert not (tmp_path / "m.zip").exists()


def test_export_never_overwrites_and_foreign_packages_are_refused_for_training(seg2d, tmp_path):
    from napari_bioflow.engine.export.exporter import export_model
    from napari_bioflow.engine.train.checkpoint import read_weights

    ckpt, result, _ = seg2d
    before = result.path.read_bytes()
    with pytest.raises(InputError, match="exists already"):
        export_model(ckpt, result.path, authors=AUTHOR)
    assert result.path.read_bytes() == before
    foreign = _foreign(result.path, tmp_path / "foreign.zip")
    with pytest.raises(InputError, match="was not exported by napari-bioflow"):
        read_weights(foreign)
    (tmp_path / "broken.zip").write_text("not a zip")
    with pytest.raises(InputError, match="not a readable zip file"):
        read_weights(tmp_path / "broken.zip")


def test_crappify_pretraining_exports_its_restoration_network(tmp_path):
    from napari_bioflow.engine.export.exporter import export_model

    frame = tifffile.imread(TIMELAPSE)[0, 100:260, 100:260]
    ckpt = _train(
        tmp_path,
        _train_cfg(
            workflow="self_supervised", data={"patch_size": [64, 64], "val_split": 0.25}, model={"options": TINY_MODEL}
        ),
        [(frame, None)],
    )
    tifffile.imwrite(tmp_path / "frame.tif", frame)
    result = export_model(ckpt, tmp_path / "crappify.zip", authors=AUTHOR, input_image=tmp_path / "frame.tif")
    rdf = _rdf(result.path)
    assert rdf["outputs"][0]["id"] == "image" and rdf["outputs"][0]["postprocessing"][0]["id"] == "scale_linear"
    _roundtrip(ckpt, result.path, frame)


def test_a_workflow_that_predicts_by_more_than_its_network_is_refused():
    from napari_bioflow.engine.export.exporter import _activation
    from napari_bioflow.engine.workflows.base import get_workflow

    with pytest.raises(InputError, match="cannot describe; it is not exported"):
        _activation(get_workflow("self_supervised", "masking"))
    assert _activation(get_workflow("semantic_segmentation")) == "softmax"
    assert _activation(get_workflow("image_to_image")) == "none"


def test_a_package_starts_a_fine_tuning(seg2d, tmp_path):
    """model.start_from: a package napari-bioflow exported loads as its checkpoint would (every tensor)."""
    from napari_bioflow.config import RunConfig
    from napari_bioflow.engine.data.sources import make_sample
    from napari_bioflow.engine.train import StartReport, Trainer

    ckpt, result, _ = seg2d
    raw, lab = (tifffile.imread(p)[:128, :128] for p in bbbc_pairs()[2])
    cfg = RunConfig.from_dict(
        {
            "name": "finetune",
            "output_dir": str(tmp_path),
            "device": "cpu",
            "data": {"patch_size": [64, 64], "val_split": 0.25},
            "model": {"options": {**TINY_MODEL, "norm": "batch"}, "start_from": str(result.path)},
            "train": {"epochs": 1, "steps_per_epoch": 1, "batch_size": 2},
        }
    )
    trainer = Trainer(cfg, train=[make_sample(raw, "raw", cfg, label=(lab > 0).astype(np.uint8))])
    reports = list(trainer.run())
    (note,) = [n for r in reports if isinstance(r, StartReport) for n in r.notes if n.startswith("Started from")]
    assert note.startswith(f"Started from {result.path}: ") and " 0 initialised" in note
