"""Arrays, dask arrays and folders become a uniform list of `Sample`s; every input check lives here.

Raw arrays are brought to channel-last axes (Z,)Y,X,C without loading them (numpy views or dask),
labels to (Z,)Y,X. All checks run before any training step, and each failure is one sentence naming
the file or layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .io import open_image
from .pairing import folder_pairs  # noqa: F401  (one pairing rule: engine/data/pairing.py)

MAX_CHANNELS = 4  # wording only (a short last axis looks like RGB): which axis holds channels is engine/data/axes.py


@dataclass
class Sample:
    name: str  # file path or layer name: used in every message
    raw: Any  # (Z,)Y,X,C array-like (numpy, memmap or dask)
    label: Any = None  # (Z,)Y,X integer array-like, or None
    label_name: str = ""
    label_is_255: bool = False  # a 0/255 binary mask, read as 0/1
    group: str = ""  # data.multiple_raw: the sample this raw image is one view of (validation keeps groups whole)

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.raw.shape[:-1])

    def read_label(self, sl) -> np.ndarray:
        lab = np.asarray(self.label[sl])
        return (lab > 0).astype(np.int64) if self.label_is_255 else lab.astype(np.int64)


@dataclass
class Dataset:
    train: list[Sample]
    val: list[Sample]
    notes: list[str] = field(default_factory=list)  # things the user should know (shown as info, not errors)


def lazy_array(arr):
    if isinstance(arr, np.ndarray):
        return arr
    import dask.array as da

    # a file decoded whole (LazyFile) is one chunk; zarr and HDF5 keep their own chunks; the file's axes go along
    if isinstance(arr, da.Array):
        return arr
    from .axes import metadata_axes, tag

    return tag(da.from_array(arr, chunks=getattr(arr, "chunks", None) or -1), metadata_axes(arr))


def to_channels_last(arr, ndim: int, in_channels: int, name: str, source: str = "", axes: str | None = None):
    """Return `arr` with axes (Z,)Y,X,C, or raise InputError for 2D/3D or channel mismatches. Which axis holds the
    channels: `axes` (data.axes), else the file's metadata, else the one whose length is `in_channels`
    (engine/data/axes.py). `source`: what fixed `in_channels` when it is not the config (e.g. "checkpoint PATH")."""
    from .axes import channels_last

    return channels_last(arr, ndim, in_channels, name, source, axes)


def check_finite(arr, name: str) -> None:
    """NaN or inf in an image: integer images cannot hold them, so only float data is scanned (chunkwise for dask)."""
    if not np.issubdtype(arr.dtype, np.floating):
        return
    ok = np.isfinite(arr).all()
    ok = bool(ok.compute() if hasattr(ok, "compute") else ok)
    if not ok:
        raise InputError(f"{name} contains NaN or infinite values.")


def make_sample(
    raw, name: str, cfg, label=None, label_name: str = "", notes: list[str] | None = None, need_label: bool = True
) -> Sample:
    """Build and check one sample from array-likes (layer data or opened files); the workflow checks the target."""
    from ..workflows import get_workflow

    notes = notes if notes is not None else []
    raw = to_channels_last(raw, cfg.ndim, cfg.data.in_channels, name, axes=cfg.data.axes)
    check_finite(raw, name)
    sample = Sample(name=name, raw=raw, label_name=label_name)
    if label is not None:
        label = lazy_array(label) if not isinstance(label, np.ndarray) else label
        sample.label = label
        flags = get_workflow(cfg).check_target(
            label, label_name or f"the labels of {name}", sample.spatial_shape, cfg, notes
        )
        for k, v in flags.items():
            setattr(sample, k, v)
    elif need_label:
        raise InputError(f"{name} has no labels.")
    return sample


def check_patch_fits(samples: Sequence[Sample], patch_size: Sequence[int]) -> None:
    for s in samples:
        if any(p > d for p, d in zip(patch_size, s.spatial_shape)):
            raise InputError(
                f"The patch size {'x'.join(map(str, patch_size))} is larger than {s.name} "
                f"({'x'.join(map(str, s.spatial_shape))}); lower data.patch_size."
            )


def samples_from_folders(
    raw_dir: Path, label_dir: Path | None, cfg, role: str, notes: list[str], need_label: bool = True
) -> list[Sample]:
    out = []
    for raw_path, label_path in folder_pairs(raw_dir, label_dir, role):
        label = open_image(label_path) if label_path is not None else None
        out.append(
            make_sample(
                open_image(raw_path), str(raw_path), cfg, label, str(label_path or ""), notes, need_label=need_label
            )
        )
    return out


def split_validation(samples: list[Sample], cfg, notes: list[str]) -> tuple[list[Sample], list[Sample]]:
    """Hold aside whole images when there are several, else a strip at the end of the single image's Y axis."""
    split = cfg.data.val_split
    if split <= 0:
        return samples, []
    groups = list(dict.fromkeys(s.group for s in samples if s.group))
    if len(groups) >= 2:  # several raw images per target: whole samples are held aside
        rng = np.random.default_rng(cfg.seed)
        n_val = max(1, int(round(split * len(groups))))
        held = {groups[i] for i in rng.permutation(len(groups))[:n_val].tolist()}
        notes.append(f"Validation: {n_val} of {len(groups)} samples held aside with all their raw images.")
        return [s for s in samples if s.group not in held], [s for s in samples if s.group in held]
    if len(samples) >= 2:
        rng = np.random.default_rng(cfg.seed)
        n_val = max(1, int(round(split * len(samples))))
        order = rng.permutation(len(samples))
        val_idx = set(order[:n_val].tolist())
        return (
            [s for i, s in enumerate(samples) if i not in val_idx],
            [s for i, s in enumerate(samples) if i in val_idx],
        )
    (s,) = samples
    y_axis = cfg.ndim - 2  # Y in both (Y,X) and (Z,Y,X)
    height, patch = s.spatial_shape[y_axis], cfg.data.patch_size[y_axis]
    strip = max(int(round(split * height)), patch)
    if height - strip < patch:
        raise InputError(
            f"{s.name} ({height} rows) is too small to hold aside a {strip}-row validation strip and still "
            f"train on {patch}-row patches: give validation data, a smaller patch size or val_split 0."
        )

    def part(sl: slice, tag: str) -> Sample:
        index = (slice(None),) * y_axis + (sl,)
        return Sample(
            name=f"{s.name} ({tag})",
            raw=s.raw[index],
            label=None if s.label is None else s.label[index],
            label_name=s.label_name,
            label_is_255=s.label_is_255,
        )

    notes.append(f"Validation: the last {strip} rows of {s.name} are held aside.")
    return [part(slice(0, height - strip), "training part")], [part(slice(height - strip, None), "validation part")]


