"""OME-Zarr outputs (predict.output_format: ome-zarr): probabilities, labels and an image-to-image output written as
NGFF 0.5 images with their axes and the physical scale of the input, read back with zarr + their JSON and with the
project's own reader."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import torch
import zarr

from napari_bioflow.engine.data.io import open_image
from napari_bioflow.engine.data.zarr_image import open_zarr_image


class Pointwise(torch.nn.Module):
    """Two 'classes' from one channel (x, -x): the argmax is x < 0, i.e. the raw value below the offset."""

    size_divisor = 1

    def forward(self, x):
        return torch.cat([x, -x], 1)


class Identity(torch.nn.Module):
    size_divisor = 1

    def forward(self, x):
        return x


def segmentation(ndim: int, **predict):
    from napari_bioflow.config import RunConfig
    from napari_bioflow.engine.data.normalize import Normalizer
    from napari_bioflow.engine.train.checkpoint import LoadedModel

    patch = [8, 32, 32] if ndim == 3 else [32, 32]
    tile = [16, 48, 48] if ndim == 3 else [64, 64]
    cfg = RunConfig.model_validate(
        {
            "ndim": ndim,
            "device": "cpu",
            "data": {"patch_size": patch},
            "predict": {"tile_size": tile, "output_format": "ome-zarr", **predict},
        }
    )
    return LoadedModel(Pointwise(), cfg, Normalizer("percentile", [100.0], [900.0]))


def restoration(**predict):
    from napari_bioflow.config import RunConfig
    from napari_bioflow.engine.data.normalize import Normalizer
    from napari_bioflow.engine.train.checkpoint import LoadedModel
    from napari_bioflow.engine.workflows import get_workflow

    cfg = RunConfig.model_validate(
        {
            "workflow": "image_to_image",
            "device": "cpu",
            "data": {"patch_size": [32, 32]},
            "train": {"loss": "l1"},
            "predict": {"tile_size": [64, 64], "output_format": "ome-zarr", **predict},
        }
    )
    wf = get_workflow(cfg)
    wf.load_state({"target_normalization": Normalizer("percentile", [10.0], [2.0]).to_dict()})
    return LoadedModel(Identity(), cfg, Normalizer("percentile", [0.0], [1.0]), workflow=wf)


def group_meta(path) -> dict:
    return json.loads((path / "zarr.json").read_text())["attributes"]["ome"]


def real_crop(shape=(150, 170)) -> np.ndarray:
    from helpers import BBBC

    image = tifffile.imread(sorted((BBBC / "train" / "raw").glob("*.tif"))[0])
    return np.ascontiguousarray(image[: shape[0], : shape[1]])


def test_segmentation_2d_from_an_ome_tiff_keeps_its_pixel_size(tmp_path):
    """Probabilities and labels of a real 2D image from an OME-TIFF with PhysicalSizeX/Y 0.65 um: two OME-Zarr images
    with axes c (channel), y, x (space, micrometer) and scale [1, 0.65, 0.65] / [0.65, 0.65], equal to the TIFFs."""
    from napari_bioflow.engine.predict.inference import predict_files

    image = real_crop()
    raw = tmp_path / "img.ome.tif"
    tifffile.imwrite(raw, image, ome=True, metadata={"axes": "YX", "PhysicalSizeX": 0.65, "PhysicalSizeY": 0.65})
    out = tmp_path / "out"
    (result,) = list(predict_files(segmentation(2), [(raw, None)], out))
    prob_path, labels_path = out / "per_image" / "img.ome.zarr", out / "per_image_binarized" / "img.ome.zarr"
    meta = group_meta(prob_path)
    assert meta["version"] == "0.5"
    ms = meta["multiscales"][0]
    assert ms["axes"] == [
        {"name": "c", "type": "channel"},
        {"name": "y", "type": "space", "unit": "micrometer"},
        {"name": "x", "type": "space", "unit": "micrometer"},
    ]
    assert ms["datasets"] == [
        {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0, 0.65, 0.65]}]}
    ]
    labels_meta = group_meta(labels_path)
    assert "image-label" in labels_meta
    assert labels_meta["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"] == [0.65, 0.65]
    # the project's reader opens them (full resolution of the multiscales)
    prob, labels = open_zarr_image(prob_path), open_zarr_image(labels_path)
    assert prob.shape == (2, 150, 170) and labels.shape == (150, 170) and labels.dtype == np.uint8
    x = (image.astype(np.float32) - 100) / 900
    np.testing.assert_array_equal(labels[:], (x < 0).astype(np.uint8))
    np.testing.assert_allclose(prob[:], tifffile.imread(out / "per_image" / "img.tif"), atol=1e-6)
    # the prediction went tile by tile straight into the OME-Zarr image: no zarr store beside it
    assert not (out / "per_image" / "img.zarr").exists()
    assert result.paths["probabilities"][0] == prob_path and result.paths["labels"][0] == labels_path


def test_segmentation_3d_from_an_ome_zarr_input_keeps_its_scale(tmp_path):
    """A 3D OME-Zarr input with scale (2.0, 0.3, 0.3) um: its probabilities and labels carry z, y, x axes and that
    scale; the labels are the argmax of the probabilities, read back with zarr."""
    from napari_bioflow.engine.predict.inference import ImagePrediction
    from napari_bioflow.engine.predict.scale import resolve_scale

    rng = np.random.default_rng(0)
    data = rng.integers(0, 1000, (20, 70, 90), dtype=np.uint16)
    src = tmp_path / "vol.ome.zarr"
    group = zarr.open_group(str(src), mode="w-", zarr_format=3)
    group.create_array("0", shape=data.shape, chunks=(8, 32, 32), dtype=data.dtype)[:] = data
    group.attrs["ome"] = {
        "version": "0.5",
        "multiscales": [
            {
                "axes": [{"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"],
                "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [2.0, 0.3, 0.3]}]}],
            }
        ],
    }
    loaded = segmentation(3)
    scale = resolve_scale(loaded.config, path=src)
    assert scale.values == (2.0, 0.3, 0.3) and scale.unit == "micrometer"
    job = ImagePrediction(loaded, open_image(src), "vol", tmp_path / "out", "vol", scale=scale)
    result = job.run()
    job.cleanup()
    prob_meta = group_meta(tmp_path / "out" / "per_image" / "vol.ome.zarr")["multiscales"][0]
    assert [a["name"] for a in prob_meta["axes"]] == ["c", "z", "y", "x"]
    assert prob_meta["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0, 2.0, 0.3, 0.3]
    labels = zarr.open_array(str(tmp_path / "out" / "per_image_binarized" / "vol.ome.zarr" / "0"), mode="r")
    np.testing.assert_array_equal(labels[:], (data < 100).astype(np.uint8))
    assert result.outputs["probabilities"].shape == (2, 20, 70, 90)


def test_image_to_image_output_in_intensities_with_the_configured_pixel_size(tmp_path):
    """An image-to-image prediction (identity model) in OME-Zarr: the image in the target's intensities (x * 2 + 10),
    axes c, y, x with the scale of predict.pixel_size, which wins over the file's own metadata."""
    from napari_bioflow.engine.predict.inference import predict_files

    image = real_crop((96, 80))
    raw = tmp_path / "img.tif"
    tifffile.imwrite(raw, image, ome=True, metadata={"axes": "YX", "PhysicalSizeX": 9.0, "PhysicalSizeY": 9.0})
    out = tmp_path / "out"
    (result,) = list(predict_files(restoration(pixel_size=[0.25, 0.5]), [(raw, None)], out))
    path = out / "per_image" / "img.ome.zarr"
    ms = group_meta(path)["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == ["c", "y", "x"]
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0, 0.25, 0.5]
    written = open_zarr_image(path)
    np.testing.assert_allclose(written[:][0], image.astype(np.float32) * 2 + 10, rtol=1e-6)
    assert result.paths["image"][0] == path
    # the normalized prediction is a working array, kept in the zarr store (not an output)
    assert (out / "per_image" / "img.zarr" / "prediction").is_dir()


