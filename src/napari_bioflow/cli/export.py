"""`export`: a checkpoint as a BioImage Model Zoo package (zip), tested by bioimageio.core before it is written."""

from __future__ import annotations

from pathlib import Path

from .common import _print

FORMAT_CHOICES = ("pytorch_state_dict", "torchscript", "onnx")


def add_parser(sub) -> None:
    sp = sub.add_parser(
        "export",
        help="export a checkpoint as a BioImage Model Zoo package (zip)",
        description="Write a checkpoint as a BioImage Model Zoo package: the normalization as preprocessing, tile "
        "sizes and halo, test tensors from a real image, documentation and the weights as a PyTorch state dict, "
        "TorchScript and ONNX. bioimageio.core's model test runs on it (no network) before it is written.",
    )
    sp.add_argument("checkpoint", type=Path, help="a napari-bioflow checkpoint (.pth)")
    sp.add_argument("-o", "--output", type=Path, required=True, help="the package to write (a new .zip)")
    sp.add_argument("--name", help="the model's name (letters, digits, spaces and _+-())")
    sp.add_argument("--author", action="append", default=[], help="an author's name (repeat for several)")
    sp.add_argument("--license", default="CC-BY-4.0", help="an SPDX licence id (default CC-BY-4.0)")
    sp.add_argument("--cite", action="append", default=[], help="a citation: 'TEXT DOI-or-URL' (repeatable)")
    sp.add_argument("--description", help="one sentence on what the model does")
    sp.add_argument(
        "--input", type=Path, help="a real image for the test tensors (default: the run's first test/training image)"
    )
    sp.add_argument(
        "--formats", nargs="+", choices=FORMAT_CHOICES, default=list(FORMAT_CHOICES), help="weight formats to write"
    )
    sp.set_defaults(func=cmd_export)


def cmd_export(args) -> None:
    from ..engine.export.exporter import export_model

    result = export_model(
        args.checkpoint,
        args.output,
        name=args.name,
        authors=args.author,
        licence=args.license,
        cite=args.cite,
        description=args.description,
        input_image=args.input,
        formats=args.formats,
    )
    _print(f"wrote {result.path}")
    for fmt in result.converted:
        _print(f"  {fmt}: converted")
    for fmt, why in result.failed.items():
        _print(f"  {fmt}: not converted ({why})")
    _print(f"bioimageio.core test: passed ({result.test})")
