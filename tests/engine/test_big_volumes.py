"""Big data: prediction bounded by the tiles (chunk-aligned tiles, whole-chunk writes, overlaps spilled beyond a
budget, inputs read chunk by chunk in bands) and training that samples zarr / dask volumes without loading them."""

import tracemalloc

import dask.array as da
import numpy as np
import pytest
import torch
import zarr

from napari_bioflow.engine.predict import ZarrAccumulator, plan_tiles, sliding_window_predict
from napari_bioflow.engine.predict import accumulator as A
from napari_bioflow.engine.predict import sliding_window as P


def rand_image(shape, seed=0):
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def small_net(dim):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d if dim == 2 else torch.nn.Conv3d
    return torch.nn.Sequential(
        conv(1, 4, 3, padding=1), torch.nn.ReLU(), conv(4, 2, 3, padding=1), torch.nn.Softmax(dim=1)
    ).eval()


def two_class(x):
    return torch.cat([x, 1 - x], 1)


class Recording:
    """Wraps an array; records every read (the selection and its size) and write."""

    def __init__(self, arr):
        self.arr, self.reads, self.writes = arr, [], []
        self.shape, self.ndim, self.dtype = arr.shape, arr.ndim, arr.dtype
        if hasattr(arr, "chunks"):
            self.chunks = arr.chunks

    def __getitem__(self, key):
        x = np.asarray(self.arr[key])
        self.reads.append((key, x.size))
        return x

    def __setitem__(self, key, value):
        self.writes.append(key)
        self.arr[key] = value


# ---------------------------------------------------------------------------- plan: tiles on chunk boundaries