def test_lower_levels_halve_y_and_x_and_double_the_scale(tmp_path):
    from napari_bioflow.engine.predict.ome_zarr import add_levels, create_image
    from napari_bioflow.engine.predict.scale import PhysicalScale

    labels = (np.arange(300 * 260).reshape(300, 260) % 7).astype(np.uint8)
    arr = create_image(tmp_path / "l.ome.zarr", "labels", labels.shape, (128, 128), "uint8", False,
                       PhysicalScale((0.5, 0.5), "micrometer"), labels=True)  # fmt: skip
    arr[:] = labels
    assert add_levels(tmp_path / "l.ome.zarr", labels=True, min_size=100) == 3
    ms = group_meta(tmp_path / "l.ome.zarr")["multiscales"][0]
    assert [d["coordinateTransformations"][0]["scale"] for d in ms["datasets"]] == [[0.5, 0.5], [1.0, 1.0], [2.0, 2.0]]
    group = zarr.open_group(str(tmp_path / "l.ome.zarr"), mode="r")
    np.testing.assert_array_equal(group["1"][:], labels[::2, ::2])  # labels: every other pixel, values kept
    np.testing.assert_array_equal(group["2"][:], labels[::4, ::4])
    assert open_zarr_image(tmp_path / "l.ome.zarr").shape == labels.shape  # the full resolution


@pytest.mark.parametrize(
    "write, expected",
    [
        (lambda p, a: tifffile.imwrite(p, a, imagej=True, resolution=(2.0, 4.0), metadata={"unit": "um"}),
         ((0.25, 0.5), "micrometer")),
        (lambda p, a: tifffile.imwrite(p, a, ome=True, metadata={"axes": "YX", "PhysicalSizeX": 0.1,
                                                                 "PhysicalSizeY": 0.2, "PhysicalSizeXUnit": "nm"}),
         ((0.2, 0.1), "nanometer")),
        (lambda p, a: tifffile.imwrite(p, a), ((1.0, 1.0), None)),
    ],
    ids=["imagej", "ome-tiff", "none"],
)  # fmt: skip
def test_the_physical_scale_of_a_tiff(tmp_path, write, expected):
    from napari_bioflow.config import RunConfig
    from napari_bioflow.engine.predict.scale import resolve_scale

    path = tmp_path / "a.tif"
    write(path, np.zeros((8, 8), np.uint8))
    scale = resolve_scale(RunConfig.model_validate({"device": "cpu"}), path=path)
    assert (tuple(round(v, 6) for v in scale.values), scale.unit) == expected
    # a napari layer's scale (the Predict dock) wins over the file
    layer = resolve_scale(RunConfig.model_validate({"device": "cpu"}), [3.0, 3.0], ["micron", "micron"], path)
    assert (layer.values, layer.unit) == ((3.0, 3.0), "micrometer")


def test_pixel_size_must_match_the_dimensions():
    from napari_bioflow.config import RunConfig
    from napari_bioflow.engine.errors import InputError

    with pytest.raises(InputError, match=r"predict\.pixel_size \[0\.5\] must hold 2 positive sizes"):
        RunConfig.from_dict({"predict": {"pixel_size": [0.5]}})
