"""Issue 14, item 1: BiaPy's range of augmentations (config `augment.*`): geometric transforms move raw and label
(or image target) together, labels by nearest neighbour; intensity transforms touch the raw only; probability 0
changes nothing and draws nothing (the old defaults give the old batches); a fixed generator repeats itself; the
3D-only transforms are refused for 2D in one sentence; a real training with every transform on has a finite loss,
augmenting every batch in the training loop, on the training device."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest
import tifffile
import torch
import torch.nn.functional as F
from helpers import NUCLEI, crop_folders, reports_of, run_all, tiny_config, tree, write_image

from napari_bioflow.cli import main
from napari_bioflow.config import AugmentConfig, RunConfig
from napari_bioflow.engine.data.augment import augment
from napari_bioflow.engine.errors import InputError

OFF = {"flips": False, "rotate90": False, "intensity": 0.0}  # the default transforms, off: one transform at a time
LEVELS = (0.45, 0.6)  # the label is the raw thresholded at these levels: values 0, 3, 7
GEOMETRIC = {  # strong enough to move a 64-pixel patch visibly
    "random_rot": {"random_rot_range": (30.0, 60.0)},
    "zoom": {"zoom_range": (1.3, 1.5)},
    "shear": {"shear_range": (15.0, 25.0)},
    "elastic": {"e_alpha": (200.0, 200.0), "e_sigma": 8.0},
}
INTENSITY = {
    "g_blur": {},
    "median_blur": {},
    "gamma_contrast": {},
    "brightness": {"brightness_factor": (0.05, 0.1)},
    "contrast": {"contrast_factor": (0.05, 0.1)},
    "gaussian_noise": {},
    "poisson_noise": {},
    "dropout": {"drop_range": (0.1, 0.2)},
}


def smooth_raw(shape, seed=0) -> torch.Tensor:
    """(B, 1, *spatial) smooth random intensities in [0, 1]: a few blobs per patch."""
    g = torch.Generator().manual_seed(seed)
    b, spatial = shape[0], shape[2:]
    coarse = torch.rand(b, 1, *(max(2, s // 16) for s in spatial), generator=g)
    mode = "bicubic" if len(spatial) == 2 else "trilinear"
    x = F.interpolate(coarse, size=spatial, mode=mode, align_corners=True)
    return ((x - x.amin()) / (x.amax() - x.amin())).float()


def labels_of(x: torch.Tensor) -> torch.Tensor:
    """(B, *spatial) int64 labels 0, 3, 7 from the raw's first channel."""
    return torch.where(x[:, 0] > LEVELS[1], 7, torch.where(x[:, 0] > LEVELS[0], 3, 0)).long()


def cfg_with(name: str, **fields) -> AugmentConfig:
    return AugmentConfig(**OFF, **{f"{name}_prob": 1.0}, **fields)


def run(x, y, cfg, seed=0, target_is_image=False):
    y = None if y is None else y.clone()
    return augment(x.clone(), y, cfg, torch.Generator().manual_seed(seed), target_is_image)


@pytest.mark.parametrize("shape", [(4, 1, 64, 64), (2, 1, 16, 64, 64)], ids=["2d", "3d"])
@pytest.mark.parametrize("name", [*GEOMETRIC, "misalignment"])
def test_geometric_transforms_keep_raw_and_label_aligned(name, shape):
    if name == "misalignment" and len(shape) == 4:
        pytest.skip("3D only (refused for 2D by the config: test_3d_only_transforms_are_refused_for_2d)")
    x = smooth_raw(shape)
    y = labels_of(x)
    cfg = cfg_with(name, **GEOMETRIC.get(name, {}))
    xa, ya = run(x, y, cfg)
    assert xa.shape == x.shape and ya.shape == y.shape and ya.dtype == y.dtype
    moved = (ya != y).float().mean().item()
    assert moved > 0.02, f"{name} at probability 1 left the label (almost) where it was"
    # the label moved with the raw: thresholding the moved raw gives the moved label exactly, wherever the raw is
    # not so close to a level that bilinear (raw) and nearest (label) interpolation may fall on either side of it
    far = ((xa[:, 0] - LEVELS[0]).abs() > 0.04) & ((xa[:, 0] - LEVELS[1]).abs() > 0.04)
    assert far.float().mean() > 0.5
    assert torch.equal(labels_of(xa)[far], ya[far]), (name, (labels_of(xa) != ya)[far].float().mean())
    # ... which a misaligned pair would not do: the unmoved label against the moved raw
    assert (labels_of(xa) == y)[far].float().mean() < 0.95
    # nearest neighbour: only label values present before
    assert set(ya.unique().tolist()) <= set(y.unique().tolist())


