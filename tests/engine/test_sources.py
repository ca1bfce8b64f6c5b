"""Data sources (TIFF/PNG/zarr folders, arrays), channel handling, validation split, patch sampling,
normalization and augmentation, on crops of the shipped real data."""

import dask.array as da
import numpy as np
import pytest
import tifffile
import torch
import zarr
from helpers import NUCLEI, bbbc_pairs, crop_folders, read_pair, tiny_config, write_image

from napari_bioflow.engine.data.augment import augment_batch
from napari_bioflow.engine.data.io import list_images, open_image
from napari_bioflow.engine.data.normalize import Normalizer, fit_normalizer
from napari_bioflow.engine.data.sampling import PatchSampler, grid_starts, prefetch, validation_patches
from napari_bioflow.engine.data.sources import (
    build_dataset,
    folder_pairs,
    make_sample,
    samples_from_folders,
    split_validation,
    to_channels_last,
)
from napari_bioflow.engine.errors import InputError


def real_crops(n=3, size=96):
    """n different real (raw, label) crops of BBBC007."""
    out = []
    for raw_path, label_path in bbbc_pairs("train")[:n]:
        raw, label = read_pair(raw_path, label_path)
        out.append((raw[150 : 150 + size, 150 : 150 + size].copy(), label[150 : 150 + size, 150 : 150 + size].copy()))
    return out


def nuclei_crop(z=8, y=40, x=48):
    raw = tifffile.imread(NUCLEI / "train" / "raw" / "nuclei_train.tif")[:z, :y, :x].copy()
    label = tifffile.imread(NUCLEI / "train" / "label" / "nuclei_train.tif")[:z, :y, :x].copy()
    return raw, label


# --------------------------------------------------------------------------------------------- folders


def test_tiff_png_zarr_folders_pair_by_name(tmp_path):
    crops = real_crops(3)
    # each label has its raw image's name in another format (engine/data/pairing.py; mismatched names are refused in
    # test_reliability_inputs.py)
    raw_names = ["b_img.zarr", "c_img.tif", "a_img.png"]
    label_names = ["b_img.png", "c_img.zarr", "a_img.tif"]
    for (raw, label), rn, ln in zip(crops, raw_names, label_names):
        write_image(tmp_path / "raw" / rn, raw)
        write_image(tmp_path / "label" / ln, label)
    (tmp_path / "raw" / "notes.txt").write_text("not an image")  # ignored
    (tmp_path / "raw" / ".hidden.tif").write_text("ignored too")

    pairs = folder_pairs(tmp_path / "raw", tmp_path / "label", "training")
    assert [(r.name, l.name) for r, l in pairs] == [
        ("a_img.png", "a_img.tif"),
        ("b_img.zarr", "b_img.png"),
        ("c_img.tif", "c_img.zarr"),
    ]
    cfg = tiny_config(tmp_path / "out")
    notes = []
    samples = samples_from_folders(tmp_path / "raw", tmp_path / "label", cfg, "training", notes)
    assert notes == []
    expected = [crops[2], crops[0], crops[1]]  # a, b, c
    for s, (raw, label) in zip(samples, expected):
        assert s.raw.shape == (96, 96, 1)
        assert s.spatial_shape == (96, 96)
        np.testing.assert_array_equal(np.asarray(s.raw)[..., 0], raw)
        np.testing.assert_array_equal(s.read_label((slice(None), slice(None))), label)
        assert s.read_label((slice(None), slice(None))).dtype == np.int64
        assert not s.label_is_255
    assert samples[0].name.endswith("a_img.png") and samples[0].label_name.endswith("a_img.tif")


