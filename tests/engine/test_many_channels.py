"""Images with more than 4 channels (issue 12 item 1): the channel axis comes from data.axes, the file's metadata
(OME-TIFF, ImageJ, OME-Zarr) or data.in_channels, never from the length of an axis. Multiplex-like images are built
from real channels (tests/data/ATTRIBUTION.md): BBBC007 nuclei (the channel the labels belong to), the H&E section's
R, G, B and luminance, and time-lapse frames; 2D and 3D semantic segmentation and image to image train and predict.
"""

from pathlib import Path

import numpy as np
import pytest
import tifffile
from helpers import NUCLEI, bbbc_pairs, read_csv, read_pair, reports_of, run_all, tiny_config

from napari_bioflow.config import RunConfig
from napari_bioflow.engine.data.io import open_image
from napari_bioflow.engine.data.sources import folder_pairs, to_channels_last
from napari_bioflow.engine.errors import InputError
from napari_bioflow.engine.predict.inference import predict_files
from napari_bioflow.engine.train import EpochReport, StartReport, Trainer
from napari_bioflow.engine.train.checkpoint import load_model

DATA = Path(__file__).parents[1] / "data"
HE = DATA / "skin_he_crop.tif"  # 192x192x3 H&E crop
TIMELAPSE = DATA / "timelapse_2d_crops.tif"  # 4x160x160 time-lapse crops


def multiplex_2d(nuclei: np.ndarray, shift: int) -> np.ndarray:
    """(9, Y, X) uint8: nuclei, H&E R, G, B, H&E luminance, four time-lapse frames; `shift` moves the other crops."""
    h, w = nuclei.shape
    he = tifffile.imread(HE)[shift : shift + h, shift : shift + w]
    gray = np.round(he @ np.array([0.2125, 0.7154, 0.0721])).astype(np.uint8)
    frames = tifffile.imread(TIMELAPSE)[:, shift : shift + h, shift : shift + w]
    return np.stack([nuclei.astype(np.uint8), *np.moveaxis(he, -1, 0), gray, *frames])


def tiles(image: np.ndarray, depth: int, size: int, step: int = 6) -> np.ndarray:
    """A (depth, size, size) volume of real pixels: windows of a 2D image moved by `step` pixels per slice."""
    return np.stack([image[k * step : k * step + size, k * step : k * step + size] for k in range(depth)])


def multiplex_3d(nuclei: np.ndarray) -> np.ndarray:
    """(7, Z, Y, X) float32: the nuclei volume, the tomogram crop, H&E R, G, B, luminance and time-lapse windows."""
    z, y, x = nuclei.shape
    he = tifffile.imread(HE).astype(np.float32)
    tomo = tifffile.imread(DATA / "tomo_3d_crop.tif")[:z, :y, :x]
    frame = tifffile.imread(TIMELAPSE)[0].astype(np.float32)
    gray = he @ np.array([0.2125, 0.7154, 0.0721], np.float32)
    channels = [nuclei.astype(np.float32), tomo, *(tiles(he[..., c], z, y) for c in range(3)), tiles(gray, z, y)]
    return np.stack(channels + [tiles(frame, z, y)]).astype(np.float32)


# ------------------------------------------------------------------------------------------------------ the rules
def test_the_channel_axis_comes_from_in_channels_not_from_its_length():
    image = np.zeros((40, 24, 32), np.uint16)
    assert to_channels_last(image, 2, 40, "cyx").shape == (24, 32, 40)  # 40 channels first
    assert to_channels_last(np.moveaxis(image, 0, -1), 2, 40, "yxc").shape == (24, 32, 40)
    five = np.arange(5 * 24 * 32).reshape(5, 24, 32)
    out = to_channels_last(five, 2, 5, "five")  # the issue's case: 5 channels, no longer read as 3D
    assert out.shape == (24, 32, 5) and np.array_equal(np.asarray(out)[..., 3], five[3])
    assert to_channels_last(five, 3, 1, "volume").shape == (5, 24, 32, 1)  # the same array as a 3D config reads it
    with pytest.raises(
        InputError, match=r"five has shape 5x24x32: that is 3D data, but the config is 2D \(set ndim: 3"
    ):
        to_channels_last(five, 2, 1, "five")
    with pytest.raises(InputError, match="neither its first nor its last axis holds the 7 channels"):
        to_channels_last(five, 2, 7, "five")
    czyx = np.zeros((6, 4, 16, 16), np.uint8)
    assert to_channels_last(czyx, 3, 6, "czyx").shape == (4, 16, 16, 6)


