"""File names: which label belongs to which raw image, and what each image's outputs are called. One rule for
train, predict and batch.

Raw and label files pair by name, never by position in two sorted lists: the names up to their first dot are
compared with every run of digits read as a number (`img_1.tif` pairs with `img_01.png`, `img_10` never with
`img_01`), else, when every label differs from its raw image by one same affix holding a letter (`img_1_mask.tif`,
`mask_img_1.tif`), without it. Names that cannot be matched one to one are refused with the files that have no
partner. Two images given directly (an image file, a zarr store or a path inside one, instead of folders) are a pair.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path

from ..errors import InputError
from .io import given_image, list_images

SHOWN = 4  # file names listed per problem in a message


def image_name(path: Path) -> str:
    """The name of an image in messages and tables: its file name, or `store.zarr/array` (`file.h5/dataset`) for a
    path inside a store (an HDF5 file)."""
    from .hdf5_image import hdf5_file_of
    from .zarr_image import zarr_store_of

    path = Path(path)
    store = zarr_store_of(path) or hdf5_file_of(path)
    return f"{store[0].name}/{store[1]}" if store is not None and store[1] else path.name


def pair_key(name: str) -> str:
    """The name compared for pairing: up to the first dot, digit runs as numbers (img_007 -> img_7)."""
    stem = name.split(".")[0]
    return re.sub(r"\d+", lambda m: str(int(m.group())), stem)


def _listed(names: Sequence[str]) -> str:
    more = f" and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
    return ", ".join(names[:SHOWN]) + more


def _affix_rules(longer: set[str], shorter: set[str]) -> list[tuple[str, str]]:
    """("suffix"|"prefix", affix) such that dropping it from every key of `longer` gives `shorter` exactly."""
    if len(longer) != len(shorter) or not longer:
        return []
    first = min(longer)
    candidates = set()
    for s in shorter:
        if len(first) > len(s):
            if first.startswith(s):
                candidates.add(("suffix", first[len(s) :]))
            if first.endswith(s):
                candidates.add(("prefix", first[: len(first) - len(s)]))
    out = []
    for kind, affix in candidates:
        if not re.search(r"[A-Za-z]", affix):
            continue  # a bare number is part of the name (img_1 + 0 is img_10), not an affix
        if kind == "suffix" and all(k.endswith(affix) for k in longer):
            stripped = {k[: -len(affix)] for k in longer}
        elif kind == "prefix" and all(k.startswith(affix) for k in longer):
            stripped = {k[len(affix) :] for k in longer}
        else:
            continue
        if stripped == shorter:
            out.append((kind, affix))
    return out


def _strip(key: str, rule: tuple[str, str]) -> str:
    kind, affix = rule
    return key[: -len(affix)] if kind == "suffix" else key[len(affix) :]


def _matcher(raw_keys: set[str], label_keys: set[str]) -> Callable[[str], str] | None:
    """raw key -> label key when the two sets match one to one (equal, or one affix apart), else None."""
    if raw_keys == label_keys:
        return lambda k: k
    on_labels = _affix_rules(label_keys, raw_keys)
    on_raws = _affix_rules(raw_keys, label_keys)
    if len(on_labels) + len(on_raws) != 1:  # none, or several readings: never pick one silently
        return None
    if on_labels:
        back = {_strip(k, on_labels[0]): k for k in label_keys}
        return back.__getitem__
    return lambda k: _strip(k, on_raws[0])


def pair_by_name(
    raws: Sequence[Path], labels: Sequence[Path], raw_where: str, label_where: str
) -> list[tuple[Path, Path]]:
    """(raw, label) pairs in the order of `raws`, matched by name; `raw_where`/`label_where` name the two sets in
    the message ("the training raw folder DIR"). Raises InputError when they do not match one to one."""
    groups: dict[str, dict[str, list[Path]]] = {"raw": {}, "label": {}}
    for side, paths in (("raw", raws), ("label", labels)):
        for p in paths:
            groups[side].setdefault(pair_key(image_name(p)), []).append(p)
    problems = []
    for side, where in (("raw", raw_where), ("label", label_where)):
        for same in groups[side].values():
            if len(same) > 1:
                problems.append(
                    f"{' and '.join(image_name(p) for p in same)} in {where} share one name "
                    f"(extensions and leading zeros aside)"
                )
    match = None if problems else _matcher(set(groups["raw"]), set(groups["label"]))
    if match is not None:
        return [(p, groups["label"][match(pair_key(image_name(p)))][0]) for p in raws]
    if not problems:  # the names on either side that have no partner (no affix reading matched them all)
        raw_keys, label_keys = set(groups["raw"]), set(groups["label"])
        lonely_raws = [image_name(p) for p in raws if pair_key(image_name(p)) not in label_keys]
        lonely_labels = [image_name(p) for p in labels if pair_key(image_name(p)) not in raw_keys]
        if lonely_raws:
            problems.append(f"no label for {_listed(lonely_raws)}")
        if lonely_labels:
            problems.append(f"no raw image for {_listed(lonely_labels)}")
    raw_head = raw_where[0].upper() + raw_where[1:]
    raise InputError(
        f"{raw_head} holds {len(raws)} image(s) and {label_where} holds {len(labels)}, which do not pair "
        f"one to one by file name ({'; '.join(problems)}): give each label its raw image's name "
        f"(img_1 pairs with img_01; a suffix every label has, such as _mask, is allowed)."
    )


def folder_pairs(raw_dir: Path, label_dir: Path | None, role: str) -> list[tuple[Path, Path | None]]:
    """The (raw, label) files of a raw folder and its label folder (None: no labels), paired by name; `role` names
    them in messages ("training", "test", "input"). Either may be a single image instead of a folder."""
    raws = list_images(raw_dir, f"{role} raw")
    if label_dir is None:
        return [(r, None) for r in raws]
    labels = list_images(label_dir, f"{role} label")
    if given_image(raw_dir) and given_image(label_dir):  # two images named by the user: they are the pair
        return [(Path(raw_dir), Path(label_dir))]

    def where(path: Path, side: str) -> str:
        return f"the {role} {side} {'image' if given_image(path) else 'folder'} {path}"

    return pair_by_name(raws, labels, where(raw_dir, "raw"), where(label_dir, "label"))


def assign_stems(names: list[str], known: dict[str, str] | None = None) -> dict[str, str]:
    """Output stems by image name, one rule for predict and batch: the name up to its first dot, made unique
    (a.tif and a.png: a_tif, a_png); names an earlier run of the folder already had keep their stem."""
    known = dict(known or {})
    taken = set(known.values())
    base = {n: re.sub(r"[^A-Za-z0-9_.-]+", "_", n.split(".")[0]) or "image" for n in names}
    count: dict[str, int] = {}
    for n in names:
        count[base[n]] = count.get(base[n], 0) + 1
    out = {}
    for n in names:
        if n in known:
            out[n] = known[n]
            continue
        stem = base[n] if count[base[n]] == 1 and base[n] not in taken else re.sub(r"[^A-Za-z0-9_-]+", "_", n)
        while stem in taken:
            stem += "_"
        taken.add(stem)
        out[n] = stem
    return out


def refuse_labels_for_classifier(workflow, labels: Path | None, what: str) -> None:
    """One rule for predict and batch: a workflow with one value per image (classification) takes the true classes
    from the input's class sub-folders, so a labels folder (`what`: how the user gave it) is refused, not ignored."""
    if labels is not None and not getattr(workflow, "dense", True):
        raise InputError(
            f"A classifier takes the true classes from the input's class sub-folders, not from {what} "
            f"{labels}: leave it out, or put each image in a sub-folder named after its class."
        )
