"""Reliability of the inputs (issue 9): raw and label files pair by name in train, predict and batch; a zarr group
is read by its OME-Zarr metadata or a path inside the store, never by its alphabetically first array; two inputs
with one stem get distinct outputs; a classifier refuses a labels folder; damaged PNG and TIFF files are named in
plain words; mixed data types and uniform training sets are noted. Real crops of BBBC007, written as TIFF, PNG and
zarr in each test; the CLI through `main`, one stderr line and exit 2 on refusal, nothing written."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from helpers import BBBC, headless_checkpoint, read_csv, tiny_config, tree, write_image

from napari_bioflow.cli import main
from napari_bioflow.engine.data.io import open_image
from napari_bioflow.engine.data.pairing import folder_pairs
from napari_bioflow.engine.data.sources import build_dataset
from napari_bioflow.engine.errors import InputError

DATA = Path(__file__).parents[1] / "data"


def crop(index: int, size: int, origin: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """A real BBBC007 (raw, binary mask) crop: image `index` of the training set, `size` x `size` pixels."""
    raws = sorted((BBBC / "train" / "raw").glob("*.tif"))
    raw = tifffile.imread(raws[index])[origin : origin + size, origin : origin + size]
    label = tifffile.imread(BBBC / "train" / "label" / raws[index].name)[origin : origin + size, origin : origin + size]
    return np.ascontiguousarray(raw), (label > 0).astype(np.uint8)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny 2D segmentation checkpoint (patch 64) trained one step on a real crop."""
    raw, label = crop(0, 160)
    return headless_checkpoint(tmp_path_factory.mktemp("ckpt"), raw, label)


def cli(capsys, argv) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def refused(capsys, argv, watched: list[Path], *names) -> str:
    """Exit 2 with exactly one stderr line naming `names`; no file under `watched` changed (or appeared)."""
    before = [tree(w) for w in watched]
    existed = [w.exists() for w in watched]
    code, out, err = cli(capsys, argv)
    assert code == 2, (out, err)
    assert err.startswith("napari-bioflow: error: ") and err.count("\n") == 1, err
    for n in names:
        assert str(n) in err, (n, err)
    assert [tree(w) for w in watched] == before
    assert [w.exists() for w in watched] == existed
    return err


# ----------------------------------------------------------------------------------------------- 1. pairing


@pytest.fixture
def numbered(tmp_path):
    """raw img_1, img_2, img_10 and labels img_01, img_02, img_10, each image of its own size (64, 72, 80): sorted
    position pairs img_10 with img_02's labels, whose shape differs."""
    raw_dir, label_dir = tmp_path / "data/raw", tmp_path / "data/label"
    expected = {}
    for i, (number, size) in enumerate(((1, 64), (2, 72), (10, 80))):
        raw, label = crop(i, size)
        write_image(raw_dir / f"img_{number}.tif", raw)
        write_image(label_dir / f"img_{number:02d}.tif", label)
        expected[f"img_{number}.tif"] = (f"img_{number:02d}.tif", label)
    return raw_dir, label_dir, expected


def test_pairing_is_by_name_in_train(tmp_path, numbered):
    raw_dir, label_dir, expected = numbered
    assert [(r.name, lab.name) for r, lab in folder_pairs(raw_dir, label_dir, "training")] == [
        ("img_1.tif", "img_01.tif"),
        ("img_10.tif", "img_10.tif"),
        ("img_2.tif", "img_02.tif"),
    ]
    cfg = tiny_config(tmp_path / "runs", raw_dir, label_dir, data={"val_split": 0.0})
    dataset = build_dataset(cfg)
    assert len(dataset.train) == 3
    for s in dataset.train:
        label_name, label = expected[Path(s.name).name]
        assert Path(s.label_name).name == label_name
        np.testing.assert_array_equal(s.read_label((slice(None), slice(None))), label)


