"""Bad input (the issue's list) through the Train and Predict docks, with real viewers (under Xvfb): each case gives
exactly one error notification that names the layer or file and the problem, and nothing is written (the output
folder does not appear; the data folders and whatever stands in the way stay as they were).

Also: 0/255 masks in a Labels layer train with an info note; the Predict dock's fields follow the checkpoint; a
config saved by a run trained on layers repeats the run from the command line. Tiny layers, one short epoch."""

from __future__ import annotations

import re
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import tifffile
import torch
import yaml
from helpers import BBBC, NUCLEI, TINY_MODEL, crop_folders, dock, headless_checkpoint, read_csv, shown, tree

from napari_bioflow.engine.train.checkpoint import read_checkpoint
from napari_bioflow.widgets.predict import PredictWidget
from napari_bioflow.widgets.train import TrainWidget


@pytest.fixture(scope="module")
def crop():
    name = "A9_A9_p10d.tif"
    return (
        tifffile.imread(BBBC / "train" / "raw" / name)[:128, :128],
        tifffile.imread(BBBC / "train" / "label" / name)[:128, :128],
    )


@pytest.fixture(scope="module")
def volume():
    name = "nuclei_train.tif"
    return (
        tifffile.imread(NUCLEI / "train" / "raw" / name)[:16, :64, :64],
        tifffile.imread(NUCLEI / "train" / "label" / name)[:16, :64, :64],
    )


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, crop):
    """A tiny 2D, 1-channel segmentation model trained headless."""
    return headless_checkpoint(tmp_path_factory.mktemp("ckpt"), *crop)


def train_dock(viewer, out: Path, image=None, labels=None) -> TrainWidget:
    w = dock(viewer, TrainWidget(viewer))
    if image is not None:
        w.pairs.pairs[0].image_layer.value = image
    if labels is not None:
        w.pairs.pairs[0].labels_layer.value = labels
    f = w.form
    w.patch_yx.value = 64
    w.feature_maps.value = ", ".join(map(str, TINY_MODEL["feature_maps"]))
    f["train.epochs"].value, f["train.steps_per_epoch"].value, f["train.batch_size"].value = 1, 1, 2
    f["output_dir"].value, f["device"].value = str(out), "cpu"
    w.preview_ms.value = 0  # no preview: these tests are about the input
    return w


def predict_dock(viewer, out: Path, checkpoint: Path, image) -> PredictWidget:
    w = dock(viewer, PredictWidget(viewer))
    w.model_source.value = "checkpoint file"
    w.checkpoint.value = checkpoint
    w.image.value = image
    w.form["output_dir"].value, w.form["device"].value = out, "cpu"
    return w


def folders_dock(viewer, out: Path, raw_dir: Path, label_dir: Path) -> TrainWidget:
    w = train_dock(viewer, out)
    w.source.value = "folders"
    w.form["data.train_raw"].value, w.form["data.train_label"].value = raw_dir, label_dir
    return w


def with_nan(image: np.ndarray, value=np.nan) -> np.ndarray:
    bad = image.astype(np.float32)
    bad[10, 20] = value
    return bad


# Each case sets up a viewer and a dock; returns (dock, output folder, folders that must stay as they are, the
# strings the one error must hold).


def case_count_mismatch(viewer, tmp, crop, volume, ckpt):
    raw_dir, label_dir = crop_folders(tmp / "data", n=3, size=64)
    sorted(label_dir.iterdir())[-1].unlink()
    return (
        folders_dock(viewer, tmp / "runs", raw_dir, label_dir),
        tmp / "runs",
        [tmp / "data"],
        [str(raw_dir), str(label_dir), "holds 3 image(s)", "holds 2"],
    )


def case_empty_folder(viewer, tmp, crop, volume, ckpt):
    raw_dir, label_dir = crop_folders(tmp / "data", n=2, size=64)
    for p in raw_dir.iterdir():
        p.unlink()
    return (
        folders_dock(viewer, tmp / "runs", raw_dir, label_dir),
        tmp / "runs",
        [tmp / "data"],
        [str(raw_dir), "holds no TIFF, PNG or zarr image"],
    )