@pytest.mark.parametrize("shape", [(3, 2, 48, 40), (2, 1, 8, 32, 24)], ids=["2d", "3d"])
def test_image_targets_get_the_same_geometry_but_not_the_intensity_changes(shape):
    """Image to image: the target moves exactly as the raw does; blur, noise, gamma... change the raw only."""
    x = smooth_raw(shape, seed=1)
    target = x.clone()
    geometry = {f"{n}_prob": 1.0 for n in GEOMETRIC} | {k: v for f in GEOMETRIC.values() for k, v in f.items()}
    if len(shape) == 5:
        geometry["misalignment_prob"] = 1.0
    geo = AugmentConfig(**geometry)  # flips, 90-degree turns and the intensity jitter stay on too
    xg, tg = run(x, target, geo, seed=5, target_is_image=True)
    assert torch.equal(xg, tg) is False  # the jitter changed the raw only ...
    xg0, tg0 = run(x, target, geo.model_copy(update={"intensity": 0.0}), seed=5, target_is_image=True)
    assert torch.allclose(xg0, tg0) and not torch.allclose(tg0, target)  # ... the geometry moved both the same
    everything = geo.model_copy(update={f"{n}_prob": 1.0 for n in INTENSITY} | {"intensity": 0.0})
    xe, te = run(x, target, everything, seed=5, target_is_image=True)
    assert torch.allclose(te, tg0), "the intensity transforms changed the target"
    assert not torch.allclose(xe, tg0, atol=1e-3), "the intensity transforms left the raw alone"


@pytest.mark.parametrize("shape", [(4, 1, 64, 64), (2, 2, 8, 32, 32)], ids=["2d", "3d"])
@pytest.mark.parametrize("name", [*INTENSITY, "missing_sections"])
def test_intensity_transforms_change_the_raw_only(name, shape):
    if name == "missing_sections" and len(shape) == 4:
        pytest.skip("3D only")
    x = smooth_raw(shape, seed=2)
    y = labels_of(x)
    xa, ya = run(x, y, cfg_with(name, **INTENSITY.get(name, {})))
    assert torch.equal(ya, y)
    assert xa.shape == x.shape and torch.isfinite(xa).all()
    assert (xa - x).abs().max() > 1e-3, f"{name} at probability 1 left the raw unchanged"
    xi, ti = run(x, x.clone(), cfg_with(name, **INTENSITY.get(name, {})), target_is_image=True)
    assert torch.equal(ti, x) and torch.equal(xi, xa)


@pytest.mark.parametrize("apply_to_mask", [False, True])
def test_cutout_fills_boxes_of_the_raw_and_optionally_the_label(apply_to_mask):
    x = smooth_raw((4, 2, 64, 64), seed=3) + 1  # no pixel is 0 before
    y = labels_of(x - 1) + 1  # nor any label
    xa, ya = run(x, y, cfg_with("cutout", cout_cval=0.0, cout_apply_to_mask=apply_to_mask, cout_size=(0.2, 0.3)))
    boxes = (xa == 0).all(dim=1)
    assert boxes.any(dim=(1, 2)).all() and not boxes.all()
    assert torch.equal(xa[:, :, ~boxes.any(0)], x[:, :, ~boxes.any(0)])
    if apply_to_mask:
        assert torch.equal(ya == 0, boxes)
    else:
        assert torch.equal(ya, y)


