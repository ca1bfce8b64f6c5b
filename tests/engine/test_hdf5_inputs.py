"""HDF5 inputs (issue 12 item 3): `.h5` / `.hdf5` files for training, prediction and batch, read lazily (no pixel
read until a region is asked for); a dataset path inside the file (`file.h5/group/raw`) or the file's only dataset;
several datasets and no path: one sentence listing them. Real BBBC007 crops."""

from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
from helpers import bbbc_pairs, crop_folders, read_csv, read_pair, reports_of, run_all, tiny_config

from napari_bioflow.engine.data.hdf5_image import HDF5Array
from napari_bioflow.engine.data.io import list_images, open_image
from napari_bioflow.engine.data.sources import folder_pairs, to_channels_last
from napari_bioflow.engine.errors import InputError
from napari_bioflow.engine.predict.inference import predict_files
from napari_bioflow.engine.train import EpochReport, Trainer
from napari_bioflow.engine.train.checkpoint import load_model


def write_h5(path: Path, **datasets) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        for name, data in datasets.items():
            f.create_dataset(name.replace("__", "/"), data=data, chunks=tuple(min(64, n) for n in data.shape))
    return path


def h5_folders(root: Path, split: str, n: int, size: int = 96) -> tuple[Path, Path]:
    """BBBC crops as one .h5 per image: the raw image in group/raw (the label beside it), the label alone in a
    second file (its only dataset)."""
    raw_dir, label_dir = root / "raw", root / "label"
    for raw_path, label_path in bbbc_pairs(split)[:n]:
        raw, label = read_pair(raw_path, label_path)
        raw, label = raw[100 : 100 + size, 100 : 100 + size], (label[100 : 100 + size, 100 : 100 + size] > 0)
        stem = raw_path.stem
        write_h5(raw_dir / f"{stem}.h5", volume__raw=raw, volume__mask=label.astype(np.uint8))
        write_h5(label_dir / f"{stem}.hdf5", labels=label.astype(np.uint8))
    return raw_dir, label_dir


def test_dataset_paths_lazy_reads_and_refusals(tmp_path):
    raw = tifffile.imread(bbbc_pairs("train")[0][0])[:128, :160]
    one = write_h5(tmp_path / "one.h5", deep__inside__raw=raw)
    two = write_h5(tmp_path / "two.hdf5", raw=raw, mask=(raw > 40).astype(np.uint8))
    image = open_image(one)  # the only dataset, wherever it sits
    assert isinstance(image, HDF5Array) and image.shape == (128, 160) and image.name == "/deep/inside/raw"
    assert np.array_equal(image[10:20, 30:40], raw[10:20, 30:40])
    reads = []
    read = HDF5Array.__getitem__

    def counted(self, index):
        out = read(self, index)
        reads.append(out.size)
        return out

    HDF5Array.__getitem__ = counted
    try:
        lazy = to_channels_last(image, 2, 1, "one.h5")
        assert sum(reads) == 0  # opened and arranged: no pixel read (dask reads an empty slice for its meta)
        assert lazy.shape == (128, 160, 1) and np.array_equal(np.asarray(lazy[5:9, 7:11, 0]), raw[5:9, 7:11])
        assert reads and max(reads) <= 64 * 64  # one 64x64 chunk of the file, not the image
    finally:
        HDF5Array.__getitem__ = read
    assert np.array_equal(open_image(tmp_path / "two.hdf5" / "mask")[...], (raw > 40).astype(np.uint8))
    with pytest.raises(InputError, match=r"two.hdf5 holds several datasets \(mask, raw\): append the dataset to use "):
        open_image(two)
    with pytest.raises(
        InputError, match=r"The HDF5 file .*two.hdf5 holds no dataset or group nope; its datasets: mask, raw\."
    ):
        open_image(two / "nope")
    (tmp_path / "bad.h5").write_bytes(b"not an hdf5 file")
    with pytest.raises(InputError, match=r"bad.h5 cannot be read as an HDF5 image"):
        open_image(tmp_path / "bad.h5")
    assert list_images(tmp_path) == [tmp_path / "bad.h5", one, two]  # .h5 and .hdf5 are images of a folder
    assert list_images(two / "raw") == [two / "raw"]  # a path inside a file where a folder is expected
    from napari_bioflow.engine.data.pairing import image_name

    assert image_name(two / "raw") == "two.hdf5/raw" and image_name(one) == "one.h5"