def case_unreadable_file(viewer, tmp, crop, volume, ckpt):
    raw_dir, label_dir = crop_folders(tmp / "data", n=2, size=64)
    bad = sorted(raw_dir.iterdir())[1]
    bad.write_text("this is a text file, not an image\n")
    return (
        folders_dock(viewer, tmp / "runs", raw_dir, label_dir),
        tmp / "runs",
        [tmp / "data"],
        [str(bad), "cannot be read as an image"],
    )


def case_nan_layer(viewer, tmp, crop, volume, ckpt):
    image = viewer.add_image(with_nan(crop[0]), name="nuclei")
    labels = viewer.add_labels(crop[1], name="nuclei mask")
    return (
        train_dock(viewer, tmp / "runs", image, labels),
        tmp / "runs",
        [],
        ["image layer 'nuclei'", "NaN or infinite"],
    )


def case_inf_layer(viewer, tmp, crop, volume, ckpt):
    image = viewer.add_image(with_nan(crop[0], -np.inf), name="nuclei")
    labels = viewer.add_labels(crop[1], name="nuclei mask")
    return (
        train_dock(viewer, tmp / "runs", image, labels),
        tmp / "runs",
        [],
        ["image layer 'nuclei'", "NaN or infinite"],
    )


def case_patch_larger_than_the_layer(viewer, tmp, crop, volume, ckpt):
    image = viewer.add_image(crop[0], name="nuclei")
    labels = viewer.add_labels(crop[1], name="nuclei mask")
    w = train_dock(viewer, tmp / "runs", image, labels)
    w.patch_yx.value = 192
    w.form["data.val_split"].value = 0.0
    return w, tmp / "runs", [], ["image layer 'nuclei'", "192x192 is larger than", "128x128"]


def case_3d_layer_for_a_2d_config(viewer, tmp, crop, volume, ckpt):
    image = viewer.add_image(volume[0], name="volume")
    labels = viewer.add_labels(volume[1], name="volume mask")
    w = train_dock(viewer, tmp / "runs", image, labels)
    assert w.form["ndim"].value == 3  # followed the layer; the user sets 2D
    w.form["ndim"].value = 2
    return w, tmp / "runs", [], ["image layer 'volume'", "16x64x64", "3D data, but the dock is set to 2D"]


def case_2d_layer_for_a_3d_config(viewer, tmp, crop, volume, ckpt):
    image = viewer.add_image(crop[0], name="nuclei")
    labels = viewer.add_labels(crop[1], name="nuclei mask")
    w = train_dock(viewer, tmp / "runs", image, labels)
    w.form["ndim"].value = 3
    w.patch_z.value = 4
    return w, tmp / "runs", [], ["image layer 'nuclei'", "2D data, but the dock is set to 3D"]


