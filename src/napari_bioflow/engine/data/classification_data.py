"""Classification data: folders with one sub-folder per class (or layers given a class each), checked before any
training step, and the TrainingData that feeds whole images, brought to the patch size, with their class."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from .io import is_image_path, open_image
from .sources import MAX_CHANNELS, Dataset, Sample, check_finite, to_channels_last
from .training_data import TrainingData


@dataclass
class ClassSample(Sample):
    class_index: int = -1  # -1: unknown (a test image without ground truth)


def natural_key(name: str):
    """Class names sort as people expect: '2' before '10', numbers before words."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t.lower()) for t in re.split(r"(\d+)", name) if t]


def class_subfolders(root: Path, role: str) -> dict[str, list[Path]]:
    """{class name: sorted image files} of a folder with one sub-folder per class; every sub-folder must hold images."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"The {role} folder {root} does not exist.")
    subs = sorted(
        (p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and p.suffix.lower() != ".zarr"),
        key=lambda p: natural_key(p.name),
    )
    if not subs:
        raise InputError(
            f"The {role} folder {root} holds no class sub-folders: put the images of each class in a "
            f"sub-folder named after the class."
        )
    out = {}
    for sub in subs:
        files = sorted(p for p in sub.iterdir() if is_image_path(p))
        if not files:
            raise InputError(
                f"The class sub-folder {sub} of the {role} folder is empty (no TIFF, PNG, zarr or HDF5 image)."
            )
        out[sub.name] = files
    return out


def _subfolders(root: Path) -> list[Path]:
    return [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and p.suffix.lower() != ".zarr"]


def images_below(root: Path) -> list[Path]:
    """Every image under `root`, at any depth (hidden folders skipped), sorted by its path inside `root`."""
    found, todo = [], [Path(root)]
    while todo:
        folder = todo.pop()
        for p in folder.iterdir():
            if p.name.startswith("."):
                continue
            if is_image_path(p):
                found.append(p)
            elif p.is_dir():
                todo.append(p)
    return sorted(found, key=lambda p: [natural_key(part) for part in p.relative_to(root).parts])


def items_of_test_folder(folder: Path, class_names: Sequence[str], role: str = "test") -> list[tuple[Path, int | None]]:
    """(file, true class index or None) of a test folder. Sub-folders named after the model's classes (all of them
    such, no loose image beside them): the true classes. Otherwise the classes are unknown and the layout does not
    matter (the reference page's rule): one folder, or images spread over sub-folders at any depth. A folder whose
    sub-folders are partly class names is refused, naming one of each: a misspelt class is not taken as no class."""
    folder = Path(folder)
    subs = _subfolders(folder) if folder.is_dir() and not is_image_path(folder) else []
    if not subs:
        from .io import list_images

        return [(f, None) for f in list_images(folder, role)]
    known = [p for p in subs if p.name in class_names]
    if not known:
        files = images_below(folder)
        if not files:
            raise InputError(f"The {role} folder {folder} and its sub-folders hold no TIFF, PNG, zarr or HDF5 image.")
        return [(f, None) for f in files]
    unknown = sorted(p.name for p in subs if p.name not in class_names)
    if unknown:
        raise InputError(
            f"The {role} sub-folder {folder / unknown[0]} is not one of the model's classes ({', '.join(class_names)})"
            f", but {known[0].name} is: name every sub-folder after a class for metrics, or none for predictions only."
        )
    loose = sorted(p.name for p in folder.iterdir() if is_image_path(p))
    if loose:
        raise InputError(
            f"The {role} folder {folder} mixes class sub-folders with loose images (e.g. {loose[0]}): "
            f"put every image in a class sub-folder, or none."
        )
    return [(f, list(class_names).index(cls)) for cls, files in class_subfolders(folder, role).items() for f in files]


def resolve_class_names(found: Sequence[str], cfg, where: str) -> list[str]:
    """The run's class order: the config's class_names when given (they must be the sub-folders), else `found`."""
    if len(found) < 2:
        raise InputError(f"The {where} holds a single class ({found[0]}); classification needs at least two classes.")
    if cfg.class_names:
        if set(cfg.class_names) != set(found):
            raise InputError(
                f"class_names {cfg.class_names} do not match the class sub-folders of the {where}: {list(found)}."
            )
        return list(cfg.class_names)
    return list(found)


def set_classes(cfg, names: list[str]) -> None:
    """Set n_classes and class_names together (the config checks that they agree on every assignment)."""
    cfg.class_names = []
    cfg.n_classes = len(names)
    cfg.class_names = list(names)


def image_dims(shape, in_channels: int, ndim: int, axes: str | None = None) -> int | None:
    """2 or 3: the dimensionality of an image of this shape, read the same way for every file of a set. With
    data.axes, its spatial letters; else an end axis of length in_channels (> 1) is the channels of a 2D image, and
    so (for the wording of a refusal) is a last axis of at most 4 (RGB, RGBA) or a first one when the config is 2D;
    otherwise three axes are a grayscale volume and four a volume with channels. None: too many axes to tell."""
    shape = tuple(shape)
    if axes and len(axes) == len(shape):
        return len(axes) - ("C" in axes)
    if len(shape) == 2:
        return 2
    if len(shape) == 3:
        if in_channels > 1 and in_channels in (shape[0], shape[-1]):
            return 2
        if shape[-1] <= MAX_CHANNELS:
            return 2
        if shape[0] <= MAX_CHANNELS and ndim == 2:
            return 2
        return 3
    return 3 if len(shape) == 4 else None


def _channels_note(shape) -> str:
    return f", {shape[-1]} channels" if len(shape) == 3 and 1 < shape[-1] <= MAX_CHANNELS else ""


def check_dims(named_shapes: Sequence[tuple[object, tuple]], cfg, role: str, source: str = "") -> None:
    """One sentence when the images of a set disagree on 2D/3D (one file of each named), or agree with each other
    but not with ndim (of the config, or of `source`: the model)."""
    found: dict[int, tuple] = {}
    for name, shape in named_shapes:
        d = image_dims(shape, cfg.data.in_channels, cfg.ndim, cfg.data.axes)
        if d is not None and d not in found:
            found[d] = (name, tuple(shape))
    if len(found) == 2:
        (n2, s2), (n3, s3) = found[2], found[3]
        raise InputError(
            f"The {role} set mixes 2D and 3D images: {n2} is 2D (shape {'x'.join(map(str, s2))}"
            f"{_channels_note(s2)}) and {n3} is 3D (shape {'x'.join(map(str, s3))}); a classification "
            f"set must be all 2D or all 3D."
        )
    if len(found) == 1:
        d, (name, shape) = next(iter(found.items()))
        if d != cfg.ndim:
            what = "every one" if len(named_shapes) > 1 else "it"
            but = f"{source} is {cfg.ndim}D." if source else f"the config is {cfg.ndim}D: set ndim: {d}."
            raise InputError(
                f"The {role} images are {d}D ({what}, e.g. {name} of shape {'x'.join(map(str, shape))}"
                f"{_channels_note(shape)}), but {but}"
            )


def checked(raw, path, cfg, source: str = ""):
    """One opened image as (Z,)Y,X,C, checked (its dimensionality against the config's ndim first)."""
    shape = tuple(raw.shape)
    d = image_dims(shape, cfg.data.in_channels, cfg.ndim, cfg.data.axes)
    if d is not None and d != cfg.ndim:
        raise InputError(
            f"{path} is a {d}D image (shape {'x'.join(map(str, shape))}{_channels_note(shape)}), but "
            f"{source or 'the config'} is {cfg.ndim}D (ndim: {cfg.ndim})."
        )
    arr = to_channels_last(raw, cfg.ndim, cfg.data.in_channels, str(path), source, cfg.data.axes)
    check_finite(arr, str(path))
    return arr


def open_checked(path: Path, cfg, role: str, source: str = "") -> object:
    """Open one image as (Z,)Y,X,C, checked. A set is checked as a whole first by `open_set`."""
    return checked(open_image(path), path, cfg, source)


def open_set(paths: Sequence[Path], cfg, role: str, source: str = "") -> list:
    """Open and check every image of a set: an unreadable file is named, then the set's 2D/3D (check_dims), then
    each image's channels and values."""
    raws = [open_image(p) for p in paths]
    check_dims([(p, r.shape) for p, r in zip(paths, raws)], cfg, role, source)
    return [checked(r, p, cfg, source) for p, r in zip(paths, raws)]


def samples_from_class_folders(root: Path, cfg, role: str, class_names: list[str] | None = None) -> list[ClassSample]:
    """Samples of a class-folder tree; with `class_names` (the model's), an unknown sub-folder is an error."""
    folders = class_subfolders(root, role)
    names = class_names if class_names is not None else list(folders)
    files, classes = [], []
    for cls, found in folders.items():
        if cls not in names:
            raise InputError(
                f"The {role} sub-folder {Path(root) / cls} is not one of the model's classes ({', '.join(names)})."
            )
        files += found
        classes += [names.index(cls)] * len(found)
    return [
        ClassSample(name=str(f), raw=raw, class_index=c)
        for f, raw, c in zip(files, open_set(files, cfg, role), classes)
    ]


def stratified_split(samples: list[ClassSample], fraction: float, seed: int, notes: list[str]):
    """Hold aside `fraction` of every class (at least one image of each class that has two or more)."""
    if fraction <= 0:
        return samples, []
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in sorted({s.class_index for s in samples}):
        members = [s for s in samples if s.class_index == c]
        n_val = min(len(members) - 1, max(1, int(round(fraction * len(members)))))
        order = rng.permutation(len(members))
        val += [members[i] for i in order[:n_val]]
        train += [members[i] for i in order[n_val:]]
    notes.append(f"Validation: {len(val)} of {len(samples)} images held aside ({fraction:.0%} of each class).")
    return train, val


def build_class_dataset(cfg, train: list[ClassSample] | None = None, val: list[ClassSample] | None = None) -> Dataset:
    notes: list[str] = []
    d = cfg.data
    if d.multiple_raw:
        raise InputError(
            "data.multiple_raw pairs several raw images with one target; classification takes one class per image "
            "from its class sub-folders: turn data.multiple_raw off."
        )
    if train is None:
        if d.train_raw is None:
            raise InputError(
                "No training data: set data.train_raw to a folder with one sub-folder per class (or choose layers)."
            )
        names = resolve_class_names(
            list(class_subfolders(d.train_raw, "training")), cfg, f"training folder {d.train_raw}"
        )
        set_classes(cfg, names)
        train = samples_from_class_folders(d.train_raw, cfg, "training", names)
    else:
        if not train:
            raise InputError("No training images were given.")
        classes = {s.class_index for s in train}
        if len(classes) < 2:
            raise InputError(
                f"All training images are of class {cfg.class_label(next(iter(classes)))}; classification "
                f"needs at least two classes."
            )
        if max(classes) >= cfg.n_classes or min(classes) < 0:
            raise InputError(f"A training image has class index {max(classes)}, but there are {cfg.n_classes} classes.")
    if val is None and d.val_raw is not None:
        val = samples_from_class_folders(
            d.val_raw, cfg, "validation", [cfg.class_label(i) for i in range(cfg.n_classes)]
        )
    if val is None:
        train, val = stratified_split(train, d.val_split, cfg.seed, notes)
    counts = np.bincount([s.class_index for s in train], minlength=cfg.n_classes)
    notes.append(
        "Training images per class: " + ", ".join(f"{cfg.class_label(i)} {n}" for i, n in enumerate(counts)) + "."
    )
    return Dataset(train=train, val=val, notes=notes)


# --- bringing images to the patch size --------------------------------------------------------------------
def fit_to_patch(x: np.ndarray, patch: Sequence[int], mode: str, rng: np.random.Generator | None = None) -> np.ndarray:
    """A normalized channel-last image (..., C) -> float32 channels-first (C, *patch). resize: bilinear/trilinear;
    pad: zero-pad what is smaller, crop what is larger (randomly with `rng`, else the centre)."""
    patch = tuple(int(p) for p in patch)
    x = np.moveaxis(np.asarray(x, dtype=np.float32), -1, 0)
    spatial = x.shape[1:]
    if spatial == patch:
        return np.ascontiguousarray(x)
    if mode == "resize":
        # numpy/Cython, one thread: this runs in the prefetch thread beside the training step, where torch's own
        # interpolate would start a second OpenMP team on the same cores (measured: trainer at 0.6 of the bare step)
        from skimage.transform import resize

        shrink = any(p < d for p, d in zip(patch, spatial))
        return np.ascontiguousarray(
            resize(x, (x.shape[0], *patch), order=1, mode="edge", anti_aliasing=shrink, preserve_range=True).astype(
                np.float32
            )
        )
    index, pads = [slice(None)], [(0, 0)]
    for d, p in zip(spatial, patch):
        if d > p:
            start = int(rng.integers(0, d - p + 1)) if rng is not None else (d - p) // 2
            index.append(slice(start, start + p))
            pads.append((0, 0))
        else:
            index.append(slice(None))
            pads.append(((p - d) // 2, p - d - (p - d) // 2))
    return np.ascontiguousarray(np.pad(x[tuple(index)], pads))


def read_image(raw) -> np.ndarray:
    return raw.compute() if hasattr(raw, "compute") else np.asarray(raw)


FITTED_CACHE_BYTES = 256 * 2**20  # images brought to the patch size, kept for the next epochs (see ImageData.item)


class ImageData(TrainingData):
    """Whole images (brought to the patch size) with their class; an epoch sees about every training image once."""

    def __init__(self, dataset, cfg, normalizer):
        self.train, self.val = dataset.train, dataset.val
        self.patch, self.mode, self.normalize = cfg.data.patch_size, cfg.classification.fit, normalizer
        self.rng = np.random.default_rng(cfg.seed)
        self.cover, self._deck = cfg.train.sampling == "cover", []  # cover: a shuffled round of the images
        self.has_validation = bool(self.val)
        self._fitted: dict[int, np.ndarray] = {}
        self._fitted_bytes = 0

    def item(self, s: ClassSample, rng=None) -> np.ndarray:
        # Reading, normalizing and resizing an image is the same every epoch (unless a random crop is taken), and
        # costs ~2 ms per small image in the prefetch thread, which on 2 cores takes CPU from the training step
        # (trainer at 0.86 of the bare step, bench_classify.py): fitted images are kept while they fit the budget.
        fitted = self._fitted.get(id(s))
        if fitted is not None:
            return fitted
        raw = read_image(s.raw)
        x = fit_to_patch(self.normalize(raw), self.patch, self.mode, rng)
        random_crop = (
            rng is not None
            and self.mode != "resize"
            and any(d > p for d, p in zip(raw.shape[: len(self.patch)], self.patch))
        )
        if not random_crop and self._fitted_bytes + x.nbytes <= FITTED_CACHE_BYTES:
            x.setflags(write=False)  # batches are stacked copies: a cached image is never changed
            self._fitted[id(s)] = x
            self._fitted_bytes += x.nbytes
        return x

    def batch(self, batch_size: int):
        if self.cover:
            idx = []
            while len(idx) < batch_size:
                self._deck = self._deck or [int(i) for i in self.rng.permutation(len(self.train))]
                idx.append(self._deck.pop())
        else:
            idx = self.rng.integers(0, len(self.train), size=batch_size)
        x = np.stack([self.item(self.train[i], self.rng) for i in idx])
        return x, np.array([self.train[i].class_index for i in idx], dtype=np.int64)

    def validation(self, batch_size: int):
        for k in range(0, len(self.val), batch_size):
            part = self.val[k : k + batch_size]
            yield np.stack([self.item(s) for s in part]), np.array([s.class_index for s in part], dtype=np.int64)

    def steps_per_epoch(self, batch_size: int) -> int:
        return max(1, -(-len(self.train) // batch_size))

    def example(self):
        s = self.train[0]  # fitted as `item` does, but neither cached nor drawn from the random stream
        x = fit_to_patch(self.normalize(read_image(s.raw)), self.patch, self.mode)
        return x[None], np.array([s.class_index], dtype=np.int64)
