"""A CSV of (file, class) rows turned into the class-folder tree classification reads (the reference page's
`from_class_csv_to_folders`): OUT/<class>/<file>, copied or hard-linked, never moved; the user's files are not
touched and OUT must not exist yet (or be empty). Everything is checked before the first file is written, and the
tree is built in OUT.part, renamed into place at the end: a refused or failed run leaves nothing behind.

    file,class              a header row is recognised by a first cell that is no image name (no image suffix)
    img_001.tif,tumour      a path relative to --images (sub-folders allowed) or absolute
    img_002.tif,normal

Refused, in one sentence: a file that does not exist, a file listed twice, two files of one name in one class, an
empty class or one that cannot be a folder name, a row without two cells.
"""

from __future__ import annotations

import csv
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError
from .io import IMAGE_SUFFIXES

SHOWN = 3


@dataclass
class ClassTree:
    out: Path
    counts: dict[str, int]  # images per class, in the CSV's order of first appearance
    notes: list[str] = field(default_factory=list)


def _listed(items: list[str]) -> str:
    more = f" and {len(items) - SHOWN} more" if len(items) > SHOWN else ""
    return ", ".join(items[:SHOWN]) + more


def _looks_like_image(name: str) -> bool:
    return Path(name.strip()).suffix.lower() in IMAGE_SUFFIXES or name.lower().endswith(".ome.tif")


def read_class_csv(csv_path: Path, images: Path) -> list[tuple[Path, str, int]]:
    """(file, class, CSV line) rows of the CSV, files resolved against `images`, every row checked."""
    csv_path, images = Path(csv_path), Path(images)
    if not csv_path.is_file():
        raise InputError(f"The CSV file {csv_path} does not exist.")
    if not images.is_dir():
        raise InputError(f"The images folder {images} does not exist.")
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            sample = f.read(4096)
            f.seek(0)
            try:
                dialect = csv.Sniffer().sniff(sample, delimiters=",;\t")
            except csv.Error:
                dialect = csv.excel
            rows = [(i, r) for i, r in enumerate(csv.reader(f, dialect), 1) if any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"The CSV file {csv_path} cannot be read: {e}.") from None
    if rows and not _looks_like_image(rows[0][1][0]) and not (images / rows[0][1][0].strip()).is_file():
        rows = rows[1:]  # a header (file,class)
    if not rows:
        raise InputError(f"The CSV file {csv_path} lists no (file, class) rows.")
    out, missing, short = [], [], []
    for line, row in rows:
        if len(row) < 2 or not row[0].strip() or not row[1].strip():
            short.append(str(line))
            continue
        name, cls = row[0].strip(), row[1].strip()
        path = Path(name) if Path(name).is_absolute() else images / name
        if not path.exists():
            missing.append(name)
        out.append((path, cls, line))
    if short:
        raise InputError(
            f"The CSV file {csv_path} has rows without a file and a class (line {_listed(short)}): every row must be "
            f"file,class."
        )
    if missing:
        raise InputError(
            f"{len(missing)} file(s) listed in {csv_path} are not in {images} ({_listed(missing)}): fix their names "
            f"or remove their rows."
        )
    return out


def _check(rows: list[tuple[Path, str, int]], csv_path: Path) -> None:
    seen: dict[Path, tuple[str, int]] = {}
    for path, cls, line in rows:
        key = path.resolve()
        if key in seen:
            first_cls, first_line = seen[key]
            raise InputError(
                f"{path.name} is listed twice in {csv_path} (line {first_line} as {first_cls}, line {line} as "
                f"{cls}): give each file one row."
            )
        seen[key] = (cls, line)
        if cls in (".", "..") or "/" in cls or "\\" in cls or "\0" in cls:
            raise InputError(f"The class {cls!r} (line {line} of {csv_path}) cannot be a folder name.")
    by_target: dict[tuple[str, str], int] = {}
    for path, cls, line in rows:
        target = (cls, path.name)
        if target in by_target:
            raise InputError(
                f"Two files named {path.name} are of class {cls} (lines {by_target[target]} and {line} of "
                f"{csv_path}): one class folder cannot hold both; rename one."
            )
        by_target[target] = line


def class_folders_from_csv(csv_path: Path, images: Path, out: Path, link: bool = False) -> ClassTree:
    """Build OUT/<class>/<file> from the CSV (see the module). `link`: hard links instead of copies (same disk)."""
    csv_path, images, out = Path(csv_path), Path(images), Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"The output folder {out} exists already and is not empty; choose a new one.")
    rows = read_class_csv(csv_path, images)
    _check(rows, csv_path)
    counts: dict[str, int] = {}
    for _, cls, _ in rows:
        counts[cls] = counts.get(cls, 0) + 1
    listed = {p.resolve() for p, _, _ in rows}
    unlisted = sorted(
        p.relative_to(images).as_posix()
        for p in images.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and p.resolve() not in listed and out.resolve() not in p.resolve().parents
    )
    notes = []
    if len(counts) < 2:
        notes.append(f"The CSV names a single class ({next(iter(counts))}); classification needs at least two.")
    if unlisted:
        notes.append(
            f"{len(unlisted)} image(s) of {images} are not in the CSV and were left out ({_listed(unlisted)})."
        )
    from ..storage import writing

    tmp = out.with_name(out.name + ".part")
    if tmp.exists():
        raise InputError(f"{tmp} exists (left by an interrupted run?): remove it first.")
    out.parent.mkdir(parents=True, exist_ok=True)
    with writing(out.parent, out.name):
        try:
            for path, cls, _ in rows:
                target = tmp / cls / path.name
                target.parent.mkdir(parents=True, exist_ok=True)
                _place(path, target, link)
            if out.exists():
                out.rmdir()  # empty, checked above
            os.replace(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return ClassTree(out, counts, notes)


def _place(source: Path, target: Path, link: bool) -> None:
    if link:
        try:
            if source.is_dir():  # a zarr store: its files linked one by one
                shutil.copytree(source, target, copy_function=os.link)
            else:
                os.link(source, target)
            return
        except OSError as e:
            raise InputError(
                f"{source} cannot be hard-linked into {target.parent} ({e.strerror or e}): the output must be on the "
                f"same disk as the images; drop --link to copy instead."
            ) from None
    if source.is_dir():
        shutil.copytree(source, target)
    else:
        shutil.copy2(source, target)