@pytest.mark.parametrize("shape", [(4, 1, 32, 32), (2, 1, 8, 32, 32)], ids=["2d", "3d"])
def test_probability_zero_changes_nothing_and_one_changes_every_sample(shape):
    x, g = smooth_raw(shape, seed=4), torch.Generator().manual_seed(0)
    y = labels_of(x)
    names = [*GEOMETRIC, *INTENSITY, "cutout"] + (["misalignment", "missing_sections"] if len(shape) == 5 else [])
    nothing = AugmentConfig(**OFF)
    xa, ya = augment(x.clone(), y.clone(), nothing, g)
    assert torch.equal(xa, x) and torch.equal(ya, y)
    assert torch.equal(g.get_state(), torch.Generator().manual_seed(0).get_state())  # and drew nothing
    for name in names:
        xa, _ = run(x, y, cfg_with(name, **GEOMETRIC.get(name, {}), **INTENSITY.get(name, {})), seed=1)
        changed = (xa - x).abs().flatten(1).amax(1)
        assert (changed > 1e-4).all(), (name, changed)


def test_a_fixed_generator_repeats_the_augmentation():
    x = smooth_raw((3, 1, 8, 32, 32), seed=5)
    y = labels_of(x)
    every = {f"{n}_prob": 0.7 for n in [*GEOMETRIC, *INTENSITY, "cutout", "misalignment", "missing_sections"]}
    cfg = AugmentConfig(**every)
    a, b, c = run(x, y, cfg, seed=11), run(x, y, cfg, seed=11), run(x, y, cfg, seed=12)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def _old_augment_batch(x, y, flips, rotate90, intensity, generator):
    """The augmentation before issue 14 (flips, rotate90, intensity), for labels: the reference of the defaults."""
    ndim = x.ndim - 2
    xs, ys = [], []
    for i in range(x.shape[0]):
        xi, yi = x[i], y[i]
        if flips:
            for ax in range(ndim):
                if torch.rand((), generator=generator) < 0.5:
                    xi, yi = xi.flip(ax + 1), yi.flip(ax)
        if rotate90 and x.shape[-1] == x.shape[-2]:
            k = int(torch.randint(0, 4, (), generator=generator))
            if k:
                xi, yi = torch.rot90(xi, k, dims=(-2, -1)), torch.rot90(yi, k, dims=(-2, -1))
        xs.append(xi)
        ys.append(yi)
    x, y = torch.stack(xs), torch.stack(ys)
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    gain = 1 + intensity * (2 * torch.rand(shape, generator=generator) - 1)
    bias = intensity * (2 * torch.rand(shape, generator=generator) - 1)
    return x * gain + bias, y


@pytest.mark.parametrize("shape", [(4, 1, 32, 32), (2, 1, 8, 32, 32)], ids=["2d", "3d"])
def test_the_defaults_give_the_batches_of_before(shape):
    x = smooth_raw(shape, seed=6)
    y = labels_of(x)
    new = run(x, y, AugmentConfig(), seed=3)
    old = _old_augment_batch(x.clone(), y.clone(), True, True, 0.1, torch.Generator().manual_seed(3))
    assert torch.equal(new[0], old[0]) and torch.equal(new[1], old[1])


# ----------------------------------------------------------------------------------------- config and CLI
def test_3d_only_transforms_are_refused_for_2d(tmp_path, capsys):
    for fields, named in (
        ({"misalignment_prob": 0.5}, "augment.misalignment_prob"),
        (
            {"misalignment_prob": 0.5, "missing_sections_prob": 0.2},
            "augment.misalignment_prob and augment.missing_sections_prob",
        ),
    ):
        with pytest.raises(InputError) as e:
            RunConfig.from_dict({"ndim": 2, "augment": fields})
        assert named in str(e.value) and "3D volumes only" in str(e.value) and "\n" not in str(e.value)
    RunConfig.from_dict(
        {
            "ndim": 3,
            "data": {"patch_size": [8, 32, 32]},
            "augment": {"misalignment_prob": 0.5, "missing_sections_prob": 0.2},
        }
    )  # fine in 3D
    out = tmp_path / "runs"
    path = tmp_path / "bad.yaml"
    path.write_text(f"output_dir: {out}\naugment:\n  missing_sections_prob: 0.3\n")
    before = path.read_text()
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err and "augment.missing_sections_prob" in err and "2D" in err
    assert path.read_text() == before and not out.exists()


