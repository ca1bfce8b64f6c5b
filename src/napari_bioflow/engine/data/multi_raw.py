"""Several raw images per target (`data.multiple_raw`, BiaPy's MULTIPLE_RAW_ONE_TARGET_LOADER, e.g. transformed
versions or several acquisitions of one sample): the raw folder holds one sub-folder per sample with its raw images,
the target folder the sample's one target, as an image named after the sub-folder or as a sub-folder of that name
holding one image:

    train_raw/sample_1/view_a.tif, view_b.tif, ...      train_label/sample_1.tif   (or train_label/sample_1/t.tif)
    train_raw/sample_2/...                              train_label/sample_2.tif

Each raw image is a training pair with its sample's target; validation holds aside whole samples (their raw images
never train), so the validation loss is not measured on a sample the model saw under another view.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from .io import is_image_path, list_images

SHOWN = 3


def _listed(names: list[str]) -> str:
    more = f" and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
    return ", ".join(names[:SHOWN]) + more


def _sample_folders(raw_dir: Path, role: str) -> list[Path]:
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise InputError(f"The {role} raw folder {raw_dir} does not exist.")
    subs = sorted(p for p in raw_dir.iterdir() if p.is_dir() and not p.name.startswith(".") and not is_image_path(p))
    if not subs:
        raise InputError(
            f"The {role} raw folder {raw_dir} holds no sample sub-folders: with data.multiple_raw, put the raw "
            f"images of each sample in a sub-folder named after the sample."
        )
    loose = sorted(p.name for p in raw_dir.iterdir() if is_image_path(p))
    if loose:
        raise InputError(
            f"The {role} raw folder {raw_dir} mixes sample sub-folders with loose images (e.g. {loose[0]}): with "
            f"data.multiple_raw every raw image sits in its sample's sub-folder."
        )
    return subs


def _target_of(sample: str, target_dir: Path, role: str) -> Path | None:
    folder = Path(target_dir) / sample
    if folder.is_dir() and not is_image_path(folder):
        files = list_images(folder, f"{role} target")
        if len(files) != 1:
            raise InputError(
                f"The {role} target folder {folder} holds {len(files)} images ({_listed([f.name for f in files])}); "
                f"a sample has one target."
            )
        return files[0]
    found = [p for p in Path(target_dir).iterdir() if is_image_path(p) and p.name.split(".")[0] == sample]
    if len(found) > 1:
        raise InputError(
            f"Several targets are named after sample {sample} in {target_dir} ({_listed([p.name for p in found])})."
        )
    return found[0] if found else None


def multi_raw_groups(raw_dir: Path, target_dir: Path, role: str) -> list[tuple[str, list[Path], Path]]:
    """(sample, its raw images, its target) for every sample sub-folder; a sample without a target, a target
    without a sample or an empty sample folder is one sentence."""
    target_dir = Path(target_dir)
    if not target_dir.is_dir():
        raise InputError(f"The {role} target folder {target_dir} does not exist.")
    out, missing = [], []
    for folder in _sample_folders(raw_dir, role):
        raws = list_images(folder, f"{role} sample")
        target = _target_of(folder.name, target_dir, role)
        if target is None:
            missing.append(folder.name)
            continue
        out.append((folder.name, raws, target))
    if missing:
        raise InputError(
            f"{len(missing)} {role} sample(s) of {raw_dir} have no target in {target_dir} ({_listed(missing)}): "
            f"name each target (an image or a sub-folder with one image) after its sample's sub-folder."
        )
    samples = {name for name, _, _ in out}
    extra = sorted(
        p.name.split(".")[0]
        for p in target_dir.iterdir()
        if not p.name.startswith(".") and p.name.split(".")[0] not in samples
    )
    if extra:
        raise InputError(
            f"{len(extra)} target(s) in {target_dir} have no sample sub-folder in {raw_dir} ({_listed(extra)})."
        )
    return out


def samples_multi_raw(raw_dir: Path, target_dir: Path, cfg, role: str, notes: list[str]) -> list:
    """Checked samples, one per raw image, each with its sample's target and `group` = the sample's name."""
    from .io import open_image
    from .sources import make_sample

    out = []
    groups = multi_raw_groups(raw_dir, target_dir, role)
    for name, raws, target in groups:
        for raw in raws:
            sample = make_sample(open_image(raw), str(raw), cfg, open_image(target), str(target), notes)
            sample.group = name
            out.append(sample)
    notes.append(f"{role.capitalize()}: {len(out)} raw images of {len(groups)} samples (data.multiple_raw).")
    return out


def has_sample_folders(raw_dir: Path) -> bool:
    """Whether a folder is laid out as data.multiple_raw's sample sub-folders (no loose images): prediction then
    reads it by samples; a flat folder of images is predicted image by image as any other."""
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir() or is_image_path(raw_dir):
        return False
    entries = [p for p in raw_dir.iterdir() if not p.name.startswith(".")]
    return any(p.is_dir() and not is_image_path(p) for p in entries) and not any(is_image_path(p) for p in entries)


def multi_raw_items(raw_dir: Path, target_dir: Path | None, role: str) -> list[tuple[Path, Path | None]]:
    """(raw image, its sample's target or None) for every raw image of every sample sub-folder, for prediction:
    each view is predicted, and measured against its sample's target when a target folder is given."""
    if target_dir is not None:
        return [(raw, target) for _, raws, target in multi_raw_groups(raw_dir, target_dir, role) for raw in raws]
    return [(raw, None) for folder in _sample_folders(raw_dir, role) for raw in list_images(folder, f"{role} sample")]


def sample_view_name(path: Path) -> str:
    """The name of a sample's raw image in tables and output files: `sample/view.tif` (views of different samples
    may share a file name)."""
    path = Path(path)
    return f"{path.parent.name}/{path.name}"