def test_data_axes_places_the_channels_anywhere_and_is_checked():
    zcyx = np.arange(4 * 6 * 8 * 10).reshape(4, 6, 8, 10)
    out = to_channels_last(zcyx, 3, 6, "zcyx", axes="ZCYX")
    assert out.shape == (4, 8, 10, 6) and np.array_equal(np.asarray(out)[2, :, :, 5], zcyx[2, 5])
    assert to_channels_last(np.zeros((8, 10, 6)), 2, 6, "xyc", axes="XYC").shape == (10, 8, 6)  # spatial order fixed
    with pytest.raises(InputError, match=r"zcyx has shape 4x6x8x10 \(4 axes\), but data.axes CYX names 3 axes\."):
        to_channels_last(zcyx, 2, 6, "zcyx", axes="CYX")
    with pytest.raises(
        InputError, match=r"zcyx has 6 channel\(s\) on its axis C \(data.axes ZCYX\) but data.in_channels is 5"
    ):
        to_channels_last(zcyx, 3, 5, "zcyx", axes="ZCYX")
    base = {"data": {"in_channels": 6, "patch_size": [8, 8]}}
    assert RunConfig.from_dict({**base, "data": {**base["data"], "axes": "cyx"}}).data.axes == "CYX"
    for axes, words in (
        ("CZYX", "data.axes CZYX has 3 spatial axes but ndim is 2"),
        ("YX", "data.axes YX has no C axis, but data.in_channels is 6"),
        ("CYYX", "must name each of Y and X once"),
    ):
        with pytest.raises(InputError, match=words):
            RunConfig.from_dict({**base, "data": {**base["data"], "axes": axes}})


def test_file_metadata_names_the_channel_axis(tmp_path):
    """OME-TIFF and ImageJ hyperstacks (tifffile's series axes) and OME-Zarr multiscales axes say where C is: an
    ImageJ ZCYX stack of 6 channels is read right without data.axes; a plain TIFF's guessed axes are ignored."""
    import zarr

    rng = np.random.default_rng(0)
    czyx = rng.integers(0, 255, (6, 4, 16, 16), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "ome.ome.tif", czyx, ome=True, metadata={"axes": "CZYX"})
    tifffile.imwrite(
        tmp_path / "ij.tif", np.ascontiguousarray(czyx.swapaxes(0, 1)), imagej=True, metadata={"axes": "ZCYX"}
    )
    root = zarr.open_group(str(tmp_path / "img.ome.zarr"), mode="w")
    root.create_array("0", data=czyx[None])  # T, C, Z, Y, X with T of length 1
    axes = [{"name": "t", "type": "time"}, {"name": "c", "type": "channel"}] + [
        {"name": a, "type": "space"} for a in "zyx"
    ]
    root.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": [{"path": "0"}]}]
    for name in ("ome.ome.tif", "ij.tif", "img.ome.zarr"):
        out = np.asarray(to_channels_last(open_image(tmp_path / name), 3, 6, name))
        assert out.shape == (4, 16, 16, 6), name
        assert np.array_equal(out[..., 4], czyx[4]), name
    with pytest.raises(
        InputError, match=r"ij.tif has 6 channel\(s\) \(axis C of its ZCYX metadata\) but the config expects 3"
    ):
        to_channels_last(open_image(tmp_path / "ij.tif"), 3, 3, "ij.tif")
    with pytest.raises(InputError, match=r"ome.ome.tif has shape 6x4x16x16: its CZYX metadata makes it 3D with 6 "):
        to_channels_last(open_image(tmp_path / "ome.ome.tif"), 2, 6, "ome.ome.tif")
    tifffile.imwrite(tmp_path / "plain.tif", czyx[:, :4])  # tifffile guesses 'QSYX' (4 as samples): not metadata
    assert to_channels_last(open_image(tmp_path / "plain.tif"), 3, 6, "plain.tif").shape == (4, 16, 16, 6)


# -------------------------------------------------------------------------------------------------- end to end
def write_2d_sets(root: Path) -> dict[str, tuple[Path, Path]]:
    """train: 3 BBBC crops as 9-channel CYX TIFFs (no metadata); test: 1 as YXC, so both layouts are read."""
    out = {}
    for role, pairs, last in (("train", bbbc_pairs("train")[:3], False), ("test", bbbc_pairs("test")[:1], True)):
        raw_dir, label_dir = root / role / "raw", root / role / "label"
        raw_dir.mkdir(parents=True)
        label_dir.mkdir(parents=True)
        for k, (raw_path, label_path) in enumerate(pairs):
            raw, label = read_pair(raw_path, label_path)
            image = multiplex_2d(raw[100:196, 100:196], shift=8 * k)
            tifffile.imwrite(raw_dir / raw_path.name, np.moveaxis(image, 0, -1) if last else image)
            tifffile.imwrite(label_dir / raw_path.name, (label[100:196, 100:196] > 0).astype(np.uint8))
        out[role] = (raw_dir, label_dir)
    return out


