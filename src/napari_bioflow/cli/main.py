"""The parser of every command and `main`, which turns a user's mistake into one line and exit 2."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .batch import cmd_batch
from .classes import add_parser as add_class_folders_parser
from .common import FAILED_FILES
from .export import add_parser as add_export_parser
from .info import cmd_docs, cmd_init, cmd_models
from .predict import cmd_predict, output_options
from .train import cmd_sample, cmd_train


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="napari-bioflow", description="Train and run deep-learning workflows for microscopy."
    )
    sub = p.add_subparsers(dest="command", required=True)

    def with_config(sp, required=True):
        sp.add_argument("config", type=Path, nargs=None if required else "?", help="YAML config file")
        sp.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="SECTION.FIELD=VALUE",
            help="override a config field, e.g. --set train.epochs=5 (repeatable)",
        )

    sp = sub.add_parser("train", help="train a model from a YAML config")
    with_config(sp)
    sp.set_defaults(func=cmd_train)
    sp = sub.add_parser("predict", help="predict images with a checkpoint")
    with_config(sp, required=False)
    sp.add_argument("--checkpoint", type=Path, help="checkpoint file (.pth)")
    sp.add_argument("--input", type=Path, help="folder of images to predict")
    sp.add_argument("--labels", type=Path, help="folder of ground-truth labels (metrics)")
    sp.add_argument("--output", type=Path, help="output folder (default: the config's output_dir)")
    output_options(sp)
    sp.set_defaults(func=cmd_predict)
    sp = sub.add_parser(
        "batch",
        help="predict every image of a folder (resumable; optionally on dask)",
        description="Predict every image of a folder (TIFF, PNG, zarr, OME-Zarr) with a checkpoint into a "
        "new run of the experiment layout; --resume continues an earlier run in place.",
        epilog=f"Exit status: 0 every file predicted; {FAILED_FILES} finished, but some files failed "
        "(listed, and in batch_summary.csv); 2 a mistake in the command or a full disk; "
        "130 interrupted.",
    )
    sp.add_argument("--checkpoint", type=Path, help="checkpoint file (.pth)")
    sp.add_argument("--input", type=Path, help="folder of images to predict")
    sp.add_argument(
        "--labels", type=Path, help="folder of ground-truth labels, paired with the images by file name (metrics)"
    )
    sp.add_argument("--output", type=Path, default=Path("bioflow_runs"), help="output folder (default: bioflow_runs)")
    sp.add_argument("--name", default="batch", help="experiment name (default: batch)")
    sp.add_argument(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="continue the batch run in this results folder (e.g. bioflow_runs/batch/results/batch_1): "
        "finished files are skipped",
    )
    sp.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (GPU number N)")
    sp.add_argument(
        "--scheduler", metavar="ADDRESS", help="run on the dask cluster of this scheduler (tcp://host:8786)"
    )
    sp.add_argument("--workers", type=int, metavar="N", help="run on a local dask cluster of N worker processes")
    sp.add_argument(
        "--block-size",
        type=int,
        metavar="PX",
        help="split images larger than this (per axis) into blocks predicted in parallel "
        "(default with dask: 2048 in 2D, 256 in 3D; 0: never)",
    )
    sp.add_argument(
        "--halo", type=int, metavar="PX", help="context around each block (default: half the training patch)"
    )
    sp.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="predict.FIELD=VALUE",
        help="override a prediction setting, e.g. --set predict.tta=true (repeatable)",
    )
    output_options(sp)
    sp.set_defaults(func=cmd_batch)
    sp = sub.add_parser("init", help="write a commented starting config")
    from ..engine.workflows.base import list_workflows, workflow_classes

    sp.add_argument("workflow", choices=list_workflows())
    sp.add_argument("--ndim", type=int, choices=[2, 3], default=2)
    sp.add_argument(
        "--pretext",
        dest="variant",
        metavar="VARIANT",
        help="the variant of a workflow that has several: "
        + "; ".join(f"{c.variant[1]} ({c.variant_title})" for c in workflow_classes() if c.variant),
    )
    sp.add_argument("-o", "--output", type=Path)
    sp.add_argument("--force", action="store_true", help="replace an existing file")
    sp.set_defaults(func=cmd_init)
    sp = sub.add_parser("sample", help="train and predict on the shipped sample data")
    sp.add_argument("--ndim", type=int, choices=[2, 3], default=2)
    sp.add_argument("--epochs", type=int, default=15)
    sp.add_argument("--output", type=Path, default=Path("bioflow_runs"))
    sp.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    sp.set_defaults(func=cmd_sample)
    sp = sub.add_parser("docs", help="write the config reference (Markdown)")
    sp.add_argument("-o", "--output", type=Path, default=Path("docs/config.md"))
    sp.set_defaults(func=cmd_docs)
    sp = sub.add_parser("models", help="list the registered models and their options")
    sp.set_defaults(func=cmd_models)
    add_export_parser(sub)
    add_class_folders_parser(sub)
    return p


def main(argv=None) -> int:
    """Exit status: 0 done, 2 a user's mistake or a full disk (one line), 3 a batch that finished with failed
    files, 130 interrupted."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    from ..engine.errors import InputError
    from ..engine.storage import disk_full_from

    try:
        code = args.func(args)
    except InputError as e:
        print(f"napari-bioflow: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print(f"napari-bioflow: interrupted{f'; {e}' if str(e) else ''}", file=sys.stderr)
        return 130
    except Exception as e:  # a writer not guarded by engine/storage.py met a full disk: still one sentence
        full = disk_full_from(e)
        if full is None:
            raise
        print(f"napari-bioflow: error: {full}", file=sys.stderr)
        return 2
    finally:
        from ..engine.train.distributed import shutdown

        shutdown()  # leaves the process group of a torchrun run (no-op otherwise)
    return code or 0