def test_hdf5_many_channel_axes_attribute(tmp_path):
    """An `axes` attribute on the dataset (as in ilastik and BiaPy's HDF5 files) names the channel axis."""
    data = np.random.default_rng(0).integers(0, 255, (4, 6, 16, 16), dtype=np.uint8)  # Z, C, Y, X
    path = tmp_path / "zcyx.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("raw", data=data).attrs["axes"] = "zcyx"
    out = np.asarray(to_channels_last(open_image(path), 3, 6, "zcyx.h5"))
    assert out.shape == (4, 16, 16, 6) and np.array_equal(out[..., 2], data[:, 2])


def test_train_predict_and_batch_on_hdf5(tmp_path):
    raw_dir, label_dir = h5_folders(tmp_path / "train", "train", 3)
    # each raw file holds volume/raw and volume/mask: given whole, it is refused (never a silent pick)
    cfg = tiny_config(tmp_path / "out", raw_dir, label_dir, data={"patch_size": [64, 64], "val_split": 0.34})
    with pytest.raises(InputError, match=r"\.h5 holds several datasets \(volume/mask, volume/raw\): append the "):
        run_all(Trainer(cfg))
    for f in raw_dir.glob("*.h5"):  # keep only the raw dataset: the file's only dataset is then the image
        with h5py.File(f, "a") as h:
            del h["volume/mask"]
    trainer = Trainer(cfg)
    reports = run_all(trainer)
    assert 0.0 <= reports_of(reports, EpochReport)[-1].metrics["iou_foreground"] <= 1.0
    loaded = load_model(reports[-1].checkpoint)
    test_raw, test_label = h5_folders(tmp_path / "test", "test", 2)
    for f in test_raw.glob("*.h5"):
        with h5py.File(f, "a") as h:
            del h["volume/mask"]
    results = list(predict_files(loaded, folder_pairs(test_raw, test_label, "test"), trainer.experiment.results))
    assert len(results) == 2
    rows = read_csv(trainer.experiment.results / "metrics.csv")
    assert len(rows) == 3 and all(0.0 <= float(r["iou_foreground"]) <= 1.0 for r in rows)
    stem = bbbc_pairs("test")[0][0].stem
    assert tifffile.imread(trainer.experiment.results / "per_image_binarized" / f"{stem}.tif").shape == (96, 96)

    from napari_bioflow.engine.batch import BatchRequest, run_batch

    out = tmp_path / "batch"
    request = BatchRequest(
        checkpoint=reports[-1].checkpoint, input_dir=test_raw, labels_dir=test_label, output_dir=out, device="cpu"
    )
    list(run_batch(request))
    (summary,) = list(out.rglob("batch_summary.csv"))
    statuses = [r["status"] for r in read_csv(summary)]
    assert statuses == ["done", "done"], read_csv(summary)
    assert len(list(summary.parent.glob("per_image_binarized/*.tif"))) == 2


def test_mixed_folder_tiff_and_hdf5(tmp_path):
    """A folder may mix TIFF and HDF5 images; pairing is by name as for every format."""
    raw_dir, label_dir = crop_folders(tmp_path, n=2, size=64)
    raw = tifffile.imread(raw_dir / bbbc_pairs("train")[0][0].name)
    write_h5(tmp_path / "raw" / "extra.h5", raw=raw)
    write_h5(tmp_path / "label" / "extra.h5", labels=(raw > 30).astype(np.uint8))
    pairs = folder_pairs(raw_dir, label_dir, "training")
    assert [p[0].name for p in pairs][-1] == "extra.h5" and pairs[-1][1].name == "extra.h5"