def test_pairing_is_by_name_in_predict_and_batch(tmp_path, capsys, numbered, checkpoint):
    raw_dir, label_dir, _ = numbered
    before = tree(tmp_path / "data")
    out = tmp_path / "pred"
    code, _, err = cli(
        capsys, ["predict", "--checkpoint", checkpoint, "--input", raw_dir, "--labels", label_dir, "--output", out]
    )
    assert code == 0, err
    rows = read_csv(next(out.rglob("metrics.csv")))
    assert [r["image"] for r in rows] == ["img_1.tif", "img_10.tif", "img_2.tif", "ALL (pixels pooled)"]
    code, _, err = cli(
        capsys,
        [
            "batch",
            "--checkpoint",
            checkpoint,
            "--input",
            raw_dir,
            "--labels",
            label_dir,
            "--output",
            tmp_path / "batch",
            "--device",
            "cpu",
        ],
    )
    assert code == 0, err
    run_dir = next((tmp_path / "batch").rglob("batch_summary.csv")).parent
    assert [r["status"] for r in read_csv(run_dir / "batch_summary.csv")] == ["done"] * 3
    for stem, label in (("img_1", "img_01.tif"), ("img_2", "img_02.tif"), ("img_10", "img_10.tif")):
        assert Path(json.loads((run_dir / "batch" / "done" / f"{stem}.json").read_text())["label"]).name == label
    assert tree(tmp_path / "data") == before


def test_labels_with_a_common_suffix_pair_by_name(tmp_path):
    raw_dir, label_dir = tmp_path / "raw", tmp_path / "label"
    for i, name in enumerate(("cell_3", "cell_12", "cell_7")):
        raw, label = crop(i, 64)
        write_image(raw_dir / f"{name}.tif", raw)
        write_image(label_dir / f"{name}_mask.png", label)
    assert [(r.name, lab.name) for r, lab in folder_pairs(raw_dir, label_dir, "training")] == [
        ("cell_12.tif", "cell_12_mask.png"),
        ("cell_3.tif", "cell_3_mask.png"),
        ("cell_7.tif", "cell_7_mask.png"),
    ]


@pytest.fixture
def unmatched(tmp_path):
    """raw a_1, a_2, b_1 and labels a_01, a_2, c_1: b_1 has no label and c_1 no raw image."""
    raw_dir, label_dir = tmp_path / "data/raw", tmp_path / "data/label"
    for i, (raw_name, label_name) in enumerate((("a_1", "a_01"), ("a_2", "a_2"), ("b_1", "c_1"))):
        raw, label = crop(i, 64)
        write_image(raw_dir / f"{raw_name}.tif", raw)
        write_image(label_dir / f"{label_name}.tif", label)
    return raw_dir, label_dir


def test_names_that_do_not_match_are_refused_in_train_predict_and_batch(tmp_path, capsys, unmatched, checkpoint):
    raw_dir, label_dir = unmatched
    data, out = tmp_path / "data", tmp_path / "out"
    names = (raw_dir, label_dir, "no label for b_1.tif", "no raw image for c_1.tif")
    config = tiny_config(out, raw_dir, label_dir).save(tmp_path / "c.yaml")
    err = refused(capsys, ["train", config], [data, out], *names)
    assert "do not pair one to one by file name" in err
    refused(
        capsys,
        ["predict", "--checkpoint", checkpoint, "--input", raw_dir, "--labels", label_dir, "--output", out],
        [data, out],
        *names,
    )
    refused(
        capsys,
        ["batch", "--checkpoint", checkpoint, "--input", raw_dir, "--labels", label_dir, "--output", out],
        [data, out],
        *names,
    )
    assert not out.exists()


def test_two_raw_images_with_one_name_are_refused(tmp_path, capsys, unmatched, checkpoint):
    raw_dir, label_dir = unmatched
    (label_dir / "c_1.tif").rename(label_dir / "b_1.tif")
    shutil.copy(raw_dir / "a_1.tif", raw_dir / "a_001.tif")
    out = tmp_path / "out"
    err = refused(
        capsys,
        ["predict", "--checkpoint", checkpoint, "--input", raw_dir, "--labels", label_dir, "--output", out],
        [tmp_path / "data", out],
        "a_001.tif and a_1.tif",
        "share one name",
    )
    assert raw_dir.name in err


# ----------------------------------------------------------------------------------------------- 2. zarr groups


def raw_and_mask_store(path: Path, raw: np.ndarray, mask: np.ndarray, **kwargs) -> Path:
    group = zarr.open_group(str(path), mode="w", **kwargs)
    for name, data in (("raw", raw), ("mask", mask)):
        group.create_array(name, shape=data.shape, dtype=data.dtype)[...] = data
    return path