@pytest.mark.parametrize(
    "fields, words",
    [
        ({"zoom_range": [1.2, 0.8]}, "field 'augment.zoom_range': [1.2, 0.8] must be [low, high] with low <= high"),
        ({"zoom_range": [0.0, 1.2]}, "field 'augment.zoom_range': [0.0, 1.2] must lie above 0"),
        ({"drop_range": [0.1, 1.5]}, "field 'augment.drop_range': [0.1, 1.5] must lie within [0, 1]"),
        ({"elastic_prob": 1.5}, "field 'augment.elastic_prob'"),
        ({"affine_mode": "wrap"}, "field 'augment.affine_mode'"),
    ],
)
def test_bad_augmentation_settings_are_one_sentence(fields, words):
    with pytest.raises(InputError) as e:
        RunConfig.from_dict({"augment": fields})
    assert words in str(e.value) and "\n" not in str(e.value)


def test_ranges_load_from_yaml_and_save_back(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("augment:\n  random_rot_prob: 0.5\n  random_rot_range: [-30, 30]\n  mb_kernel: [3, 5]\n")
    cfg = RunConfig.load(path)
    assert cfg.augment.random_rot_range == (-30.0, 30.0) and cfg.augment.mb_kernel == (3, 5)
    assert RunConfig.load(cfg.save(tmp_path / "again.yaml")) == cfg


# ----------------------------------------------------------------------------------------- real training
ALL_2D = {f"{n}_prob": 0.5 for n in [*GEOMETRIC, *INTENSITY, "cutout"]}


def test_training_with_every_2d_transform_has_a_finite_loss_and_augments_every_batch_in_the_loop(tmp_path, monkeypatch):
    from napari_bioflow.engine.train import EpochReport, StepReport, Trainer
    from napari_bioflow.engine.workflows.base import Workflow

    calls = []
    original = Workflow.augment

    def recorded(self, x, y, cfg, generator):  # the real augmentation, noting where it runs
        calls.append((threading.current_thread().name, x.device.type, tuple(x.shape)))
        return original(self, x, y, cfg, generator)

    monkeypatch.setattr(Workflow, "augment", recorded)
    raw_dir, label_dir = crop_folders(tmp_path / "data", n=3, size=96)
    cfg = tiny_config(
        tmp_path / "runs",
        raw_dir,
        label_dir,
        augment=ALL_2D | {"cout_apply_to_mask": True},
        train={"epochs": 2, "steps_per_epoch": 3},
    )
    reports = run_all(Trainer(cfg))
    losses = [r.loss for r in reports_of(reports, StepReport)] + [
        r.train_loss for r in reports_of(reports, EpochReport)
    ]
    assert len(losses) == 8 and all(math.isfinite(v) for v in losses)
    # every training batch (2 epochs x 3 steps), in the thread that runs the trainer (not the prefetch thread),
    # on the training device, batched
    assert calls == [(threading.current_thread().name, "cpu", (2, 1, 64, 64))] * 6


def test_training_3d_with_every_transform_has_a_finite_loss(tmp_path):
    from napari_bioflow.engine.train import EpochReport, Trainer

    raw = tifffile.imread(NUCLEI / "train/raw/nuclei_train.tif")[:16, :64, :64]
    label = tifffile.imread(NUCLEI / "train/label/nuclei_train.tif")[:16, :64, :64]
    for i in range(2):
        write_image(tmp_path / f"vol/raw/v{i}.tif", raw)
        write_image(tmp_path / f"vol/label/v{i}.tif", (label > 0).astype(np.uint8))
    every = {f"{n}_prob": 1.0 for n in [*GEOMETRIC, *INTENSITY, "cutout", "misalignment", "missing_sections"]}
    cfg = tiny_config(
        tmp_path / "runs",
        tmp_path / "vol/raw",
        tmp_path / "vol/label",
        ndim=3,
        data={"patch_size": [8, 32, 32], "val_split": 0.5},
        augment=every | {"zoom_in_z": True},
        train={"steps_per_epoch": 2},
    )
    before = tree(tmp_path / "vol")
    epochs = reports_of(run_all(Trainer(cfg)), EpochReport)
    assert len(epochs) == 1 and math.isfinite(epochs[0].train_loss) and math.isfinite(epochs[0].val_loss)
    assert tree(tmp_path / "vol") == before
