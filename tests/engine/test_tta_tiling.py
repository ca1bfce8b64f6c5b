"""One TTA for every workflow (engine/predict/tta.py) and one tile plan per image (issue 10, point 3): the tiles ImagePrediction
sizes its zarr chunks for are the tiles sliding_window_predict runs, TTA averages exactly the views it names (the Z
flip included in 3D, for dense and per-image outputs), and a real checkpoint predicts with predict.tta=true."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import tifffile
import torch
import zarr
from helpers import bbbc_pairs, headless_checkpoint, read_pair, write_image

from napari_bioflow.cli import main
from napari_bioflow.config import RunConfig
from napari_bioflow.engine.data.normalize import Normalizer
from napari_bioflow.engine.predict import sliding_window_predict
from napari_bioflow.engine.predict.classification_results import classify_batch
from napari_bioflow.engine.predict.inference import ImagePrediction
from napari_bioflow.engine.train.checkpoint import LoadedModel


def plain_normalizer() -> Normalizer:
    return Normalizer("none", [0.0], [1.0])


class PointwiseNet(torch.nn.Module):
    """A 1x1 convolution: commutes with every flip and turn, and does not depend on where the tiles are."""

    size_divisor = 1

    def __init__(self, dim: int = 2, out_channels: int = 2):
        super().__init__()
        torch.manual_seed(0)
        self.conv = (torch.nn.Conv2d if dim == 2 else torch.nn.Conv3d)(1, out_channels, 1)
        self.seen: list[tuple[int, ...]] = []  # shape of every batch the model ran on

    def forward(self, x):
        self.seen.append(tuple(x.shape))
        return self.conv(x)


def segmentation_config(tmp_path, tta: bool) -> RunConfig:
    return RunConfig.from_dict(
        {
            "name": "tiles",
            "output_dir": str(tmp_path),
            "device": "cpu",
            "data": {"patch_size": [64, 64]},
            "predict": {"tile_size": [256, 256], "overlap": 0.0625, "tta": tta, "save_tiff": False},
        }
    )


# ---------------------------------------------------------------------------- (a) one plan per image


def test_accumulator_chunks_follow_the_tiles_run_with_tta(tmp_path):
    """1373 x 1325 with 256 x 256 tiles: TTA squares the tiles (243 x 243 instead of 243 x 235), which moves the X starts.
    The zarr chunks are the plan's steps and the model runs exactly the plan's tiles, with and without TTA."""
    image = np.random.default_rng(0).random((1373, 1325), dtype=np.float32)
    results = {}
    for tta in (False, True):
        net = PointwiseNet()
        loaded = LoadedModel(net, segmentation_config(tmp_path, tta), plain_normalizer())
        job = ImagePrediction(loaded, image, "wide.tif", tmp_path / f"out_{tta}", "wide")
        plan = job.plan
        assert plan.tile_shape == ((243, 243) if tta else (243, 235))
        result = job.run()
        job.cleanup()
        # the model ran the plan's tiles, each once per view (8 with TTA: the tiles are square)
        assert {s[2:] for s in net.seen} == {plan.tile_shape}
        assert sum(s[0] for s in net.seen) == len(plan.tiles) * (8 if tta else 1)
        prob = zarr.open_array(str(job.store / "prediction"), mode="r")
        assert tuple(prob.chunks[1:]) == plan.chunks
        for starts, chunk in zip(plan.starts, plan.chunks):
            # every tile but the last (flush with the image end) starts on a chunk boundary, one chunk apart
            assert [s // chunk for s in starts[:-1]] == list(range(len(starts) - 1))
            assert all(s % chunk == 0 for s in starts[:-1])
        assert result.outputs  # the outputs were written
        results[tta] = np.asarray(prob)
    np.testing.assert_allclose(results[True], results[False], atol=1e-5)


def test_given_plan_is_the_one_run():
    """sliding_window_predict runs the plan it is handed, tiles and all, and refuses one made for another image."""
    from napari_bioflow.engine.predict.tiling import plan_tiles

    image = np.random.default_rng(1).random((100, 130, 1), dtype=np.float32)
    plan = plan_tiles((100, 130), (40, 72), 0.1, 8)
    seen = []

    def forward(x):
        seen.append(tuple(x.shape[2:]))
        return x

    out = sliding_window_predict(image, forward, out_channels=1, plan=plan, batch_size=1)
    assert seen == [plan.tile_shape] * len(plan.tiles)
    np.testing.assert_allclose(out[0], image[..., 0], atol=1e-6)
    with pytest.raises(ValueError, match="plan"):
        sliding_window_predict(image[:50], forward, out_channels=1, plan=plan)


# ---------------------------------------------------------------------------- (b) dense TTA by hand


def by_hand_views(nd: int, square: bool):
    """Every view as numpy functions (do, undo), written out independently of engine/predict/tta.py: the 8 symmetries of a
    square Y-X plane (4 flips when it is not square), times a Z flip in 3D. Arrays are (C, *spatial)."""
    yx = []
    if square:
        for k, flip_x in itertools.product(range(4), (False, True)):
            yx.append(
                (
                    lambda a, k=k, f=flip_x: np.rot90(np.flip(a, -1) if f else a, k, axes=(-2, -1)),
                    lambda a, k=k, f=flip_x: (lambda r: np.flip(r, -1) if f else r)(np.rot90(a, -k, axes=(-2, -1))),
                )
            )
    else:
        for axes in ((), (-2,), (-1,), (-2, -1)):
            yx.append((lambda a, ax=axes: np.flip(a, ax) if ax else a, lambda a, ax=axes: np.flip(a, ax) if ax else a))
    if nd == 3:
        yx += [(lambda a, do=do: do(np.flip(a, -3)), lambda a, undo=undo: np.flip(undo(a), -3)) for do, undo in yx]
    return yx


def random_conv(dim: int):
    torch.manual_seed(3)
    conv = (torch.nn.Conv2d if dim == 2 else torch.nn.Conv3d)(1, 2, 3, padding=1)
    return lambda x: torch.tanh(conv(x)) * torch.arange(1, x.shape[-1] + 1, dtype=x.dtype)  # not equivariant at all


@pytest.mark.parametrize("shape, n_views", [((32, 32), 8), ((24, 40), 4), ((8, 16, 16), 16), ((6, 12, 20), 8)])
def test_dense_tta_is_the_mean_over_the_views(shape, n_views):
    """One tile as big as the image (no blending): the TTA result is the mean of undo(f(do(x))) over the views."""
    nd = len(shape)
    image = np.random.default_rng(2).random((*shape, 1), dtype=np.float32)
    f = random_conv(nd)
    calls = []

    def forward(x):
        calls.append(tuple(x.shape[2:]))
        return f(x)

    with torch.inference_mode():
        out = sliding_window_predict(image, forward, out_channels=2, tile_size=shape, tta=True)
        plain = sliding_window_predict(image, forward, out_channels=2, tile_size=shape)
        x = np.moveaxis(image, -1, 0)
        views = by_hand_views(nd, shape[-1] == shape[-2])
        assert len(views) == n_views
        outs = []
        for do, undo in views:
            seen = np.ascontiguousarray(do(x))[None]
            outs.append(undo(f(torch.from_numpy(seen))[0].numpy()))
    assert len(calls) == n_views + 1
    expected = np.mean(outs, axis=0)
    np.testing.assert_allclose(out, expected, atol=1e-5)
    assert np.abs(out - plain).max() > 1e-2  # the model is not equivariant: TTA changes the result
    if nd == 3:  # the Z flip is among them: the mean without it differs
        no_z = np.mean(outs[: n_views // 2], axis=0)
        assert np.abs(out - no_z).max() > 1e-3


# ---------------------------------------------------------------------------- (c) classification TTA


class FlatLinear(torch.nn.Module):
    """A classifier that sees every voxel where it is: no flip leaves it unchanged."""

    def __init__(self, n_voxels: int, n_classes: int = 3):
        super().__init__()
        torch.manual_seed(5)
        self.linear = torch.nn.Linear(n_voxels, n_classes)
        self.views = 0

    def forward(self, x):
        self.views += 1
        return self.linear(x.flatten(1))


@pytest.mark.parametrize("patch, n_views", [([8, 12, 12], 16), ([12, 12], 8), ([6, 8, 12], 8)])
def test_classification_tta_flips_z_too(tmp_path, patch, n_views):
    cfg = RunConfig.model_validate(
        {
            "workflow": "classification",
            "name": "c",
            "output_dir": str(tmp_path),
            "device": "cpu",
            "ndim": len(patch),
            "data": {"patch_size": patch, "val_split": 0.2},
            "classification": {"fit": "pad"},
            "predict": {"tta": True},
            "n_classes": 3,
            "class_names": ["a", "b", "c"],
        }
    )
    net = FlatLinear(int(np.prod(patch)))
    loaded = LoadedModel(net, cfg, plain_normalizer())
    rng = np.random.default_rng(4)
    images = [rng.random((*patch, 1), dtype=np.float32) for _ in range(2)]
    probs = classify_batch(loaded, images)
    assert net.views == n_views
    with torch.no_grad():
        x = np.stack([np.moveaxis(im, -1, 0) for im in images])
        expected = np.mean(
            [
                torch.softmax(net.linear(torch.from_numpy(np.ascontiguousarray(do(x))).flatten(1)), 1).numpy()
                for do, _ in by_hand_views(len(patch), patch[-1] == patch[-2])
            ],
            axis=0,
        )
    np.testing.assert_allclose(probs, expected, atol=1e-6)
    cfg.predict.tta = False
    plain = classify_batch(loaded, images)
    assert np.abs(plain - probs).max() > 1e-4


# ---------------------------------------------------------------------------- (d) a real checkpoint through the CLI


def test_cli_predict_with_tta_from_a_checkpoint(tmp_path, capsys):
    raw, label = read_pair(*bbbc_pairs("train")[0])
    ckpt = headless_checkpoint(tmp_path / "train", raw[100:228, 100:228], label[100:228, 100:228], steps=20)
    test_raw = tmp_path / "test"
    for raw_path, _ in bbbc_pairs("test")[:1]:
        write_image(test_raw / raw_path.name, np.ascontiguousarray(tifffile.imread(raw_path)[:150, :170]))
    probs = {}
    for tta in ("false", "true"):
        out = tmp_path / f"pred_{tta}"
        assert (
            main(
                [
                    "predict",
                    "--checkpoint",
                    str(ckpt),
                    "--input",
                    str(test_raw),
                    "--output",
                    str(out),
                    "--set",
                    f"predict.tta={tta}",
                    "--set",
                    "predict.tile_size=[96,96]",
                ]
            )
            == 0
        )
        (tif,) = out.rglob("per_image/*.tif")
        probs[tta] = tifffile.imread(tif)
    plain, aug = probs["false"], probs["true"]
    assert plain.shape == aug.shape == (2, 150, 170)
    assert np.abs(plain - aug).max() > 1e-3  # TTA ran: the trained model is not exactly symmetric
    agree = np.mean(plain.argmax(0) == aug.argmax(0))
    assert agree > 0.95, agree