def test_a_group_of_several_arrays_is_refused_naming_them(tmp_path, capsys, checkpoint):
    raw, mask = crop(0, 64)
    store = raw_and_mask_store(tmp_path / "in" / "sample.zarr", raw, mask)
    with pytest.raises(InputError) as e:
        open_image(store)
    assert "mask, raw" in str(e.value) and f"{store}/mask" in str(e.value)
    out = tmp_path / "out"
    err = refused(
        capsys,
        ["predict", "--checkpoint", checkpoint, "--input", tmp_path / "in", "--output", out],
        [tmp_path / "in", out],
        store,
        "several arrays (mask, raw)",
        "append the array to use to the path",
    )
    assert "multiscales" in err


def test_batch_names_an_ambiguous_group_as_a_failed_file(tmp_path, capsys, checkpoint):
    raw, mask = crop(0, 64)
    store = raw_and_mask_store(tmp_path / "in" / "sample.zarr", raw, mask)
    before = tree(tmp_path / "in")
    code, out, _ = cli(
        capsys,
        [
            "batch",
            "--checkpoint",
            checkpoint,
            "--input",
            tmp_path / "in",
            "--output",
            tmp_path / "out",
            "--device",
            "cpu",
        ],
    )
    assert (
        code == 3 and f"FAILED sample.zarr: {store} is a zarr group with several arrays" in out
    )  # finished, a file failed
    rows = read_csv(next((tmp_path / "out").rglob("batch_summary.csv")))
    assert rows[0]["status"] == "failed" and "several arrays (mask, raw)" in rows[0]["reason"]
    assert str(store) in rows[0]["reason"]
    assert not list((tmp_path / "out").rglob("per_image"))  # the mask was not predicted as if it were the image
    assert tree(tmp_path / "in") == before


def test_a_path_inside_the_store_chooses_the_array(tmp_path, capsys, checkpoint):
    raw, mask = crop(0, 64)
    store = raw_and_mask_store(tmp_path / "sample.zarr", raw, mask, zarr_format=2)
    np.testing.assert_array_equal(open_image(store / "raw")[...], raw)
    # training: raw and labels from one store
    cfg = tiny_config(tmp_path / "runs", store / "raw", store / "mask", data={"val_split": 0.0})
    (sample,) = build_dataset(cfg).train
    np.testing.assert_array_equal(np.asarray(sample.raw)[..., 0], raw)
    np.testing.assert_array_equal(sample.read_label((slice(None), slice(None))), mask)
    # prediction of the array named inside the store
    before = tree(store)
    code, _, err = cli(
        capsys,
        [
            "predict",
            "--checkpoint",
            checkpoint,
            "--input",
            store / "raw",
            "--labels",
            store / "mask",
            "--output",
            tmp_path / "pred",
        ],
    )
    assert code == 0, err
    assert read_csv(next((tmp_path / "pred").rglob("metrics.csv")))[0]["image"] == "sample.zarr/raw"
    assert tree(store) == before


def test_nested_arrays_are_named_not_called_empty(tmp_path):
    raw, _ = crop(0, 64)
    group = zarr.open_group(str(tmp_path / "nested.zarr"), mode="w")
    group.create_group("a").create_array("b", shape=raw.shape, dtype=raw.dtype)[...] = raw
    with pytest.raises(InputError) as e:
        open_image(tmp_path / "nested.zarr")
    msg = str(e.value)
    assert "nested" in msg and f"{tmp_path / 'nested.zarr'}/a/b" in msg and "no array" not in msg
    np.testing.assert_array_equal(open_image(tmp_path / "nested.zarr" / "a" / "b")[...], raw)
    with pytest.raises(InputError, match="holds no array or group a/c; its arrays: a/b"):
        open_image(tmp_path / "nested.zarr" / "a" / "c")


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_ome_zarr_uses_its_full_resolution_by_metadata(tmp_path, zarr_format):
    """Level 0 is `multiscales[0].datasets[0].path` ("full"), not the alphabetically first array ("a_half")."""
    raw, _ = crop(0, 64)
    group = zarr.open_group(str(tmp_path / "img.ome.zarr"), mode="w", zarr_format=zarr_format)
    multiscales = [
        {
            "version": "0.4" if zarr_format == 2 else "0.5",
            "axes": [{"name": "y"}, {"name": "x"}],
            "datasets": [{"path": "full"}, {"path": "a_half"}],
        }
    ]
    if zarr_format == 2:
        group.attrs["multiscales"] = multiscales  # NGFF 0.4: in .zattrs
    else:
        group.attrs["ome"] = {"version": "0.5", "multiscales": multiscales}  # NGFF 0.5: under "ome"
    group.create_array("full", shape=raw.shape, dtype=raw.dtype)[...] = raw
    group.create_array("a_half", shape=(32, 32), dtype=raw.dtype)[...] = raw[::2, ::2]
    got = open_image(tmp_path / "img.ome.zarr")
    assert got.shape == (64, 64)
    np.testing.assert_array_equal(got[...], raw)


