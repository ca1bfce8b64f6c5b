"""`class-folders`: a CSV of (file, class) rows into the class-folder tree classification trains on (the reference
page's from_class_csv_to_folders); the logic is engine/data/class_csv.py."""

from __future__ import annotations

from pathlib import Path

from .common import _print


def add_parser(sub) -> None:
    sp = sub.add_parser(
        "class-folders",
        help="turn a CSV of (file, class) into class sub-folders for classification",
        description="Copy (or hard-link) the images a CSV lists into OUT/<class>/<file>, the layout classification "
        "reads; the images are never moved and OUT must be new (or empty). Rows: file,class (a header row is "
        "allowed); files relative to --images.",
    )
    sp.add_argument("csv", type=Path, help="CSV file of file,class rows")
    sp.add_argument("--images", type=Path, required=True, help="folder the CSV's file names are relative to")
    sp.add_argument("-o", "--output", type=Path, required=True, help="new folder for the class sub-folders")
    sp.add_argument("--link", action="store_true", help="hard-link instead of copying (same disk only)")
    sp.set_defaults(func=cmd_class_folders)


def cmd_class_folders(args) -> None:
    from ..engine.data.class_csv import class_folders_from_csv

    tree = class_folders_from_csv(args.csv, args.images, args.output, link=args.link)
    for note in tree.notes:
        _print(f"note: {note}")
    per_class = ", ".join(f"{cls} {n}" for cls, n in tree.counts.items())
    verb = "linked" if args.link else "copied"
    _print(
        f"{verb} {sum(tree.counts.values())} images into {len(tree.counts)} class folders under {tree.out}: {per_class}"
    )