def read_folders(cfg, raw_dir: Path, label_dir: Path | None, role: str, notes: list[str]) -> list[Sample]:
    """The samples of a raw (and label) folder: pairs by file name, or with data.multiple_raw sample sub-folders
    of several raw images sharing one target (engine/data/multi_raw.py)."""
    if not cfg.data.multiple_raw:
        return samples_from_folders(raw_dir, label_dir, cfg, role, notes, need_label=label_dir is not None)
    if label_dir is None:
        raise InputError(
            "data.multiple_raw pairs several raw images with one target, but this workflow trains without "
            "targets: turn data.multiple_raw off."
        )
    from .multi_raw import samples_multi_raw

    return samples_multi_raw(raw_dir, label_dir, cfg, role, notes)


def build_dataset(cfg, train: list[Sample] | None = None, val: list[Sample] | None = None) -> Dataset:
    """Training and validation samples from given samples (layers) or the config's folders, all checked."""
    from ..workflows import get_workflow

    notes: list[str] = []
    d = cfg.data
    needs_target = get_workflow(cfg).needs_target
    train_from_folders = train is None
    if train is None:
        if d.train_raw is None or (needs_target and d.train_label is None):
            raise InputError(
                "No training data: set data.train_raw"
                + (" and data.train_label" if needs_target else "")
                + " (or choose layers)."
            )
        train = read_folders(cfg, d.train_raw, d.train_label if needs_target else None, "training", notes)
    if not train:
        raise InputError("No training data was given.")
    if val is None and d.val_raw is not None:
        if needs_target and d.val_label is None:
            raise InputError("data.val_raw is set but data.val_label is not.")
        val = read_folders(cfg, d.val_raw, d.val_label if needs_target else None, "validation", notes)
    from .input_notes import mixed_types_note, uniform_set_note

    given = f"training image in {d.train_raw}" if train_from_folders else "training image"
    notes += [
        n
        for n in (
            mixed_types_note([(s.name, s.raw.dtype) for s in train + (val or [])], "training and validation images"),
            uniform_set_note(train, given),
        )
        if n
    ]
    if val is None:
        train, val = split_validation(train, cfg, notes)
    check_patch_fits(train + val, d.patch_size)
    return Dataset(train=train, val=val, notes=notes)