def test_a_group_with_one_array_uses_it(tmp_path):
    raw, _ = crop(0, 64)
    group = zarr.open_group(str(tmp_path / "one.zarr"), mode="w")
    group.create_array("image", shape=raw.shape, dtype=raw.dtype)[...] = raw
    np.testing.assert_array_equal(open_image(tmp_path / "one.zarr")[...], raw)


# ----------------------------------------------------------------------------------------------- 7. one stem twice


def test_two_inputs_with_one_stem_get_distinct_outputs_in_predict_as_in_batch(tmp_path, capsys, checkpoint):
    raw_dir = tmp_path / "in"
    write_image(raw_dir / "img.tif", crop(0, 64)[0])
    write_image(raw_dir / "img.png", crop(1, 64)[0])
    before = tree(raw_dir)
    code, _, err = cli(capsys, ["predict", "--checkpoint", checkpoint, "--input", raw_dir, "--output", tmp_path / "p"])
    assert code == 0, err
    predicted = sorted(p.name for p in (tmp_path / "p").rglob("per_image/*.zarr"))
    assert predicted == ["img_png.zarr", "img_tif.zarr"]
    code, _, err = cli(
        capsys, ["batch", "--checkpoint", checkpoint, "--input", raw_dir, "--output", tmp_path / "b", "--device", "cpu"]
    )
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "b").rglob("per_image/*.zarr")) == predicted  # one rule for both
    assert tree(raw_dir) == before


# ----------------------------------------------------------------------------------------------- 10. smaller


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """A two-class simple CNN after one step, from the real modality sets in tests/data."""
    from napari_bioflow.config import RunConfig
    from napari_bioflow.engine.train import Trainer

    root = tmp_path_factory.mktemp("cls")
    for cls in ("cryo_et", "he_histology"):
        for f in sorted((DATA / "classification_2d" / "train" / cls).iterdir())[:3]:
            (root / "train" / cls).mkdir(parents=True, exist_ok=True)
            shutil.copy(f, root / "train" / cls / f.name)
    cfg = RunConfig.model_validate(
        {
            "workflow": "classification",
            "name": "cls",
            "output_dir": str(root / "runs"),
            "device": "cpu",
            "seed": 0,
            "model": {"name": "simple_cnn", "options": {"feature_maps": [4]}},
            "data": {"train_raw": str(root / "train"), "patch_size": [32, 32], "val_split": 0.0},
            "train": {"epochs": 1, "steps_per_epoch": 1, "batch_size": 4},
        }
    )
    trainer = Trainer(cfg)
    for _ in trainer.run():
        pass
    return trainer.best_checkpoint, root / "train"


def test_a_classifier_refuses_labels_in_predict_as_in_batch(tmp_path, capsys, classifier):
    ckpt, images = classifier
    labels = tmp_path / "labels"
    labels.mkdir()
    out = tmp_path / "out"
    sentence = "A classifier takes the true classes from the input's class sub-folders, not from"
    err = refused(
        capsys,
        ["predict", "--checkpoint", ckpt, "--input", images, "--labels", labels, "--output", out],
        [images, labels, out],
        sentence,
        f"--labels {labels}",
    )
    batch_err = refused(
        capsys,
        ["batch", "--checkpoint", ckpt, "--input", images, "--labels", labels, "--output", out],
        [images, labels, out],
        sentence,
        f"the labels folder {labels}",
    )
    assert err.split(" not from")[0] == batch_err.split(" not from")[0]  # one rule, one sentence


