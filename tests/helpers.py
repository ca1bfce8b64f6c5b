"""Small shared helpers for the engine and CLI tests: real sample data cropped into tmp folders, tiny configs.

Imported as `from helpers import ...` (tests/conftest.py puts tests/ on sys.path). Tests live by layer: engine/, cli/, widgets/; cross-layer tests at the top.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import tifffile

from napari_bioflow.sample_data import sample_root

BBBC = sample_root() / "bbbc007_2d"
NUCLEI = sample_root() / "nuclei_3d"

# the smallest model that still learns: two levels, 8 and 16 feature maps (size divisor 2)
TINY_MODEL = {"feature_maps": [8, 16]}


def bbbc_pairs(split: str = "train") -> list[tuple[Path, Path]]:
    raws = sorted((BBBC / split / "raw").glob("*.tif"))
    return [(r, BBBC / split / "label" / r.name) for r in raws]


def read_pair(raw: Path, label: Path) -> tuple[np.ndarray, np.ndarray]:
    return tifffile.imread(raw), tifffile.imread(label)


def write_image(path: Path, data: np.ndarray) -> Path:
    """Write `data` as TIFF, PNG or zarr, chosen by the suffix of `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        tifffile.imwrite(path, data)
    elif suffix == ".png":
        from skimage.io import imsave

        imsave(str(path), data, check_contrast=False)
    elif suffix == ".zarr":
        import zarr

        arr = zarr.create_array(
            store=str(path), shape=data.shape, dtype=data.dtype, chunks=tuple(min(s, 64) for s in data.shape)
        )
        arr[...] = data
    else:
        raise ValueError(path)
    return path


def crop_folders(
    root: Path,
    split: str = "train",
    n: int | None = None,
    size: int = 128,
    suffix: str = ".tif",
    origin: tuple[int, int] = (100, 100),
    label_transform=None,
) -> tuple[Path, Path]:
    """Copy `n` real BBBC007 pairs cropped to `size` x `size` into root/raw and root/label; return both folders."""
    raw_dir, label_dir = Path(root) / "raw", Path(root) / "label"
    raw_dir.mkdir(parents=True, exist_ok=True)
    label_dir.mkdir(parents=True, exist_ok=True)
    y, x = origin
    for raw_path, label_path in bbbc_pairs(split)[:n]:
        raw, label = read_pair(raw_path, label_path)
        raw, label = raw[y : y + size, x : x + size], label[y : y + size, x : x + size]
        if label_transform is not None:
            label = label_transform(label)
        stem = raw_path.name.split(".")[0]
        write_image(raw_dir / f"{stem}{suffix}", np.ascontiguousarray(raw))
        write_image(label_dir / f"{stem}{suffix}", np.ascontiguousarray(label))
    return raw_dir, label_dir


def tiny_config(output_dir: Path, raw_dir: Path | None = None, label_dir: Path | None = None, **sections):
    """A RunConfig for a tiny, fast CPU run; `sections` are dicts merged into the config sections."""
    from napari_bioflow.config import RunConfig

    data = {"patch_size": [64, 64], "val_split": 0.25}
    if raw_dir is not None:
        data.update(train_raw=str(raw_dir), train_label=str(label_dir))
    base = {
        "name": "tiny",
        "output_dir": str(output_dir),
        "device": "cpu",
        "seed": 0,
        "data": data,
        "model": {"options": dict(TINY_MODEL)},
        "train": {"epochs": 1, "patience": 0, "batch_size": 2, "steps_per_epoch": 2, "learning_rate": 3e-3},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return RunConfig.from_dict(base)


def run_all(trainer) -> list:
    return list(trainer.run())


def reports_of(reports: Iterable, cls) -> list:
    return [r for r in reports if isinstance(r, cls)]


def tree(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under `folder` with its size and modification time: to prove nothing was written over."""
    folder = Path(folder)
    if not folder.exists():
        return {}
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()
    }


def read_csv(path: Path) -> list[dict]:
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def headless_checkpoint(out_dir: Path, raw, label, steps: int = 1) -> Path:
    """A tiny 2D, 1-channel segmentation model trained headless on one (raw, label) pair of arrays: a checkpoint
    for the docks' tests (which train through the dock themselves elsewhere)."""
    from napari_bioflow.config import RunConfig
    from napari_bioflow.engine.data.sources import make_sample
    from napari_bioflow.engine.train import Trainer

    cfg = RunConfig.from_dict(
        {
            "name": "ckpt",
            "output_dir": str(out_dir),
            "device": "cpu",
            "data": {"patch_size": [64, 64]},
            "model": {"options": TINY_MODEL},
            "train": {"epochs": 1, "steps_per_epoch": steps, "batch_size": 2},
        }
    )
    trainer = Trainer(cfg, train=[make_sample(raw, "raw", cfg, label=label)])
    for _ in trainer.run():
        pass
    return trainer.best_checkpoint


def dock(viewer, widget):
    viewer.window.add_dock_widget(widget)
    return widget


def shown(widget) -> bool:
    """Whether the dock shows this field (not hidden by the workflow), whatever its parents' state."""
    return not getattr(widget, "native", widget).isHidden()


def labels_expected(prob: np.ndarray, checkpoint: Path) -> np.ndarray:
    """The labels a checkpoint's prediction should hold for probabilities `prob`: argmax, or with the background
    threshold chosen on the validation data when the checkpoint stores one (train.pick_threshold)."""
    from napari_bioflow.engine.predict.labels import argmax_labels
    from napari_bioflow.engine.train.checkpoint import read_checkpoint

    threshold = (read_checkpoint(checkpoint).get("workflow_state") or {}).get("threshold")
    return argmax_labels(prob, threshold)