def test_2d_nine_channel_segmentation_trains_and_predicts(tmp_path):
    sets = write_2d_sets(tmp_path)
    cfg = tiny_config(
        tmp_path / "out", *sets["train"], data={"in_channels": 9, "patch_size": [64, 64], "val_split": 0.34}
    )
    trainer = Trainer(cfg)
    reports = run_all(trainer)
    (start,) = reports_of(reports, StartReport)
    assert (start.n_train, start.n_val) == (2, 1)
    epoch = reports_of(reports, EpochReport)[-1]
    assert np.isfinite(epoch.val_loss) and 0.0 <= epoch.metrics["iou_foreground"] <= 1.0
    loaded = load_model(reports[-1].checkpoint)
    assert loaded.config.data.in_channels == 9
    results = trainer.experiment.results
    (result,) = predict_files(loaded, folder_pairs(*sets["test"], "test"), results)
    name = bbbc_pairs("test")[0][0].name
    assert tifffile.imread(results / "per_image" / name).shape == (2, 96, 96)
    assert tifffile.imread(results / "per_image_binarized" / name).shape == (96, 96)
    rows = read_csv(results / "metrics.csv")
    assert [r["image"] for r in rows] == [name, "ALL (pixels pooled)"]
    assert 0.0 <= float(rows[0]["iou_foreground"]) <= 1.0
    assert result.metrics["iou_foreground"] == pytest.approx(float(rows[0]["iou_foreground"]))


def test_3d_seven_channel_segmentation_trains_and_predicts(tmp_path):
    volume = tifffile.imread(NUCLEI / "train/raw/nuclei_train.tif")  # 32x128x256
    labels = tifffile.imread(NUCLEI / "train/label/nuclei_train.tif")
    crops = {
        "train": (slice(0, 8), slice(0, 48), slice(0, 48)),
        "test": (slice(16, 24), slice(64, 112), slice(128, 176)),
    }
    for role, crop in crops.items():
        (tmp_path / role / "raw").mkdir(parents=True)
        (tmp_path / role / "label").mkdir(parents=True)
        image = multiplex_3d(volume[crop])
        # the training volume as ZCYX: only data.axes can say so; the test volume as CZYX
        data = np.ascontiguousarray(image.swapaxes(0, 1)) if role == "train" else image
        tifffile.imwrite(tmp_path / role / "raw" / "vol.tif", data)
        tifffile.imwrite(tmp_path / role / "label" / "vol.tif", (labels[crop] > 0).astype(np.uint8))
    cfg = tiny_config(
        tmp_path / "out",
        tmp_path / "train/raw",
        tmp_path / "train/label",
        ndim=3,
        data={"in_channels": 7, "axes": "ZCYX", "patch_size": [4, 32, 32], "val_split": 0.0},
    )
    trainer = Trainer(cfg)
    reports = run_all(trainer)
    assert np.isfinite(reports_of(reports, EpochReport)[-1].train_loss)
    loaded = load_model(reports[-1].checkpoint)
    assert loaded.config.data.axes == "ZCYX"
    with pytest.raises(InputError, match=r"vol.tif has 8 channel\(s\) on its axis C \(data.axes ZCYX\)"):
        list(predict_files(loaded, folder_pairs(tmp_path / "test/raw", None, "test"), tmp_path / "nowhere"))
    from napari_bioflow.engine.predict.predictor import prediction_config

    loaded.config = prediction_config(loaded, overrides=["data.axes=CZYX"])  # as `predict --set data.axes=CZYX`
    assert (loaded.config.data.axes, loaded.config.data.in_channels) == ("CZYX", 7)
    results = trainer.experiment.results
    (result,) = predict_files(loaded, folder_pairs(tmp_path / "test/raw", tmp_path / "test/label", "test"), results)
    assert tifffile.imread(results / "per_image" / "vol.tif").shape == (2, 8, 48, 48)
    assert 0.0 <= result.metrics["iou_foreground"] <= 1.0


def test_image_to_image_with_many_raw_channels(tmp_path):
    """9 real channels in, the nuclei channel of the next image out (image to image reads the raw the same way)."""
    raw_dir, target_dir = tmp_path / "raw", tmp_path / "target"
    raw_dir.mkdir()
    target_dir.mkdir()
    for k, (raw_path, _) in enumerate(bbbc_pairs("train")[:2]):
        nuclei = tifffile.imread(raw_path)[100:164, 100:164]
        tifffile.imwrite(raw_dir / f"m{k}.tif", np.moveaxis(multiplex_2d(nuclei, 4 * k), 0, -1))
        tifffile.imwrite(target_dir / f"m{k}.tif", nuclei)
    cfg = tiny_config(
        tmp_path / "out",
        raw_dir,
        target_dir,
        workflow="image_to_image",
        data={"in_channels": 9, "patch_size": [32, 32], "val_split": 0.5},
        model={"options": {"feature_maps": [8, 16], "norm": "none"}},
    )
    trainer = Trainer(cfg)
    reports = run_all(trainer)
    assert np.isfinite(reports_of(reports, EpochReport)[-1].metrics["psnr"])
    (result,) = predict_files(
        load_model(reports[-1].checkpoint), folder_pairs(raw_dir, target_dir, "test")[:1], trainer.experiment.results
    )
    assert tifffile.imread(trainer.experiment.results / "per_image" / "m0.tif").shape == (1, 64, 64)
    assert np.isfinite(result.metrics["psnr"])