@pytest.mark.parametrize(
    "content, why", [(b"just some text\n", "it is not a PNG file"), (None, "the PNG file is truncated or damaged")]
)
def test_an_unreadable_png_is_named_in_plain_words(tmp_path, capsys, checkpoint, content, why):
    raw_dir = tmp_path / "in"
    write_image(raw_dir / "a.png", crop(0, 64)[0])
    bad = write_image(raw_dir / "b.png", crop(1, 64)[0])
    bad.write_bytes(content if content is not None else bad.read_bytes()[:200])
    out = tmp_path / "out"
    err = refused(
        capsys,
        ["predict", "--checkpoint", checkpoint, "--input", raw_dir, "--output", out],
        [raw_dir, out],
        f"File {bad} cannot be read as an image: {why}.",
    )
    assert "backend" not in err and "pip install" not in err


@pytest.mark.parametrize(
    "keep, why", [(8, "truncated or damaged (it holds no image data)"), (600, "truncated or damaged (")]
)
def test_a_corrupt_tiff_gives_the_readers_reason_in_batch_and_predict(tmp_path, capsys, checkpoint, keep, why):
    raw_dir = tmp_path / "in"
    write_image(raw_dir / "a.tif", crop(0, 64)[0])
    bad = write_image(raw_dir / "b.tif", crop(1, 64)[0])
    bad.write_bytes(bad.read_bytes()[:keep])
    before = tree(raw_dir)
    code, out, _ = cli(
        capsys, ["batch", "--checkpoint", checkpoint, "--input", raw_dir, "--output", tmp_path / "b", "--device", "cpu"]
    )
    assert code == 3 and f"FAILED b.tif: File {bad} cannot be read as an image" in out  # finished, a file failed
    rows = {r["image"]: r for r in read_csv(next((tmp_path / "b").rglob("batch_summary.csv")))}
    assert rows["a.tif"]["status"] == "done" and rows["b.tif"]["status"] == "failed"
    reason = rows["b.tif"]["reason"]
    assert reason.startswith(f"File {bad} cannot be read as an image: the TIFF file is ") and why in reason, reason
    assert "holds no pixels" not in reason and "shape (0,)" not in reason
    refused(
        capsys,
        ["predict", "--checkpoint", checkpoint, "--input", raw_dir, "--output", tmp_path / "p"],
        [raw_dir, tmp_path / "p"],
        reason,
    )
    assert tree(raw_dir) == before


def test_mixed_8_and_16_bit_images_are_noted(tmp_path, capsys, checkpoint):
    raw_dir, label_dir = tmp_path / "raw", tmp_path / "label"
    for i, dtype in enumerate((np.uint8, np.uint16, np.uint8)):
        raw, label = crop(i, 64)
        write_image(raw_dir / f"im{i}.tif", raw.astype(dtype) * (257 if dtype == np.uint16 else 1))
        write_image(label_dir / f"im{i}.tif", label)
    notes = build_dataset(tiny_config(tmp_path / "runs", raw_dir, label_dir)).notes
    (note,) = [n for n in notes if "mix data types" in n]
    assert f"8-bit (uint8) as {raw_dir / 'im0.tif'}" in note and f"16-bit (uint16) as {raw_dir / 'im1.tif'}" in note
    code, out, err = cli(
        capsys, ["predict", "--checkpoint", checkpoint, "--input", raw_dir, "--output", tmp_path / "p"]
    )
    assert code == 0, err
    assert "note: The images to predict mix data types (8-bit (uint8) as" in out


def test_a_uniform_training_set_is_noted(tmp_path, capsys):
    raw_dir, label_dir = tmp_path / "raw", tmp_path / "label"
    for i, value in enumerate((0, 0, 7)):
        _, label = crop(i, 64)
        write_image(raw_dir / f"u{i}.tif", np.full((64, 64), value, np.uint8))
        write_image(label_dir / f"u{i}.tif", label)
    cfg = tiny_config(tmp_path / "runs", raw_dir, label_dir, data={"patch_size": [32, 32]})
    code, out, err = cli(capsys, ["train", cfg.save(tmp_path / "c.yaml")])
    assert code == 0, err
    assert f"note: Every training image in {raw_dir} holds a single value ({raw_dir / 'u0.tif'} is all 0)" in out
    # one image with structure: no note
    write_image(raw_dir / "u2.tif", crop(2, 64)[0])
    assert not [n for n in build_dataset(cfg).notes if "single value" in n]
