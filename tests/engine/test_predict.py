"""Tests of the sliding-window predictor (engine/predict/sliding_window.py)."""

import dask.array as da
import numpy as np
import pytest
import torch
import zarr

from napari_bioflow.engine.predict import (
    PredictionCancelled,
    ZarrAccumulator,
    argmax_labels,
    plan_tiles,
    sliding_window_predict,
    write_labels_zarr,
)


def identity(x):
    return x


def affine(x):
    # Two output channels from one input channel: checks out_channels != in_channels.
    return torch.cat([x * 2 + 1, x * x], dim=1)


def rand_image(shape, seed=0):
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


# ---------------------------------------------------------------------------- tile plan


def test_plan_2048_shrinks_tiles():
    plan = plan_tiles((2048, 2048), 1024, 1 / 16, 16)
    for axis in range(2):
        starts, t = plan.starts[axis], plan.tile_shape[axis]
        assert len(starts) == 3
        assert t % 16 == 0 and t < 1024
        assert starts[0] == 0 and starts[-1] + t == 2048  # covers everything
        assert all(a + t - b >= 64 for a, b in zip(starts, starts[1:]))  # overlap kept
        assert len(starts) * t / 2048 - 1 < 0.10  # redundant work per axis
    assert len(plan.tiles) == 9 and plan.padded_shape == (2048, 2048)