def case_wrong_channels(viewer, tmp, crop, volume, ckpt):
    image = viewer.add_image(np.stack([crop[0], crop[0] // 2]), name="two channels")
    labels = viewer.add_labels(crop[1], name="nuclei mask")
    w = train_dock(viewer, tmp / "runs", image, labels)
    assert w.form["data.in_channels"].value == 2  # followed the layer; the user sets 1
    w.form["data.in_channels"].value = 1
    return w, tmp / "runs", [], ["image layer 'two channels'", "2 channel(s)", "expects 1"]


def case_train_output_not_writable(viewer, tmp, crop, volume, ckpt):
    blocker = tmp / "a_file"
    blocker.write_text("a regular file, so nothing can be created below it")
    image = viewer.add_image(crop[0], name="nuclei")
    labels = viewer.add_labels(crop[1], name="nuclei mask")
    return (
        train_dock(viewer, blocker / "runs", image, labels),
        blocker / "runs",
        [tmp],
        [str(blocker / "runs"), "not writable"],
    )


def case_predict_output_not_writable(viewer, tmp, crop, volume, ckpt):
    blocker = tmp / "a_file"
    blocker.write_text("a regular file, so nothing can be created below it")
    image = viewer.add_image(crop[0], name="nuclei")
    return (
        predict_dock(viewer, blocker / "pred", ckpt, image),
        blocker / "pred",
        [tmp],
        [str(blocker / "pred"), "not writable"],
    )


def case_predict_nan_layer(viewer, tmp, crop, volume, ckpt):
    image = viewer.add_image(with_nan(crop[0]), name="nuclei")
    return (
        predict_dock(viewer, tmp / "pred", ckpt, image),
        tmp / "pred",
        [],
        ["image layer 'nuclei'", "NaN or infinite"],
    )


def case_predict_nan_dask_layer(viewer, tmp, crop, volume, ckpt):
    image = viewer.add_image(da.from_array(with_nan(crop[0], np.inf), chunks=64), name="lazy")
    return predict_dock(viewer, tmp / "pred", ckpt, image), tmp / "pred", [], ["image layer 'lazy'", "NaN or infinite"]


def case_predict_other_channels(viewer, tmp, crop, volume, ckpt):
    # the Predict dock follows the checkpoint's workflow (it has no workflow to expect), so a checkpoint that does
    # not fit the image is one trained on other channels
    image = viewer.add_image(np.stack([crop[0], crop[0] // 2]), name="two channels")
    return (
        predict_dock(viewer, tmp / "pred", ckpt, image),
        tmp / "pred",
        [],
        [ckpt.name, "expects 1 input channel(s)", "'two channels' has 2"],
    )


def case_predict_3d_layer_for_a_2d_checkpoint(viewer, tmp, crop, volume, ckpt):
    image = viewer.add_image(volume[0], name="volume")
    return (
        predict_dock(viewer, tmp / "pred", ckpt, image),
        tmp / "pred",
        [],
        ["image layer 'volume'", "16x64x64", "3D data"],
    )


CASES = {name[len("case_") :]: fn for name, fn in globals().items() if name.startswith("case_")}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gives_one_error_and_writes_nothing(
    case, make_napari_viewer, wait_idle, messages, tmp_path, crop, volume, checkpoint
):
    viewer = make_napari_viewer()
    widget, out, kept, expected = CASES[case](viewer, tmp_path, crop, volume, checkpoint)
    assert not out.exists()
    before = {folder: tree(folder) for folder in kept}
    layers = len(viewer.layers)
    widget.start()
    wait_idle(widget, 30)
    errors = messages["error"]
    assert len(errors) == 1, errors
    for text in expected:
        assert text in errors[0], (text, errors[0])
    assert "\n" not in errors[0] and errors[0].count(". ") == 0  # one sentence
    assert not widget.status.value.startswith("failed")  # a message, not a crash
    assert not out.exists()
    for folder, files in before.items():
        assert tree(folder) == files, folder
    assert len(viewer.layers) == layers  # no output layer either
    if (tmp_path / "a_file").exists():
        assert (tmp_path / "a_file").read_text().startswith("a regular file")


def test_0_255_masks_train_with_a_note(make_napari_viewer, wait_idle, messages, tmp_path, crop):
    viewer = make_napari_viewer()
    image = viewer.add_image(crop[0], name="nuclei")
    labels = viewer.add_labels(((crop[1] > 0) * 255).astype(np.uint8), name="mask")
    train = train_dock(viewer, tmp_path / "runs", image, labels)
    assert train.form["n_classes"].value == 2  # 0/255 is binary
    train.start()
    wait_idle(train)
    assert messages["error"] == []
    notes = [m for m in messages["info"] if "0/255" in m]
    assert len(notes) == 1 and "labels layer 'mask'" in notes[0] and "0 = background, 1 = foreground" in notes[0]
    assert train.result.reason == "finished" and train.result.checkpoint.is_file()


def forge(checkpoint: Path, dest: Path, **config) -> Path:
    ckpt = read_checkpoint(checkpoint)
    for key, value in config.items():
        section, _, field = key.rpartition(".")
        (ckpt["config"][section] if section else ckpt["config"])[field] = value
    torch.save(ckpt, dest)
    return dest


def test_predict_fields_follow_the_checkpoint(make_napari_viewer, tmp_path, crop, checkpoint):
    """The 3D label filters show for 3D segmentation checkpoints only; TTA for all but the masked autoencoder.
    Only the checkpoint's config is read for this, so edited copies of one checkpoint stand for the others."""
    viewer = make_napari_viewer()
    viewer.add_image(crop[0], name="nuclei")
    w = predict_dock(viewer, tmp_path / "pred", checkpoint, viewer.layers["nuclei"])
    filters = (w.form["predict.z_filter"], w.form["predict.yz_filter"])
    tta = w.form["predict.tta"]
    assert not any(shown(f) for f in filters) and shown(tta)  # 2D segmentation
    w.checkpoint.value = forge(checkpoint, tmp_path / "seg3d.pth", ndim=3)
    assert all(shown(f) for f in filters) and shown(tta)
    w.checkpoint.value = forge(checkpoint, tmp_path / "i2i3d.pth", ndim=3, workflow="image_to_image")
    assert not any(shown(f) for f in filters) and shown(tta)
    w.checkpoint.value = forge(
        checkpoint, tmp_path / "mae.pth", workflow="self_supervised", **{"self_supervised.pretext": "masking"}
    )
    assert not any(shown(f) for f in filters) and not shown(tta)
    w.checkpoint.value = forge(
        checkpoint, tmp_path / "crappify.pth", workflow="self_supervised", **{"self_supervised.pretext": "crappify"}
    )
    assert not any(shown(f) for f in filters) and shown(tta)
    w.checkpoint.value = tmp_path / "missing.pth"  # unknown: nothing that may not apply
    assert not any(shown(f) for f in filters)


def test_a_run_on_layers_is_repeated_from_its_saved_config(
    make_napari_viewer, wait_idle, messages, tmp_path, crop, capsys
):
    """The dock writes the layers it trains on into the run's folder and its config reads them, so the command line
    repeats the run: same data (same shapes, same files order), same seed, so the same first-epoch loss."""
    from napari_bioflow.cli import main

    other = tifffile.imread(BBBC / "train" / "raw" / "A9_A9_p10d.tif")[128:256, :128]
    other_label = tifffile.imread(BBBC / "train" / "label" / "A9_A9_p10d.tif")[128:256, :128]
    viewer = make_napari_viewer()
    a, b = viewer.add_image(crop[0], name="nuclei a"), viewer.add_image(other, name="nuclei b")
    a_mask, b_mask = viewer.add_labels(crop[1], name="a mask"), viewer.add_labels(other_label, name="b mask")
    out = tmp_path / "runs"
    train = train_dock(viewer, out, a, a_mask)
    train.pairs.add_button.changed()
    train.pairs.pairs[1].image_layer.value, train.pairs.pairs[1].labels_layer.value = b, b_mask
    train.validation.value = "layers"
    train.val_pair.image_layer.value, train.val_pair.labels_layer.value = b, b_mask
    train.form["train.steps_per_epoch"].value = 2
    train.start()
    wait_idle(train)
    assert messages["error"] == [] and train.result.reason == "finished"
    root, run = train.result.experiment_dir, train.trainer.experiment.run_name
    saved = root / "config_files" / f"{run}.yaml"
    data = yaml.safe_load(saved.read_text())["data"]
    folder = root / "results" / run / "data"
    assert data["train_raw"] == str(folder / "train_raw") and data["train_label"] == str(folder / "train_label")
    assert data["val_raw"] == str(folder / "val_raw") and data["val_label"] == str(folder / "val_label")
    raws = sorted((folder / "train_raw").iterdir())
    assert [p.name for p in raws] == ["000_nuclei_a.tif", "001_nuclei_b.tif"]
    assert [p.name for p in sorted((folder / "train_label").iterdir())] == ["000_nuclei_a.tif", "001_nuclei_b.tif"]
    np.testing.assert_array_equal(tifffile.imread(raws[0]), crop[0])
    np.testing.assert_array_equal(tifffile.imread(folder / "train_label" / "001_nuclei_b.tif"), other_label)
    assert not any(p.suffix == ".tif" for p in tmp_path.iterdir())  # nothing next to anything else

    capsys.readouterr()
    assert main(["train", str(saved)]) == 0
    printed = capsys.readouterr().out
    assert "2 training / 1 validation images" in printed
    repeat = sorted((root / "results").iterdir())[-1].name
    assert repeat != run
    first = read_csv(root / "results" / run / "train_logs" / f"{run}_log.csv")[0]
    again = read_csv(root / "results" / repeat / "train_logs" / f"{repeat}_log.csv")[0]
    assert float(again["train_loss"]) == pytest.approx(float(first["train_loss"]), rel=1e-3)
    assert float(again["val_loss"]) == pytest.approx(float(first["val_loss"]), rel=1e-3)


def test_layers_too_large_to_copy_are_not_saved_and_the_user_is_told(
    make_napari_viewer, wait_idle, messages, tmp_path, crop, monkeypatch
):
    """Layers beyond the copy limit (big dask/zarr layers) are not copied into the run: a warning says that its
    config cannot repeat the run, and training goes on."""
    from napari_bioflow.widgets import jobs
    from napari_bioflow.widgets import train as train_module

    warnings = []
    monkeypatch.setattr(jobs, "SAVE_INPUTS_MAX_BYTES", 1000)
    monkeypatch.setattr(train_module, "show_warning", warnings.append)
    viewer = make_napari_viewer()
    a, a_mask = viewer.add_image(crop[0], name="nuclei a"), viewer.add_labels(crop[1], name="a mask")
    train = train_dock(viewer, tmp_path / "runs", a, a_mask)
    train.start()
    wait_idle(train)
    assert messages["error"] == [] and train.result.reason == "finished"
    (warning,) = warnings
    assert "too large to copy into run" in warning and "cannot repeat the run" in warning
    run = train.trainer.experiment
    assert not (run.results / "data").exists()


def test_a_classification_run_on_layers_is_repeated_from_its_saved_config(
    make_napari_viewer, wait_idle, messages, tmp_path, capsys
):
    """Classification from layers: the saved config reads a class-folder tree of the slices trained on."""
    from napari_bioflow.cli import main

    rng = np.random.default_rng(0)
    viewer = make_napari_viewer()
    dark = viewer.add_image(rng.integers(0, 60, (4, 32, 32), dtype=np.uint8), name="dark")
    bright = viewer.add_image(rng.integers(150, 255, (4, 32, 32), dtype=np.uint8), name="bright")
    train = dock(viewer, TrainWidget(viewer))
    f = train.form
    f["workflow"].value = "classification"
    rows = [train.class_layers.rows[0], train.class_layers.add_row()]
    for row, layer in zip(rows, (dark, bright)):
        row.layer.value, row.cls.value, row.slices.value = layer, layer.name, True
    train.patch_yx.value = 32
    f["model.name"].value = "vit"
    train.model_options.value = "embed_dim: 32, depth: 1, num_heads: 2"
    f["train.epochs"].value, f["train.batch_size"].value = 1, 4
    f["output_dir"].value, f["device"].value = str(tmp_path / "runs"), "cpu"
    train.start()
    wait_idle(train, 120)
    assert messages["error"] == [] and train.result.reason == "finished"
    root, run = train.result.experiment_dir, train.trainer.experiment.run_name
    saved = root / "config_files" / f"{run}.yaml"
    cfg = yaml.safe_load(saved.read_text())
    folder = root / "results" / run / "data" / "train_raw"
    assert cfg["data"]["train_raw"] == str(folder) and cfg["class_names"] == ["bright", "dark"]
    assert sorted(p.name for p in folder.iterdir()) == ["bright", "dark"]
    assert len(list((folder / "dark").iterdir())) == len(list((folder / "bright").iterdir())) == 4
    capsys.readouterr()
    assert main(["train", str(saved)]) == 0
    counts = re.search(r"(\d+) training / (\d+) validation images", capsys.readouterr().out)
    assert counts and int(counts[1]) + int(counts[2]) == 8  # the 8 slices


def test_a_lazy_layer_is_scanned_in_a_worker_then_predicted(
    make_napari_viewer, wait_idle, messages, tmp_path, crop, checkpoint
):
    """A dask layer's NaN/inf scan runs off the GUI thread; a clean one goes on to the prediction."""
    viewer = make_napari_viewer()
    image = viewer.add_image(da.from_array(crop[0].astype(np.float32), chunks=64), name="lazy")
    predict = predict_dock(viewer, tmp_path / "pred", checkpoint, image)
    predict.start()
    assert predict.running and "lazy labels" not in viewer.layers  # still checking
    wait_idle(predict)
    assert messages["error"] == [] and predict.result is not None
    assert viewer.layers["lazy labels"].data.shape == (128, 128)
    assert (predict.experiment.results / "per_image").is_dir() and predict.predict_button.enabled