@pytest.mark.parametrize("seed", range(3))
def test_tiles_start_on_chunk_boundaries(seed):
    rng = np.random.default_rng(seed)
    aligned = tested = 0
    for _ in range(300):
        L = int(rng.integers(20, 3000))
        T = int(rng.integers(8, 300))
        d = int(rng.choice([1, 2, 8, 16]))
        ov = float(rng.choice([0.0625, 0.125, 0.25]))
        plan = plan_tiles((L,), T, ov, d)
        (starts,), t, (c,) = plan.starts, plan.tile_shape[0], plan.chunks
        if len(starts) < 3:
            continue
        tested += 1
        assert starts[-1] + t == L
        if any(s != i * c for i, s in enumerate(starts[:-1])):  # the even-spread fallback of tiny axes
            continue
        aligned += 1
        # every chunk is covered by at most 2 tiles (3 at the image end, where the last tile is flush)
        covers = [sum(1 for s in starts if s < min((j + 1) * c, L) and s + t > j * c) for j in range(-(-L // c))]
        assert max(covers[:-3], default=0) <= 2 and max(covers) <= 3, (L, T, d, ov, starts, c, covers)
    assert aligned >= 0.95 * tested


def test_axis_weights_normalised_and_one_inside():
    plan = plan_tiles((37, 300, 517), (16, 64, 96), 0.125, 8)
    for axis in range(3):
        total = np.zeros(plan.padded_shape[axis], np.float64)
        for s, w in zip(plan.starts[axis], plan.axis_weights(axis)):
            total[s : s + plan.tile_shape[axis]] += w
        np.testing.assert_allclose(total, 1.0, atol=1e-6)
        starts, t = plan.starts[axis], plan.tile_shape[axis]
        for i, w in enumerate(plan.axis_weights(axis)):
            lo = starts[i - 1] + t - starts[i] if i > 0 else 0
            hi = starts[i] + t - starts[i + 1] if i < len(starts) - 1 else 0
            assert np.all(w[lo : t - hi] == 1.0)  # outside the overlaps a tile's value is taken as is


def test_traversal_largest_axis_outermost_rows_along_x():
    plan = plan_tiles((40, 300, 200), (16, 64, 64), 0.125, 1)
    assert plan.axis_order == (1, 0, 2)  # Y (300) outermost, then Z, X innermost
    order = plan.traversal
    assert sorted(order) == list(range(len(plan.tiles)))
    grid = [plan.grid[k] for k in order]
    assert grid == sorted(grid, key=lambda g: (g[1], g[0], g[2]))
    assert plan_tiles((300, 200), 64).traversal == list(range(len(plan_tiles((300, 200), 64).tiles)))  # 2D: C order


# ---------------------------------------------------------------------------- zarr output: values, chunk writes


@pytest.mark.parametrize("dim", [2, 3])
def test_zarr_tiled_matches_numpy_and_whole(tmp_path, dim):
    shape = (300, 410) if dim == 2 else (40, 90, 100)
    tile = 96 if dim == 2 else (16, 48, 48)
    img = rand_image((*shape, 1))
    net = small_net(dim)
    with torch.inference_mode():
        whole = net(torch.from_numpy(np.moveaxis(img, -1, 0)[None].copy()))[0].numpy()
    kw = {"out_channels": 2, "tile_size": tile, "overlap": 0.25, "batch_size": 2}
    in_ram = sliding_window_predict(img, net, **kw)
    on_disk = sliding_window_predict(img, net, out=tmp_path / "o", **kw)
    np.testing.assert_allclose(on_disk[:], in_ram, atol=1e-6)
    plan = plan_tiles(shape, tile, 0.25, 1)
    assert on_disk.chunks == (2, *plan.chunks)
    # away from the tile borders (receptive radius 2) the tiles see what the whole image sees: exact
    near = np.zeros(shape, bool)
    for axis, starts in enumerate(plan.starts):
        for s in starts:
            for edge in (s, s + plan.tile_shape[axis]):
                if 0 < edge < shape[axis]:
                    idx = [slice(None)] * dim
                    idx[axis] = slice(max(0, edge - 2), edge + 2)
                    near[tuple(idx)] = True
    diff = np.abs(in_ram - whole).max(axis=0)
    assert (~near).any() and diff[~near].max() < 1e-5
    assert diff.max() < 5e-2


def test_every_chunk_written_once_and_never_read(tmp_path):
    img = rand_image((30, 70, 90, 1))
    plan = plan_tiles(img.shape[:-1], (16, 32, 32), 0.125, 1)
    acc = ZarrAccumulator.create(tmp_path / "acc", (2, *img.shape[:-1]), plan.chunks)
    acc.sum = Recording(acc.sum)
    res = sliding_window_predict(img, two_class, out=acc, out_channels=2, tile_size=(16, 32, 32), overlap=0.125)
    assert not acc.sum.reads
    starts = [tuple(k[i].start for i in range(1, 4)) for k in acc.sum.writes]
    n_chunks = np.prod([-(-n // c) for n, c in zip(img.shape[:-1], plan.chunks)])
    assert len(starts) == len(set(starts)) == n_chunks  # whole chunks, each written exactly once
    for k in acc.sum.writes:
        assert all(
            s.start % c == 0 and (s.stop - s.start == c or s.stop == n)
            for s, c, n in zip(k[1:], plan.chunks, img.shape[:-1])
        )
    np.testing.assert_allclose(
        res.arr[:] if isinstance(res, Recording) else res[:],
        np.moveaxis(np.concatenate([img, 1 - img], -1), -1, 0),
        atol=1e-6,
    )


def test_spilled_overlaps_give_the_same_result(tmp_path, monkeypatch):
    img = rand_image((36, 100, 80, 1))
    net = small_net(3)
    kw = {"out_channels": 2, "tile_size": (16, 32, 32), "overlap": 0.25, "batch_size": 3}
    ref = sliding_window_predict(img, net, **kw)
    spills = []
    original = ZarrAccumulator._spill_some

    def spy(self):
        original(self)
        spills.append(sum(1 for e in self._pending.values() if e.spill is not None))

    monkeypatch.setattr(A, "CACHE_BYTES", 200_000)  # a few overlap slabs: most must go to disk and come back
    monkeypatch.setattr(ZarrAccumulator, "_spill_some", spy)
    res = sliding_window_predict(img, net, out=tmp_path / "o", **kw)
    assert spills and max(spills) > 3
    assert not (tmp_path / "o" / "spill").exists()  # spill files are removed at the end
    np.testing.assert_allclose(res[:], ref, atol=1e-6)


def test_live_view_shows_landed_tiles_with_their_final_values(tmp_path):
    img = rand_image((20, 70, 60, 1)) + 1  # > 0 everywhere
    plan = plan_tiles(img.shape[:-1], (16, 32, 32), 0.25, 1)
    acc = ZarrAccumulator.create(tmp_path / "acc", (2, *img.shape[:-1]), plan.chunks)
    view = acc.lazy()
    expected = np.moveaxis(np.concatenate([img, 1 - img], -1), -1, 0)
    checked = []

    def on_progress(done, total):
        if done in (3, total // 2):
            mid = view.compute()
            landed = np.zeros(img.shape[:-1], bool)
            for k in plan.traversal[:done]:
                landed[plan.tiles[k]] = True
            # pointwise model: wherever a tile landed, the blend of the tiles landed so far is the value itself
            np.testing.assert_allclose(mid[:, landed], expected[:, landed], atol=1e-5)
            assert not mid[:, ~landed].any()
            checked.append(done)

    sliding_window_predict(
        img,
        two_class,
        out=acc,
        out_channels=2,
        tile_size=(16, 32, 32),
        overlap=0.25,
        batch_size=1,
        progress=on_progress,
    )
    assert len(checked) == 2
    np.testing.assert_allclose(view.compute(), expected, atol=1e-6)
    # napari and dask index the view with integers, steps and Ellipsis
    live = A._LiveView(acc)
    for key in [
        (1, 5),
        (slice(None), 3, slice(10, 20), slice(None, None, 2)),
        (Ellipsis, 7),
        (0, slice(None, None, -3)),
        (slice(None), [2, 0, 9]),
        (-1, -2, slice(5, 1, -1)),
    ]:
        np.testing.assert_allclose(live[key], expected[key], atol=1e-6)
        np.testing.assert_allclose(view[key].compute(), expected[key], atol=1e-6)


def test_cancel_writes_what_was_computed(tmp_path):
    img = rand_image((20, 70, 60, 1)) + 1
    state = {"n": 0}

    def cancel():
        state["n"] += 1
        return state["n"] > 4

    with pytest.raises(P.PredictionCancelled):
        sliding_window_predict(
            img,
            two_class,
            out=tmp_path / "o",
            out_channels=2,
            tile_size=(16, 32, 32),
            overlap=0.25,
            batch_size=1,
            cancel=cancel,
        )
    part = zarr.open_array(str(tmp_path / "o" / "prob"), mode="r")[:]
    assert part[0].any() and not part[0].all()  # the first tiles are there, the rest is empty


# ---------------------------------------------------------------------------- inputs read chunk by chunk, in bands


def make_zarr(path, data, chunks):
    z = zarr.create_array(store=str(path), shape=data.shape, chunks=chunks, dtype=data.dtype)
    z[:] = data
    return z


def test_zarr_input_read_by_chunks_in_bands(tmp_path):
    data = (rand_image((40, 200, 260, 1)) * 1000).astype(np.uint16)
    chunks = (16, 64, 64, 1)
    src = Recording(make_zarr(tmp_path / "in.zarr", data, chunks))
    tile = (16, 48, 48)
    plan = plan_tiles(data.shape[:-1], tile, 0.125, 1)
    res = sliding_window_predict(src, two_class, out_channels=2, tile_size=tile, preprocess=lambda t: t / 1000.0)
    np.testing.assert_allclose(res[0], data[..., 0] / 1000.0, atol=1e-6)
    # every read lies inside one input chunk
    for key, _ in src.reads:
        assert all(s.start // c == (s.stop - 1) // c for s, c in zip(key, chunks))
    # one band per row of tiles (all tiles sharing Z and Y): each chunk is read once per band over it
    rows = {(g[0], g[1]) for g in plan.grid}
    expected = 0
    for iz, iy in rows:
        z0, y0 = plan.starts[0][iz], plan.starts[1][iy]
        z1, y1 = min(z0 + plan.tile_shape[0], 40), min(y0 + plan.tile_shape[1], 200)
        expected += len(range(z0 // 16, (z1 - 1) // 16 + 1)) * len(range(y0 // 64, (y1 - 1) // 64 + 1)) * 5
    assert len(src.reads) == expected
    assert sum(n for _, n in src.reads) < 4 * data.size  # each voxel read a few times, not once per tile


def test_dask_over_zarr_read_chunkwise(tmp_path, monkeypatch):
    """The ImagePrediction path: dask over zarr; every zarr chunk is fetched once per band over it, whole."""
    data = (rand_image((40, 200, 260)) * 1000).astype(np.uint16)
    z = make_zarr(tmp_path / "in.zarr", data, (16, 64, 64))
    gets = []
    from zarr.storage import LocalStore

    original = LocalStore.get

    async def get(self, key, *a, **k):
        gets.append((str(self.root), key))
        return await original(self, key, *a, **k)

    monkeypatch.setattr(LocalStore, "get", get)
    image = da.from_array(z, chunks=z.chunks)[..., None]
    tile = (16, 48, 48)
    res = sliding_window_predict(image, two_class, out_channels=2, tile_size=tile, out=tmp_path / "o")
    np.testing.assert_allclose(res[0], data.astype(np.float32), atol=1e-3)
    input_gets = [k for root, k in gets if root.endswith("in.zarr") and k.startswith("c/")]
    counts = {}
    for key in input_gets:
        counts[key] = counts.get(key, 0) + 1
    assert len(counts) == 3 * 4 * 5  # every chunk read
    # a chunk (64 rows) is read by the bands of the tile rows over it (<= 3 here), never once per tile
    assert max(counts.values()) <= 3 * 2


# ---------------------------------------------------------------------------- memory bounded by the tiles


def traced_peak(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_does_not_grow_with_the_volume(tmp_path, monkeypatch):
    """numpy memory (traced) of predicting a zarr volume 4x deeper stays the same: tiles, a band, overlaps."""
    monkeypatch.setattr(A, "CACHE_BYTES", 256 * 2**10)  # the overlap slabs waiting for the next row: bounded too
    peaks, sizes = [], []
    for depth in (32, 128):
        data = (rand_image((depth, 192, 192)) * 1000).astype(np.uint16)
        z = make_zarr(tmp_path / f"in{depth}.zarr", data, (16, 96, 96))
        del data
        image = da.from_array(z, chunks=z.chunks)[..., None]
        out = tmp_path / f"o{depth}"
        peaks.append(
            traced_peak(
                lambda: sliding_window_predict(
                    image,
                    two_class,
                    out_channels=2,
                    tile_size=(16, 64, 64),
                    overlap=0.125,
                    out=out,
                    preprocess=lambda t: t / 1000.0,
                )
            )
        )
        sizes.append(2 * depth * 192 * 192 * 4)  # bytes of the float32 result
    assert peaks[1] < 1.25 * peaks[0] + 2**20, peaks
    assert peaks[1] < sizes[1] / 4, (peaks, sizes)


# ---------------------------------------------------------------------------- ImagePrediction on a zarr volume


def pointwise_checkpoint():
    from napari_bioflow.config import RunConfig
    from napari_bioflow.engine.data.normalize import Normalizer
    from napari_bioflow.engine.train.checkpoint import LoadedModel

    class Pointwise(torch.nn.Module):
        size_divisor = 1

        def forward(self, x):
            return torch.cat([x, -x], 1)

    cfg = RunConfig.model_validate(
        {"ndim": 3, "device": "cpu", "data": {"patch_size": [8, 32, 32]}, "predict": {"tile_size": [16, 48, 48]}}
    )
    return LoadedModel(Pointwise(), cfg, Normalizer("percentile", [100.0], [900.0]))


def test_image_prediction_of_a_zarr_volume(tmp_path):
    from napari_bioflow.engine.data.io import open_image
    from napari_bioflow.engine.predict.inference import ImagePrediction

    data = (rand_image((40, 130, 150)) * 1000).astype(np.uint16)
    make_zarr(tmp_path / "vol.zarr", data, (16, 64, 64))
    loaded = pointwise_checkpoint()
    job = ImagePrediction(loaded, open_image(tmp_path / "vol.zarr"), "vol", tmp_path / "out", "vol")
    view = job.lazy()
    result = job.run()
    job.cleanup()
    x = (data.astype(np.float32) - 100) / 900
    prob = torch.softmax(torch.from_numpy(np.stack([x, -x])), 0).numpy()
    store = tmp_path / "out" / "per_image" / "vol.zarr"
    assert not (store / "accumulator").exists()
    written = zarr.open_array(str(store / "prediction"), mode="r")
    assert written.chunks == (2, *job.plan.chunks)
    np.testing.assert_allclose(written[:], prob, atol=1e-6)
    np.testing.assert_allclose(view.compute(), prob, atol=1e-6)  # the live view still reads the final array
    np.testing.assert_array_equal(np.asarray(result.outputs["labels"][:]), (x < 0).astype(np.uint8))


# ---------------------------------------------------------------------------- training from zarr without loading


def write_volume_folders(root, shape=(32, 256, 256), chunks=(8, 64, 64)):
    rng = np.random.default_rng(0)
    (root / "raw").mkdir(parents=True)
    (root / "label").mkdir(parents=True)
    raw = zarr.create_array(store=str(root / "raw" / "vol.zarr"), shape=shape, chunks=chunks, dtype="uint16")
    lab = zarr.create_array(store=str(root / "label" / "vol.zarr"), shape=shape, chunks=chunks, dtype="uint8")
    for z0 in range(0, shape[0], chunks[0]):
        block = rng.integers(0, 1000, (chunks[0], *shape[1:]), dtype=np.uint16)
        raw[z0 : z0 + chunks[0]] = block
        lab[z0 : z0 + chunks[0]] = (block > 990).astype(np.uint8)  # sparse foreground
    return shape, chunks


def test_patch_sampling_reads_only_the_chunks_under_patches(tmp_path, monkeypatch):
    from zarr.storage import LocalStore

    from napari_bioflow.config import RunConfig
    from napari_bioflow.engine.data.sampling import PatchSampler
    from napari_bioflow.engine.data.sources import samples_from_folders

    shape, chunks = write_volume_folders(tmp_path, shape=(32, 512, 512))
    cfg = RunConfig.model_validate({"ndim": 3, "data": {"patch_size": [8, 32, 32]}})
    samples = samples_from_folders(tmp_path / "raw", tmp_path / "label", cfg, "training", [])
    gets = []
    original = LocalStore.get

    async def get(self, key, *a, **k):
        gets.append((str(self.root), key))
        return await original(self, key, *a, **k)

    monkeypatch.setattr(LocalStore, "get", get)
    sampler = PatchSampler(samples, cfg.data.patch_size, lambda x: x.astype(np.float32), seed=0)
    for _ in range(5):
        x, y = sampler.batch(2)
        assert x.shape == (2, 1, 8, 32, 32) and y.shape == (2, 8, 32, 32)
    raw_chunks = {k for root, k in gets if "raw" in root and k.startswith("c")}
    n_chunks = np.prod([s // c for s, c in zip(shape, chunks)])
    assert 0 < len(raw_chunks) <= 10 * 8 < n_chunks  # 10 patches touch at most 8 chunks each


def test_foreground_sampling_of_a_zarr_label_is_chunkwise(tmp_path):
    from napari_bioflow.config import RunConfig
    from napari_bioflow.engine.data import sampling
    from napari_bioflow.engine.data.sampling import PatchSampler
    from napari_bioflow.engine.data.sources import samples_from_folders

    shape, _ = write_volume_folders(tmp_path, shape=(32, 512, 512), chunks=(8, 128, 128))
    cfg = RunConfig.model_validate({"ndim": 3, "data": {"patch_size": [8, 32, 32]}})
    (sample,) = samples_from_folders(tmp_path / "raw", tmp_path / "label", cfg, "training", [])
    label = np.asarray(zarr.open_array(str(tmp_path / "label" / "vol.zarr"), mode="r")[:])
    sampler = PatchSampler([sample], cfg.data.patch_size, lambda x: x.astype(np.float32), seed=0, foreground=1.0)
    peak = traced_peak(lambda: sampler.batch(4))
    assert peak < label.nbytes  # never the whole label (the old path held it twice, plus its argwhere)
    pts = sampler._fg[0]
    assert len(pts) == min(np.count_nonzero(label), sampling.FOREGROUND_POINTS)
    assert np.all(label[tuple(pts.T)] > 0)
    _, y = sampler.batch(8)
    assert all(patch.any() for patch in y)  # every patch is centred on foreground


def test_foreground_subset_is_uniform_over_chunks():
    from napari_bioflow.engine.data import sampling

    label = np.zeros((4, 400, 400), np.uint8)
    label[:2] = 1  # 320k foreground voxels in the first two planes, none elsewhere
    label[2:, :200] = 1  # and 160k more
    lazy = da.from_array(label, chunks=(1, 100, 100))
    pts = sampling._foreground_by_chunks(lazy, sampling._label_blocks(lazy), np.random.default_rng(0))
    assert len(pts) == sampling.FOREGROUND_POINTS
    assert np.all(label[tuple(pts.T)] == 1)
    share = np.mean(pts[:, 0] < 2)  # 2/3 of the foreground lies in the first two planes
    assert abs(share - 2 / 3) < 0.01
    assert len({tuple(p) for p in pts}) == len(pts)


# ---------------------------------------------------------------------------- TIFF written from zarr, streamed


def test_write_tiff_streams_zarr_and_dask(tmp_path):
    import tifffile

    from napari_bioflow.engine.data.io import write_tiff

    prob = rand_image((2, 24, 256, 256))  # 12.6 MB
    z = make_zarr(tmp_path / "p.zarr", prob, (2, 8, 64, 64))
    peak = traced_peak(lambda: write_tiff(tmp_path / "p.tif", z, "CZYX"))
    assert peak < prob.nbytes / 8  # a few chunks, never the whole map
    with tifffile.TiffFile(tmp_path / "p.tif") as f:
        assert f.series[0].axes == "CZYX" and f.pages[0].compression == 1  # floats uncompressed
        np.testing.assert_array_equal(f.asarray(), prob)
    labels = (prob[0] > 0.5).astype(np.uint8)
    lz = make_zarr(tmp_path / "l.zarr", labels, (8, 64, 64))
    for name, src in (("l.tif", lz), ("l2.tif", da.from_zarr(lz))):
        write_tiff(tmp_path / name, src, "ZYX")
        with tifffile.TiffFile(tmp_path / name) as f:
            assert f.pages[0].compression == 8  # integers zlib
            np.testing.assert_array_equal(f.asarray(), labels)
    assert not list(tmp_path.glob("*.part"))


def mapped_rss_kb(path) -> int:
    """Resident kB of this process's mappings of `path` (/proc/self/smaps)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if len(head) >= 5 and "-" in head[0] and ":" in head[3]:  # a mapping's header line (dev is major:minor)
                inside = line.rstrip().endswith(str(path))
            elif inside and line.startswith("Rss:"):
                total += int(head[1])
    return total


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/smaps"), reason="needs /proc (Linux)")
def test_memory_mapped_tiff_input_does_not_stay_resident(tmp_path):
    import tifffile

    from napari_bioflow.engine.data.io import open_image
    from napari_bioflow.engine.data.sources import to_channels_last

    path = tmp_path / "vol.tif"
    data = (rand_image((128, 512, 512)) * 1000).astype(np.uint16)  # 64 MB
    tifffile.imwrite(path, data)
    image = to_channels_last(open_image(path), 3, 1, "vol")
    assert isinstance(image, np.memmap)
    seen = []
    res = sliding_window_predict(
        image,
        two_class,
        out_channels=2,
        tile_size=(16, 64, 64),
        out=tmp_path / "o",
        preprocess=lambda t: t / 1000.0,
        progress=lambda d, t: seen.append(mapped_rss_kb(path)),
    )
    np.testing.assert_allclose(res[0, ::7, ::13, ::11], data[::7, ::13, ::11] / 1000.0, atol=1e-6)
    assert max(seen) * 1024 < data.nbytes / 4, max(seen)  # a few rows of tiles, not the whole file
    assert mapped_rss_kb(path) * 1024 < data.nbytes / 8


def test_training_on_a_zarr_folder_never_loads_the_volume(tmp_path):
    """The whole Trainer (checks, normalization statistics, foreground sampling, patches, validation) on a 128 MB
    zarr volume: numpy memory stays far below the volume (it would be 256 MB as float32)."""
    from napari_bioflow.config import RunConfig
    from napari_bioflow.engine.train import DoneReport, Trainer

    write_volume_folders(tmp_path / "train", shape=(64, 1024, 1024), chunks=(16, 256, 256))
    write_volume_folders(tmp_path / "val", shape=(16, 128, 128), chunks=(16, 128, 128))

    def config(name: str, train: str):
        return RunConfig.model_validate(
            {
                "name": name,
                "output_dir": str(tmp_path / "runs"),
                "device": "cpu",
                "ndim": 3,
                "model": {"name": "unet", "options": {"feature_maps": [2], "kernel_size": 1}},
                "data": {
                    "train_raw": str(tmp_path / train / "raw"),
                    "train_label": str(tmp_path / train / "label"),
                    "val_raw": str(tmp_path / "val" / "raw"),
                    "val_label": str(tmp_path / "val" / "label"),
                    "patch_size": [8, 64, 64],
                    "foreground_sampling": 0.5,
                },
                "train": {"epochs": 1, "steps_per_epoch": 2, "batch_size": 2},
            }
        )

    # a first run on the small volume imports what training needs (tens of MB of traced Python objects)
    assert any(isinstance(r, DoneReport) for r in Trainer(config("warm_up", "val")).run())
    done = []
    peak = traced_peak(
        lambda: done.extend(r for r in Trainer(config("big", "train")).run() if isinstance(r, DoneReport))
    )
    assert done and done[0].checkpoint.exists()
    assert peak < 48 * 2**20, peak / 2**20


def test_image_prediction_with_tiffs_and_iou_stays_within_chunks(tmp_path):
    """The whole ImagePrediction (sliding window, labels, probability and label TIFFs, IoU against a zarr label)
    traces a fraction of the probabilities' size: the TIFFs are streamed from the zarr arrays, not loaded."""
    import tifffile

    from napari_bioflow.engine.data.io import open_image
    from napari_bioflow.engine.predict.inference import ImagePrediction

    data = (rand_image((32, 256, 256)) * 1000).astype(np.uint16)
    make_zarr(tmp_path / "vol.zarr", data, (16, 64, 64))
    make_zarr(tmp_path / "lab.zarr", (data < 100).astype(np.uint8), (16, 64, 64))
    loaded = pointwise_checkpoint()
    job = ImagePrediction(
        loaded,
        open_image(tmp_path / "vol.zarr"),
        "vol",
        tmp_path / "out",
        "vol",
        target=open_image(tmp_path / "lab.zarr"),
        target_name="lab.zarr",
    )
    results = []
    peak = traced_peak(lambda: results.append(job.run()))
    job.cleanup()
    prob_bytes = 2 * data.size * 4
    assert peak < prob_bytes / 4, (peak, prob_bytes)
    prob = tifffile.imread(tmp_path / "out" / "per_image" / "vol.tif")
    written = zarr.open_array(str(tmp_path / "out" / "per_image" / "vol.zarr" / "prediction"), mode="r")
    np.testing.assert_array_equal(prob, written[:])
    labels = tifffile.imread(tmp_path / "out" / "per_image_binarized" / "vol.tif")
    np.testing.assert_array_equal(labels, (data < 100).astype(np.uint8))  # x < 0: intensity below the offset
    assert results[0].metrics["iou_mean"] == pytest.approx(1.0)


@pytest.mark.parametrize("z_filter, yz_filter", [(3, 0), (0, 5), (3, 3)])
def test_3d_median_filters_are_exact_across_chunks(tmp_path, z_filter, yz_filter):
    """BiaPy's 3D post-processing (Z, and Y-Z median filters of the argmax labels) computed chunk by chunk with
    overlap equals the filter of the whole label volume; the filtered labels are their own output (post-processing),
    beside the labels, which stay as predicted."""
    import tifffile

    from napari_bioflow.engine.data.io import open_image
    from napari_bioflow.engine.predict.inference import ImagePrediction
    from napari_bioflow.engine.workflows.semantic import median_filter_labels

    data = (rand_image((40, 130, 150)) * 1000).astype(np.uint16)
    make_zarr(tmp_path / "vol.zarr", data, (16, 64, 64))
    loaded = pointwise_checkpoint()
    cfg = loaded.config
    loaded.config = cfg.model_copy(
        update={"predict": cfg.predict.model_copy(update={"z_filter": z_filter, "yz_filter": yz_filter})}
    )
    job = ImagePrediction(loaded, open_image(tmp_path / "vol.zarr"), "vol", tmp_path / "out", "vol")
    result = job.run()
    job.cleanup()
    raw_labels = (data < 100).astype(np.uint8)  # the pointwise net's argmax
    expected = median_filter_labels(raw_labels, z_filter, yz_filter)
    assert not np.array_equal(expected, raw_labels)  # the filter changes something here
    assert len(job.plan.tiles) > 1 and result.outputs["labels"].chunks != result.outputs["labels"].shape
    np.testing.assert_array_equal(np.asarray(result.outputs["labels_post_processed"][:]), expected)
    np.testing.assert_array_equal(np.asarray(result.outputs["labels"][:]), raw_labels)
    out = tmp_path / "out"
    np.testing.assert_array_equal(tifffile.imread(out / "per_image_post_processing" / "vol.tif"), expected)
    np.testing.assert_array_equal(tifffile.imread(out / "per_image_binarized" / "vol.tif"), raw_labels)


def test_mae_prediction_streams_its_checks(tmp_path):
    """MAE prediction of a zarr image: the four MAE checks and the hidden-pixel PSNR are computed chunk by chunk
    into memory-mapped TIFFs (numpy memory below one float copy of the image), and they agree with the
    prediction zarr and the input."""
    import math

    import tifffile

    from napari_bioflow.config import RunConfig
    from napari_bioflow.engine.data.io import open_image
    from napari_bioflow.engine.data.normalize import Normalizer
    from napari_bioflow.engine.models import create_model
    from napari_bioflow.engine.predict.inference import ImagePrediction
    from napari_bioflow.engine.train.checkpoint import LoadedModel

    torch.manual_seed(0)
    options = {
        "img_size": [32, 32],
        "patch_size": 8,
        "embed_dim": 32,
        "depth": 1,
        "num_heads": 2,
        "decoder_embed_dim": 16,
        "decoder_depth": 1,
        "decoder_num_heads": 2,
    }
    model = create_model("mae", ndim=2, in_channels=1, out_channels=1, **options).eval()
    cfg = RunConfig.model_validate(
        {
            "workflow": "self_supervised",
            "ndim": 2,
            "device": "cpu",
            "self_supervised": {"pretext": "masking"},
            "data": {"patch_size": [32, 32]},
            "model": {"name": "mae", "options": options},
        }
    )
    loaded = LoadedModel(model, cfg, Normalizer("percentile", [100.0], [900.0]))
    loaded.workflow.state = {"normalization": loaded.normalizer.to_dict()}
    warm = (rand_image((256, 256), 1) * 1000).astype(np.uint16)  # the first run imports modules: not traced
    make_zarr(tmp_path / "warm.zarr", warm, (128, 128))
    ImagePrediction(loaded, open_image(tmp_path / "warm.zarr"), "warm", tmp_path / "out", "warm").run()
    data = (rand_image((1024, 1024)) * 1000).astype(np.uint16)
    make_zarr(tmp_path / "img.zarr", data, (256, 256))
    job = ImagePrediction(loaded, open_image(tmp_path / "img.zarr"), "img", tmp_path / "out", "img")
    results = []
    peak = traced_peak(lambda: results.append(job.run()))
    job.cleanup()
    # less than one float32 copy of the image (the checks alone are four, the prediction two): what is traced is
    # the tiles in flight (~2.5 MB: batches queued by the reader, bands, two output chunks), not the image
    image_bytes = data.size * 4
    assert peak < image_bytes, (peak, image_bytes)
    folder = tmp_path / "out" / "MAE_checks"
    checks = {
        n: tifffile.imread(folder / f"img_{n}.tif")[0]
        for n in ("original", "masked", "reconstruction", "reconstruction_and_visible")
    }
    pred = zarr.open_array(str(tmp_path / "out" / "per_image" / "img.zarr" / "prediction"), mode="r")[:]
    hidden = pred[1] > 0.5
    assert 0.3 < hidden.mean() < 0.7
    np.testing.assert_array_equal(checks["original"], data.astype(np.float32))
    np.testing.assert_allclose(checks["reconstruction"], pred[0] * 900 + 100, rtol=1e-6, atol=1e-3)
    np.testing.assert_array_equal(checks["masked"], np.where(hidden, 0, data).astype(np.float32))
    np.testing.assert_array_equal(
        checks["reconstruction_and_visible"], np.where(hidden, checks["reconstruction"], data)
    )
    error = np.mean((checks["reconstruction"][hidden].astype(np.float64) - data[hidden]) ** 2)
    expected = 10 * math.log10(float(np.ptp(data)) ** 2 / error)
    assert results[0].metrics["psnr_masked_patches"] == pytest.approx(expected, abs=1e-4)
    # per_image/ holds the reconstruction too (the same file, linked)
    np.testing.assert_array_equal(
        tifffile.imread(tmp_path / "out" / "per_image" / "img.tif")[0], checks["reconstruction"]
    )