@pytest.mark.parametrize("seed", range(5))
def test_plan_invariants_random(seed):
    rng = np.random.default_rng(seed)
    for _ in range(200):
        L = int(rng.integers(1, 3000))
        T = int(rng.integers(8, 600))
        d = int(rng.choice([1, 2, 8, 16, 32]))
        ov = float(rng.choice([0, 0.0625, 0.25, 0.5]))
        plan = plan_tiles((L,), T, ov, d)
        t, starts, P = plan.tile_shape[0], plan.starts[0], plan.padded_shape[0]
        assert t % d == 0 and t <= max(d, T // d * d)
        assert starts[0] == 0 and starts[-1] + t == P and P >= L
        if len(starts) == 1:
            assert P == t and P - L < d  # small image: padded to the next multiple of divisor only
        else:
            T_d = max(d, T // d * d)
            need = min(round(ov * T_d), T_d - 1)
            assert P == L
            assert all(a + t - b >= need for a, b in zip(starts, starts[1:]))


def test_plan_square_yx_for_rotation_tta():
    plain = plan_tiles((100, 130), 48, 0.0625, 8)
    square = plan_tiles((100, 130), 48, 0.0625, 8, square_yx=True)
    assert plain.tile_shape[0] != plain.tile_shape[1]
    assert square.tile_shape == (max(plain.tile_shape),) * 2
    assert [len(s) for s in square.starts] == [len(s) for s in plain.starts]  # same tile count
    for L, t, st in zip((100, 130), square.tile_shape, square.starts):
        assert st[-1] + t == L
    # TTA with a square requested tile runs all 8 dihedral transforms on such an image.
    fwd = Counting(identity)
    img = rand_image((100, 130, 1))
    out = sliding_window_predict(img, fwd, out_channels=1, tile_size=48, divisor=8, tta=True, batch_size=100)
    assert fwd.calls == 8
    np.testing.assert_allclose(out[0], img[..., 0], atol=1e-5)


def test_plan_small_image_pads():
    plan = plan_tiles((100, 37), (256, 256), 0.1, 16)
    assert plan.tile_shape == (112, 48) and plan.padded_shape == (112, 48) and len(plan.tiles) == 1


# ---------------------------------------------------------------------------- exact reconstruction


@pytest.mark.parametrize(
    "shape, tile, divisor",
    [
        ((333, 517, 1), 128, 1),
        ((333, 517, 1), 128, 16),
        ((37, 70, 91, 1), (16, 32, 32), 8),
        ((50, 60, 1), 256, 16),  # smaller than one tile: padded, then cropped
        ((5, 3, 1), 64, 8),  # too small for reflect padding: edge
        ((7, 20, 25, 1), 64, 8),  # 3D smaller than a tile
    ],
)
def test_identity_reproduces_image(shape, tile, divisor):
    img = rand_image(shape)
    out = sliding_window_predict(
        img, identity, out_channels=1, tile_size=tile, overlap=0.25, divisor=divisor, batch_size=3
    )
    assert out.shape == (1, *shape[:-1]) and out.dtype == np.float32
    np.testing.assert_allclose(out[0], img[..., 0], atol=1e-5)


def test_identity_multichannel_and_affine():
    img = rand_image((121, 203, 3))
    out = sliding_window_predict(img, identity, out_channels=3, tile_size=64, overlap=0.125)
    np.testing.assert_allclose(out, np.moveaxis(img, -1, 0), atol=1e-5)

    img1 = img[..., :1]
    out = sliding_window_predict(img1, affine, out_channels=2, tile_size=(48, 80), overlap=0.2, divisor=16)
    np.testing.assert_allclose(out[0], img1[..., 0] * 2 + 1, atol=1e-5)
    np.testing.assert_allclose(out[1], img1[..., 0] ** 2, atol=1e-5)


def test_preprocess_and_integer_dask_input():
    img = (rand_image((90, 110, 2)) * 1000).astype(np.uint16)
    lazy = da.from_array(img, chunks=(40, 40, 2))
    out = sliding_window_predict(lazy, identity, out_channels=2, tile_size=32, preprocess=lambda t: t / 1000.0)
    np.testing.assert_allclose(out, np.moveaxis(img, -1, 0) / 1000.0, atol=1e-5)


# ---------------------------------------------------------------------------- real conv net, seams


def small_net(dim):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d if dim == 2 else torch.nn.Conv3d
    return torch.nn.Sequential(
        conv(1, 8, 3, padding=1),
        torch.nn.ReLU(),
        conv(8, 8, 3, padding=1),
        torch.nn.ReLU(),
        conv(8, 2, 3, padding=1),
        torch.nn.Softmax(dim=1),
    ).eval()


@pytest.mark.parametrize("dim", [2, 3])
def test_conv_net_tiled_matches_whole(dim):
    shape = (200, 300) if dim == 2 else (24, 60, 70)
    tile = 64 if dim == 2 else (16, 32, 32)
    overlap = 0.25 if dim == 2 else 0.5  # a ramp several times the receptive radius (3) long
    img = rand_image((*shape, 1))
    net = small_net(dim)
    with torch.inference_mode():
        whole = net(torch.from_numpy(np.moveaxis(img, -1, 0)[None].copy()))[0].numpy()
    plan = plan_tiles(shape, tile, overlap, 1)
    out = sliding_window_predict(img, net, out_channels=2, tile_size=tile, overlap=overlap)

    # Pixels at least the receptive radius (3) away from every internal tile border see the same
    # context in their tile as in the whole image, and every tile covering them agrees: exact.
    near_border = np.zeros(shape, bool)
    for axis, starts in enumerate(plan.starts):
        t = plan.tile_shape[axis]
        for s in starts:
            for edge in (s, s + t):
                if 0 < edge < shape[axis]:
                    idx = [slice(None)] * dim
                    idx[axis] = slice(max(0, edge - 3), edge + 3)
                    near_border[tuple(idx)] = True
    diff = np.abs(out - whole).max(axis=0)
    assert near_border.any() and (~near_border).any()
    assert diff[~near_border].max() < 1e-5
    # Near tile borders the wrong (zero-padded) tile has a ramp weight close to 0: no visible seams.
    # (A single tile is off by ~0.03 there; blending brings it >10x lower.)
    assert diff.max() < 3e-3


# ---------------------------------------------------------------------------- TTA


class Counting:
    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, x):
        self.calls += 1
        return self.fn(x)


def symmetric_blur(dim):
    """A convolution with a dihedral-symmetric kernel and zero padding: exactly equivariant."""
    k1 = torch.tensor([1.0, 2.0, 1.0])
    k = k1[:, None] * k1[None, :] if dim == 2 else k1[:, None, None] * k1[None, :, None] * k1[None, None, :]
    k = (k / k.sum())[None, None]
    conv = torch.nn.functional.conv2d if dim == 2 else torch.nn.functional.conv3d
    return lambda x: conv(x, k, padding=1)


@pytest.mark.parametrize(
    "shape, tile, n_transforms",
    # shapes for which the plain plan is already square, so both runs use the same tiles
    [((120, 120), 48, 8), ((100, 130), (32, 48), 4), ((20, 50, 50), (16, 32, 32), 16)],
)
def test_tta_equivariant_equals_plain(shape, tile, n_transforms):
    img = rand_image((*shape, 1))
    fwd = Counting(symmetric_blur(len(shape)))
    plain = sliding_window_predict(img, fwd, out_channels=1, tile_size=tile, batch_size=64)
    n_batches = fwd.calls
    fwd.calls = 0
    aug = sliding_window_predict(img, fwd, out_channels=1, tile_size=tile, tta=True, batch_size=64)
    assert fwd.calls == n_transforms * n_batches
    np.testing.assert_allclose(aug, plain, atol=1e-5)
    # Identity under TTA checks that every transform is undone correctly.
    ident = sliding_window_predict(img, identity, out_channels=1, tile_size=tile, tta=True)
    np.testing.assert_allclose(ident[0], img[..., 0], atol=1e-5)


# ---------------------------------------------------------------------------- zarr output


def test_zarr_out_equals_numpy_and_lazy_view(tmp_path):
    img = rand_image((150, 170, 1))
    kw = {"out_channels": 2, "tile_size": 64, "overlap": 0.125, "batch_size": 2}
    ref = sliding_window_predict(img, affine, **kw)

    plan = plan_tiles(img.shape[:-1], 64, 0.125, 1)
    acc = ZarrAccumulator.create(tmp_path / "acc", (2, *img.shape[:-1]), plan.chunks)
    view = acc.lazy()  # taken before prediction starts, as a viewer would
    assert isinstance(view, da.Array) and view.shape == ref.shape
    assert not view.compute().any()
    seen = []

    def on_progress(done, total):
        if done == 2:
            mid = view.compute()
            seen.append(mid)
            written = np.zeros(img.shape[:-1], bool)
            for t in plan.tiles[:done]:
                written[t] = True
            assert not mid[:, ~written].any()  # zeros where no tile has landed
            assert mid[:, written].all()  # affine channel 0 is >= 1 everywhere written

    res = sliding_window_predict(img, affine, out=acc, progress=on_progress, **kw)
    assert seen and isinstance(res, zarr.Array) and res.dtype == np.float32
    np.testing.assert_allclose(res[:], ref, atol=1e-6)
    np.testing.assert_allclose(view.compute(), ref, atol=1e-6)

    # Plain path form: the accumulator is created inside.
    res2 = sliding_window_predict(img, affine, out=tmp_path / "acc2", **kw)
    np.testing.assert_allclose(res2[:], ref, atol=1e-6)
    np.testing.assert_allclose(ZarrAccumulator.open(tmp_path / "acc2").finalize(tmp_path / "p.zarr")[:], ref, atol=1e-6)


class CountingArray:
    """Wraps an array and records how many elements each read returns."""

    def __init__(self, arr):
        self.arr, self.reads = arr, []
        self.shape, self.ndim, self.dtype = arr.shape, arr.ndim, arr.dtype

    def __getitem__(self, key):
        x = np.asarray(self.arr[key])
        self.reads.append(x.size)
        return x


def test_zarr_input_read_tile_by_tile(tmp_path):
    shape = (300, 280, 2)
    data = rand_image(shape)
    z = zarr.create_array(store=str(tmp_path / "in.zarr"), shape=shape, chunks=(64, 64, 2), dtype="float32")
    z[:] = data
    src = CountingArray(z)
    tile = 64
    plan = plan_tiles(shape[:-1], tile, 0.0625, 16)
    assert len(plan.tiles) > 2 * 2  # more tiles than one batch

    res = sliding_window_predict(
        src, identity, out_channels=2, tile_size=tile, divisor=16, batch_size=2, out=tmp_path / "out"
    )
    one_tile = int(np.prod(plan.tile_shape)) * shape[-1]
    assert len(src.reads) == len(plan.tiles)
    assert max(src.reads) <= one_tile
    np.testing.assert_allclose(res[:], np.moveaxis(data, -1, 0), atol=1e-5)


def test_out_path_must_not_exist(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(FileExistsError):
        sliding_window_predict(rand_image((20, 20, 1)), identity, out_channels=1, tile_size=16, out=tmp_path / "x")


# ---------------------------------------------------------------------------- cancel / progress


def test_cancel_after_first_batch():
    fwd = Counting(identity)
    state = {"stop": False}

    def progress(done, total):
        state["stop"] = True

    with pytest.raises(PredictionCancelled):
        sliding_window_predict(
            rand_image((100, 100, 1)),
            fwd,
            out_channels=1,
            tile_size=32,
            batch_size=2,
            cancel=lambda: state["stop"],
            progress=progress,
        )
    assert fwd.calls == 1


def test_progress_monotonic():
    calls = []
    sliding_window_predict(
        rand_image((100, 90, 1)),
        identity,
        out_channels=1,
        tile_size=32,
        batch_size=3,
        progress=lambda d, t: calls.append((d, t)),
    )
    total = len(plan_tiles((100, 90), 32, 0.0625, 1).tiles)
    done = [d for d, _ in calls]
    assert all(t == total for _, t in calls)
    assert done == sorted(set(done)) and done[-1] == total and len(calls) == -(-total // 3)


# ---------------------------------------------------------------------------- labels


def test_argmax_labels_numpy_dask_zarr(tmp_path):
    prob = rand_image((3, 40, 50))
    expected = prob.argmax(0)
    lab = argmax_labels(prob)
    assert lab.dtype == np.uint8
    np.testing.assert_array_equal(lab, expected)

    lazy = argmax_labels(da.from_array(prob, chunks=(1, 16, 16)))
    assert isinstance(lazy, da.Array) and lazy.dtype == np.uint8 and lazy.shape == (40, 50)
    np.testing.assert_array_equal(lazy.compute(), expected)

    z = zarr.create_array(store=str(tmp_path / "p.zarr"), shape=prob.shape, chunks=(3, 16, 32), dtype="float32")
    z[:] = prob
    np.testing.assert_array_equal(argmax_labels(z).compute(), expected)
    out = write_labels_zarr(z, tmp_path / "lab.zarr")
    assert out.dtype == np.uint8 and out.chunks == (16, 32)
    np.testing.assert_array_equal(out[:], expected)

    # Single-channel (sigmoid) output: foreground where p > 0.5; many classes: uint16.
    np.testing.assert_array_equal(argmax_labels(prob[:1]), prob[0] > 0.5)
    assert argmax_labels(np.zeros((300, 2, 2), np.float32)).dtype == np.uint16