def test_zarr_is_opened_lazily_and_ome_groups_use_their_full_resolution(tmp_path):
    raw, _ = real_crops(1)[0]
    write_image(tmp_path / "plain.zarr", raw)
    arr = open_image(tmp_path / "plain.zarr")
    assert isinstance(arr, zarr.Array) and arr.shape == raw.shape
    group = zarr.open_group(str(tmp_path / "ome.zarr"), mode="w")
    group.attrs["multiscales"] = [{"version": "0.4", "datasets": [{"path": "0"}, {"path": "1"}]}]
    level0 = group.create_array("0", shape=raw.shape, dtype=raw.dtype)
    level0[...] = raw
    group.create_array("1", shape=(48, 48), dtype=raw.dtype)
    got = open_image(tmp_path / "ome.zarr")
    assert got.shape == (96, 96)
    np.testing.assert_array_equal(got[...], raw)
    # an uncompressed TIFF is memory-mapped, not read
    tifffile.imwrite(tmp_path / "m.tif", raw)
    assert isinstance(open_image(tmp_path / "m.tif"), np.memmap)


def test_list_images_messages(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        list_images(tmp_path / "nope", "training raw")
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        InputError, match=r"training raw folder .*empty holds no TIFF, PNG or zarr image or HDF5 file\.$"
    ):
        list_images(tmp_path / "empty", "training raw")
    (tmp_path / "txt").mkdir()
    (tmp_path / "txt" / "readme.md").write_text("x")
    with pytest.raises(InputError, match=r"holds 1 other file\(s\), e\.g\. readme\.md"):
        list_images(tmp_path / "txt")


# --------------------------------------------------------------------------------------------- channels


def test_channel_layouts_2d():
    yx = np.arange(40 * 50, dtype=np.uint16).reshape(40, 50)
    out = to_channels_last(yx, 2, 1, "yx")
    assert out.shape == (40, 50, 1)
    np.testing.assert_array_equal(out[..., 0], yx)

    rgb = np.stack([yx, yx + 1, yx + 2], -1)  # Y,X,3
    out = to_channels_last(rgb, 2, 3, "rgb")
    assert out.shape == (40, 50, 3)
    np.testing.assert_array_equal(out, rgb)

    chw = np.stack([yx, yx + 1, yx + 2], 0)  # 3,Y,X as napari and many TIFFs keep them
    out = to_channels_last(chw, 2, 3, "chw")
    assert out.shape == (40, 50, 3)
    np.testing.assert_array_equal(out, rgb)

    with pytest.raises(InputError, match=r"rgb has 3 channel\(s\) but the config expects 1"):
        to_channels_last(rgb, 2, 1, "rgb")
    with pytest.raises(InputError, match="yx has 1 channel"):
        to_channels_last(yx, 2, 3, "yx")


def test_channel_layouts_3d():
    raw, _ = nuclei_crop()
    out = to_channels_last(raw, 3, 1, "zyx")  # Z,Y,X
    assert out.shape == (8, 40, 48, 1)
    np.testing.assert_array_equal(out[..., 0], raw)
    two = np.stack([raw, raw.max() - raw], -1)  # Z,Y,X,2
    out = to_channels_last(two, 3, 2, "zyxc")
    assert out.shape == (8, 40, 48, 2)
    np.testing.assert_array_equal(out[..., 1], raw.max() - raw)
    # dask input stays dask (layers larger than RAM are never loaded)
    lazy = to_channels_last(da.from_array(two, chunks=(4, 20, 24, 2)), 3, 2, "dask")
    assert isinstance(lazy, da.Array) and lazy.shape == (8, 40, 48, 2)
    # wrong dimensionality in both directions
    with pytest.raises(InputError, match="that is 2D data, but the config is 3D"):
        to_channels_last(raw[0], 3, 1, "slice")
    with pytest.raises(InputError, match=r"8x40x48: that is 3D data, but the config is 2D"):
        to_channels_last(raw, 2, 1, "vol")


def test_channel_files_rgb_png_chw_tiff_and_zyxc_tiff(tmp_path):
    crops = real_crops(3)
    rgb = np.stack([c[0] for c in crops], -1)
    label = crops[0][1]
    write_image(tmp_path / "rgb" / "raw" / "a.png", rgb)
    write_image(tmp_path / "rgb" / "label" / "a.png", label)
    write_image(tmp_path / "rgb" / "raw" / "b.tif", np.moveaxis(rgb, -1, 0).copy())  # C,Y,X
    write_image(tmp_path / "rgb" / "label" / "b.tif", label)
    cfg = tiny_config(tmp_path / "out", data={"in_channels": 3})
    a, b = samples_from_folders(tmp_path / "rgb" / "raw", tmp_path / "rgb" / "label", cfg, "training", [])
    assert a.raw.shape == b.raw.shape == (96, 96, 3)
    np.testing.assert_array_equal(np.asarray(a.raw), rgb)
    np.testing.assert_array_equal(np.asarray(b.raw), rgb)

    raw, lab = nuclei_crop()
    write_image(tmp_path / "v" / "raw" / "v.tif", np.stack([raw, raw // 2], -1))
    write_image(tmp_path / "v" / "label" / "v.zarr", lab)
    cfg3 = tiny_config(tmp_path / "out", ndim=3, data={"in_channels": 2, "patch_size": [4, 16, 16]})
    (v,) = samples_from_folders(tmp_path / "v" / "raw", tmp_path / "v" / "label", cfg3, "training", [])
    assert v.raw.shape == (8, 40, 48, 2) and v.spatial_shape == (8, 40, 48)
    np.testing.assert_array_equal(np.asarray(v.raw)[..., 1], raw // 2)
    np.testing.assert_array_equal(v.read_label((slice(None),) * 3), lab)


# --------------------------------------------------------------------------------------------- labels


def test_0_255_mask_is_read_as_0_1_with_a_note(tmp_path):
    raw, label = real_crops(1)[0]
    assert set(np.unique(label)) == {0, 1}
    write_image(tmp_path / "raw" / "a.tif", raw)
    write_image(tmp_path / "label" / "a.png", (label * 255).astype(np.uint8))
    notes = []
    (s,) = samples_from_folders(tmp_path / "raw", tmp_path / "label", tiny_config(tmp_path / "o"), "training", notes)
    assert s.label_is_255
    np.testing.assert_array_equal(s.read_label((slice(None), slice(None))), label)
    assert len(notes) == 1
    assert str(tmp_path / "label" / "a.png") in notes[0] and "0/255 binary mask" in notes[0]
    # 0/255 is only binary when there are two classes: with three classes 255 is out of range
    cfg3 = tiny_config(tmp_path / "o", n_classes=3)
    with pytest.raises(InputError, match=r"a\.png holds label value 255, but there are only 3 classes"):
        samples_from_folders(tmp_path / "raw", tmp_path / "label", cfg3, "training", [])


def test_multiclass_and_float_labels(tmp_path):
    raw, label = real_crops(1)[0]
    three = label.copy()
    three[:, :10] = 2
    cfg = tiny_config(tmp_path / "o", n_classes=3)
    s = make_sample(raw, "raw layer", cfg, three.astype(np.float32), "labels layer")
    np.testing.assert_array_equal(s.read_label((slice(None), slice(None))), three)
    with pytest.raises(InputError, match="labels layer holds non-integer values"):
        make_sample(raw, "raw layer", cfg, three + np.float32(0.5), "labels layer")
    with pytest.raises(InputError, match=r"labels layer holds negative label values \(min -1\)"):
        make_sample(raw, "raw layer", cfg, three.astype(np.int16) - 1, "labels layer")


# --------------------------------------------------------------------------------------------- validation split


def test_validation_split_by_whole_images(tmp_path):
    raw_dir, label_dir = crop_folders(tmp_path / "d", n=8, size=64)
    cfg = tiny_config(tmp_path / "o", raw_dir, label_dir, data={"val_split": 0.25, "patch_size": [32, 32]})
    ds = build_dataset(cfg)
    assert len(ds.train) == 6 and len(ds.val) == 2
    names = [s.name for s in ds.train + ds.val]
    assert sorted(names) == sorted(str(p) for p in sorted(raw_dir.iterdir()))
    assert not {s.name for s in ds.train} & {s.name for s in ds.val}
    # the split is fixed by the seed and changes with it
    again = build_dataset(cfg)
    assert [s.name for s in again.val] == [s.name for s in ds.val]
    other = [[s.name for s in build_dataset(cfg.model_copy(update={"seed": seed})).val] for seed in range(1, 6)]
    assert any(o != [s.name for s in ds.val] for o in other)
    # val_split 0: everything trains
    ds0 = build_dataset(cfg.model_copy(update={"data": cfg.data.model_copy(update={"val_split": 0.0})}))
    assert len(ds0.train) == 8 and ds0.val == []


def test_validation_strip_of_a_single_image(tmp_path):
    raw_dir, label_dir = crop_folders(tmp_path / "d", n=1, size=200)
    cfg = tiny_config(tmp_path / "o", raw_dir, label_dir, data={"val_split": 0.25, "patch_size": [32, 32]})
    ds = build_dataset(cfg)
    (train,), (val,) = ds.train, ds.val
    assert train.spatial_shape == (150, 200) and val.spatial_shape == (50, 200)
    full = tifffile.imread(next(raw_dir.iterdir()))
    np.testing.assert_array_equal(np.asarray(train.raw)[..., 0], full[:150])
    np.testing.assert_array_equal(np.asarray(val.raw)[..., 0], full[150:])
    full_label = tifffile.imread(next(label_dir.iterdir()))
    np.testing.assert_array_equal(val.read_label((slice(None), slice(None))), full_label[150:])
    assert any("last 50 rows" in n for n in ds.notes)
    assert val.name.endswith("(validation part)")
    # the strip is never thinner than a patch
    cfg64 = cfg.model_copy(update={"data": cfg.data.model_copy(update={"patch_size": [64, 64]})})
    (val64,) = build_dataset(cfg64).val
    assert val64.spatial_shape == (64, 200)
    # too small to split: a clear message naming the image
    cfg128 = cfg.model_copy(update={"data": cfg.data.model_copy(update={"patch_size": [128, 128]})})
    with pytest.raises(InputError, match="too small to hold aside"):
        build_dataset(cfg128)


def test_validation_strip_3d_is_along_y():
    raw, label = nuclei_crop(z=8, y=40, x=48)
    cfg = tiny_config("/tmp/unused", ndim=3, data={"patch_size": [4, 8, 8], "val_split": 0.25})
    s = make_sample(raw, "vol", cfg, label, "vol labels")
    notes = []
    (train,), (val,) = split_validation([s], cfg, notes)
    assert train.spatial_shape == (8, 30, 48) and val.spatial_shape == (8, 10, 48)
    np.testing.assert_array_equal(np.asarray(val.raw)[..., 0], raw[:, 30:])


# --------------------------------------------------------------------------------------------- sampling


def test_patch_sampler_shapes_dtypes_and_content():
    raw, label = nuclei_crop(z=8, y=40, x=48)
    cfg = tiny_config("/tmp/unused", ndim=3, data={"patch_size": [4, 16, 24]})
    s = make_sample(da.from_array(raw, chunks=(4, 20, 24)), "vol", cfg, label, "labels")
    sampler = PatchSampler([s], [4, 16, 24], lambda x: np.asarray(x, np.float32), seed=1)
    x, y = sampler.batch(5)
    assert x.shape == (5, 1, 4, 16, 24) and x.dtype == np.float32
    assert y.shape == (5, 4, 16, 24) and y.dtype == np.int64
    assert x.flags.c_contiguous
    # a read patch is exactly the slice of the source at that start
    px, py = sampler.read(0, (2, 10, 20))
    np.testing.assert_array_equal(px[0], raw[2:6, 10:26, 20:44].astype(np.float32))
    np.testing.assert_array_equal(py, label[2:6, 10:26, 20:44])
    # same seed, same batches
    again = PatchSampler([s], [4, 16, 24], lambda x: np.asarray(x, np.float32), seed=1)
    np.testing.assert_array_equal(again.batch(5)[0], x)


def test_sampler_weights_images_by_area_and_2d_multichannel():
    crops = real_crops(2, size=96)
    cfg = tiny_config("/tmp/unused", data={"in_channels": 2, "patch_size": [32, 32]})
    big = make_sample(np.stack([crops[0][0]] * 2, -1), "big", cfg, crops[0][1])
    small = make_sample(np.stack([crops[1][0][:48, :48]] * 2, -1), "small", cfg, crops[1][1][:48, :48])
    sampler = PatchSampler([big, small], [32, 32], lambda x: np.asarray(x, np.float32), seed=0)
    assert sampler.weights.tolist() == pytest.approx([96 * 96 / (96 * 96 + 48 * 48), 48 * 48 / (96 * 96 + 48 * 48)])
    x, y = sampler.batch(3)
    assert x.shape == (3, 2, 32, 32) and y.shape == (3, 32, 32)


def foreground_fraction(sampler, n_batches=25, batch=8):
    total = 0.0
    for _ in range(n_batches):
        _, y = sampler.batch(batch)
        total += y.mean()
    return total / n_batches


def test_foreground_sampling_raises_the_foreground_fraction():
    raw_path, label_path = bbbc_pairs("test")[1]  # f96...: about 4.5 % foreground, sparse nuclei
    raw, label = read_pair(raw_path, label_path)
    cfg = tiny_config("/tmp/unused", data={"patch_size": [32, 32]})
    s = make_sample(raw, str(raw_path), cfg, label, str(label_path))
    ident = lambda x: np.asarray(x, np.float32)  # noqa: E731
    uniform = foreground_fraction(PatchSampler([s], [32, 32], ident, seed=0, foreground=0.0))
    centred = foreground_fraction(PatchSampler([s], [32, 32], ident, seed=0, foreground=1.0))
    half = foreground_fraction(PatchSampler([s], [32, 32], ident, seed=0, foreground=0.5))
    whole = label.mean()
    assert 0.02 < uniform < 0.08 and abs(uniform - whole) < 0.025
    assert centred > 0.2 and centred > 4 * uniform
    assert uniform < half < centred
    # every foreground-centred patch holds foreground (uniform 32x32 patches of this image often hold none)
    sampler = PatchSampler([s], [32, 32], ident, seed=3, foreground=1.0)
    for _ in range(20):
        _, y = sampler.batch(1)
        assert y.any()


def test_validation_patches_tile_the_images():
    assert grid_starts(100, 32) == [0, 23, 45, 68]
    assert grid_starts(32, 32) == [0] and grid_starts(20, 32) == [0]
    raw, label = nuclei_crop(z=8, y=40, x=48)
    cfg = tiny_config("/tmp/unused", ndim=3, data={"patch_size": [4, 16, 24]})
    s = make_sample(raw, "vol", cfg, label)
    pos = validation_patches([s, s], [4, 16, 24])
    # per image: z starts [0, 4], y starts [0, 12, 24], x starts [0, 24]
    assert len(pos) == 2 * 2 * 3 * 2
    assert pos[0] == (0, (0, 0, 0)) and pos[11] == (0, (4, 24, 24)) and pos[12][0] == 1
    covered = np.zeros((8, 40, 48), bool)
    for _i, (z, y, x) in pos[:12]:
        covered[z : z + 4, y : y + 16, x : x + 24] = True
    assert covered.all()
    assert len(validation_patches([s] * 10, [4, 16, 24], max_patches=64)) == 64


def test_prefetch_yields_in_order_and_passes_errors():
    counter = iter(range(100))
    assert list(prefetch(lambda: next(counter), 5)) == [0, 1, 2, 3, 4]

    def boom():
        raise RuntimeError("reader failed")

    with pytest.raises(RuntimeError, match="reader failed"):
        list(prefetch(boom, 3))


# --------------------------------------------------------------------------------------------- normalization


def test_percentile_normalizer_statistics():
    ch0 = np.arange(10000, dtype=np.float32).reshape(100, 100)
    ch1 = 5 * ch0[::-1] + 1000
    img = np.stack([ch0, ch1], -1)
    norm = fit_normalizer([img[:50], img[50:]], "percentile", 1.0, 99.8)
    assert norm.mode == "percentile"
    lo = np.percentile(img.reshape(-1, 2), 1.0, axis=0)
    hi = np.percentile(img.reshape(-1, 2), 99.8, axis=0)
    assert norm.offset == pytest.approx(lo.tolist())
    assert norm.scale == pytest.approx((hi - lo).tolist())
    out = norm(img)
    assert out.dtype == np.float32 and out.shape == img.shape
    for c in range(2):
        assert np.percentile(out[..., c], 1.0) == pytest.approx(0.0, abs=1e-5)
        assert np.percentile(out[..., c], 99.8) == pytest.approx(1.0, abs=1e-5)
    # the statistics survive the checkpoint's dict form
    assert Normalizer.from_dict(norm.to_dict()) == norm


def test_meanstd_normalizer_statistics_and_constant_channels():
    rng = np.random.default_rng(0)
    a = rng.normal(50, 4, (64, 64, 1)).astype(np.float32)
    b = rng.normal(70, 4, (32, 64, 1)).astype(np.float32)
    norm = fit_normalizer([a, b], "meanstd")
    values = np.concatenate([a.reshape(-1), b.reshape(-1)])
    assert norm.offset[0] == pytest.approx(values.mean(), rel=1e-5)
    assert norm.scale[0] == pytest.approx(values.std(), rel=1e-4)
    out = np.concatenate([norm(a).reshape(-1), norm(b).reshape(-1)])
    assert out.mean() == pytest.approx(0.0, abs=1e-4) and out.std() == pytest.approx(1.0, rel=1e-4)
    const = np.full((16, 16, 1), 7.0, np.float32)
    for mode in ("meanstd", "percentile"):
        n = fit_normalizer([const], mode)
        assert n.scale == [1.0] and np.isfinite(n(const)).all()
    none = fit_normalizer([a], "none")
    np.testing.assert_array_equal(none(a), a)


def test_normalizer_statistics_from_a_subsample_of_big_images():
    rng = np.random.default_rng(1)
    big = rng.normal(100, 10, (1600, 1600, 1)).astype(np.float32)  # 2.56 M values: strided subsample
    norm = fit_normalizer([da.from_array(big, chunks=(400, 400, 1))], "meanstd")
    assert norm.offset[0] == pytest.approx(100, abs=0.1) and norm.scale[0] == pytest.approx(10, rel=0.01)


def test_normalizer_on_real_data_uses_the_training_percentiles():
    raw, _ = read_pair(*bbbc_pairs("train")[0])
    norm = fit_normalizer([raw[..., None]], "percentile", 1.0, 99.8)
    assert norm.offset[0] == pytest.approx(np.percentile(raw, 1.0))
    assert norm.offset[0] + norm.scale[0] == pytest.approx(np.percentile(raw, 99.8))


# --------------------------------------------------------------------------------------------- augmentation


def _relation_holds(xa, ya):
    """Every labelled pixel is brighter than every unlabelled one: labels moved with the pixels
    (the intensity jitter is an increasing affine map per sample, so the order is kept)."""
    for xi, yi in zip(xa, ya):
        fg, bg = xi[0][yi == 1], xi[0][yi == 0]
        if len(fg) and len(bg) and not fg.min() > bg.max():
            return False
    return True


@pytest.mark.parametrize("shape", [(16, 1, 24, 24), (16, 2, 24, 24), (8, 1, 6, 24, 24)])
@pytest.mark.parametrize("intensity", [0.0, 0.3])
def test_augmentation_moves_raw_and_label_together(shape, intensity):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(shape, generator=g)
    x[:, 1:] = x[:, :1]  # further channels copy the first: the jitter must treat them the same
    y = (x[:, 0] > 0.6).long()
    xa, ya = augment_batch(x, y, flips=True, rotate90=True, intensity=intensity, generator=g)
    assert xa.shape == x.shape and ya.shape == y.shape and ya.dtype == torch.long
    if intensity == 0:
        torch.testing.assert_close(ya, (xa[:, 0] > 0.6).long(), rtol=0, atol=0)
    assert _relation_holds(xa, ya)
    for c in range(1, shape[1]):
        torch.testing.assert_close(xa[:, c], xa[:, 0])
    # labels only move: each sample keeps its number of foreground pixels
    assert ya.flatten(1).sum(1).tolist() == y.flatten(1).sum(1).tolist()
    # and something really moved
    changed = [not torch.equal(ya[i], y[i]) for i in range(shape[0])]
    assert sum(changed) >= shape[0] // 2


def test_augmentation_flips_z_and_rotates_yx_only_on_square_patches():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(32, 1, 4, 8, 8, generator=g)
    y = (x[:, 0] > 0.5).long()
    xa, ya = augment_batch(x, y, flips=True, rotate90=False, intensity=0.0, generator=g)
    # each output is the input flipped along some subset of (Z, Y, X)
    seen = set()
    for i in range(32):
        for dims in [(), (1,), (2,), (3,), (1, 2), (1, 3), (2, 3), (1, 2, 3)]:
            if torch.equal(xa[i], x[i].flip(dims) if dims else x[i]):
                assert torch.equal(ya[i], y[i].flip([d - 1 for d in dims]) if dims else y[i])
                seen.add(dims)
                break
        else:
            pytest.fail(f"sample {i} is not a flip of its input")
    assert len(seen) >= 5
    # non-square Y-X patches are never rotated (the shape would change)
    x2 = torch.rand(8, 1, 8, 12, generator=g)
    y2 = (x2[:, 0] > 0.5).long()
    xa2, ya2 = augment_batch(x2, y2, flips=False, rotate90=True, intensity=0.0, generator=g)
    assert torch.equal(xa2, x2) and torch.equal(ya2, y2)


def test_augmentation_of_image_targets_and_off_switch():
    g = torch.Generator().manual_seed(2)
    x = torch.rand(8, 1, 16, 16, generator=g)
    target = x * 3  # an image target with a channel axis
    xa, ta = augment_batch(x, target, flips=True, rotate90=True, intensity=0.0, generator=g, target_is_image=True)
    torch.testing.assert_close(ta, xa * 3)
    xo, yo = augment_batch(x, target, flips=False, rotate90=False, intensity=0.0, generator=g, target_is_image=True)
    assert torch.equal(xo, x) and torch.equal(yo, target)
    # intensity only: labels untouched, raw changed by a per-sample increasing affine map
    y = (x[:, 0] > 0.5).long()
    xi, yi = augment_batch(x, y, flips=False, rotate90=False, intensity=0.2, generator=g)
    assert torch.equal(yi, y) and not torch.equal(xi, x)
    for i in range(8):
        a, b = np.polyfit(x[i].flatten().numpy(), xi[i].flatten().numpy(), 1)
        assert 0.8 - 1e-4 <= a <= 1.2 + 1e-4 and -0.2 - 1e-4 <= b <= 0.2 + 1e-4


def test_dataset_from_dask_layers(tmp_path):
    """Layers (numpy or dask arrays) go through the same checks as folders."""
    (raw, label), (raw2, label2) = real_crops(2, size=64)
    cfg = tiny_config(tmp_path / "o", data={"patch_size": [32, 32]})
    train = [
        make_sample(da.from_array(raw, chunks=32), "layer raw", cfg, da.from_array(label, chunks=32), "layer labels")
    ]
    val = [make_sample(raw2, "val raw", cfg, label2, "val labels")]
    ds = build_dataset(cfg, train, val)
    assert ds.train[0].raw.shape == (64, 64, 1) and len(ds.val) == 1
    with pytest.raises(InputError, match="layer labels has shape 64x63 but its raw image has 64x64"):
        make_sample(raw, "layer raw", cfg, label[:, :63], "layer labels")
    with pytest.raises(InputError, match="layer raw has no labels"):
        make_sample(raw, "layer raw", cfg)
