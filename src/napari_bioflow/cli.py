"""Command line: the same engine calls as the widgets. A user's mistake prints one line and exits 2.

    napari-bioflow init semantic_segmentation -o my.yaml    commented starting config (also image_to_image,
                                                            classification, self_supervised --pretext crappify|masking)
    napari-bioflow train my.yaml --set train.epochs=5       train (then predict data.test_raw if set)
    napari-bioflow predict my.yaml --set predict.checkpoint=...   or   predict --checkpoint C --input DIR
    napari-bioflow batch --checkpoint C --input DIR [--workers N | --scheduler ADDR]   a whole folder, resumable
    napari-bioflow sample                                   the main job on the shipped sample data
    napari-bioflow docs -o docs/config.md                   regenerate the config reference

Under torchrun (`torchrun --nproc_per_node N -m napari_bioflow.cli train my.yaml`) training is distributed
(docs/distributed_training.md): rank 0 prints, writes and predicts; every rank prints one line tagged with its rank.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# heavy modules (torch, pydantic, napari) are imported inside the commands so --help stays instant

FAILED_FILES = 3  # exit status of a batch that finished but could not predict some of its files


def _print(msg: str) -> None:
    from .engine.train.distributed import is_main_process

    if is_main_process():  # under torchrun only rank 0 prints
        print(msg, flush=True)


def _load_config(args):
    from .config import RunConfig

    if args.config is None:
        return RunConfig.from_dict({}, args.set, source="command line")
    return RunConfig.load(args.config, args.set)


def _train(cfg, argv=None):
    """Train with progress lines; return the trainer. Ctrl-C names the checkpoints and the command that resumes."""
    from .engine.storage import remove_run_parts
    from .engine.train.trainer import Trainer

    trainer = Trainer(cfg)
    try:
        _report_training(trainer)
    except BaseException as e:
        if trainer.dist.is_main:
            remove_run_parts(trainer.experiment)  # no .part file stays behind, whatever stopped the run
        if isinstance(e, KeyboardInterrupt):
            raise KeyboardInterrupt(_interrupted(trainer, argv)) from None
        raise
    if trainer.dist.enabled:  # every rank says what it trained
        print(trainer.dist.summary(), flush=True)
    return trainer


def _interrupted(trainer, argv) -> str:
    """What an interrupted training leaves and how to go on: the best checkpoint, and the last one to resume from."""
    import shlex

    exp = trainer.experiment
    if exp is None or not exp.last_checkpoint.is_file():
        return "training stopped before any checkpoint was written; run the same command to start again"
    again = []
    args = list(argv or [])
    while args:  # the same command without an earlier train.resume
        a = args.pop(0)
        if a == "--set" and args and args[0].startswith("train.resume="):
            args.pop(0)
        elif not a.startswith("--set=train.resume="):
            again.append(a)
    best = f"the best checkpoint is {trainer.best_checkpoint}" if trainer.best_checkpoint else "no epoch improved"
    resume = shlex.join(["napari-bioflow", *again, "--set", f"train.resume={exp.last_checkpoint}"])
    return f"{best}; resume from the last epoch with: {resume}"


def _report_training(trainer) -> None:
    from .engine.train.trainer import DoneReport, EpochReport, StartReport

    for r in trainer.run():
        if isinstance(r, StartReport):
            _print(
                f"run {r.run_name} in {r.experiment_dir}: {r.n_train} training / {r.n_val} validation images, "
                f"{r.steps_per_epoch} steps per epoch"
            )
            for n in r.notes:
                _print(f"note: {n}")
        elif isinstance(r, EpochReport):
            m = " ".join(f"{k}={v:.4f}" for k, v in r.metrics.items() if not k.startswith("iou_class"))
            _print(
                f"epoch {r.epoch}/{r.epochs} loss={r.train_loss:.4f} val_loss={r.val_loss:.4f} {m} "
                f"lr={r.learning_rate:.2e} {r.seconds:.1f}s eta {r.eta_seconds:.0f}s{' *' if r.improved else ''}"
            )
        elif isinstance(r, DoneReport):
            _print(
                f"training {r.reason} after {r.epochs_run} epoch(s); best epoch {r.best_epoch}; checkpoint {r.checkpoint}"
            )


def _check_tests(cfg) -> None:
    """Open and check every test image before anything is trained (a bad file stops the run here, not after it)."""
    from .engine.workflows import get_workflow

    if not get_workflow(cfg).dense:  # a class per image: the classes come from the training folder
        from .engine.data.classification_data import class_subfolders, open_set, resolve_class_names
        from .engine.data.pairing import refuse_labels_for_classifier
        from .engine.predict.classification_results import class_test_items

        refuse_labels_for_classifier(get_workflow(cfg), cfg.data.test_label, "data.test_label")
        names = (
            resolve_class_names(
                list(class_subfolders(cfg.data.train_raw, "training")), cfg, f"training folder {cfg.data.train_raw}"
            )
            if cfg.data.train_raw
            else []
        )
        # the set as a whole (2D or 3D across it), then each file
        open_set([path for path, _ in class_test_items(cfg.data.test_raw, names)], cfg, "test", "")
        return
    from .engine.data.pairing import folder_pairs
    from .engine.predict.inference import check_inputs

    for n in check_inputs(cfg, folder_pairs(cfg.data.test_raw, cfg.data.test_label, "test"), ""):
        _print(f"note: {n}")


def _predict_folder(predictor, experiment, items=None, finite_checked: bool = False) -> None:
    """Predict the config's test folder (its checked `items`, when given) into the experiment, with a line per
    image and where the results went."""
    cfg = predictor.config
    if items is None:
        items = predictor.folder_items(cfg.data.test_raw, cfg.data.test_label)
    out, names = experiment.results, cfg.class_names

    def report(i, n, r):
        _print(f"predicted {r.name}: {r.label(names)} ({r.probabilities[r.predicted]:.2f})")

    for res in predictor.files(items, out, finite_checked=finite_checked, report=report):
        if isinstance(res, dict):  # one class per image: the set's predictions, and metrics when it has classes
            if res["metrics"]:
                _print(res["text"])
                _print(f"metrics: {res['files']['metrics']}; confusion matrix: {res['files']['confusion_png']}")
            _print(f"predictions: {res['predictions']}")
            continue
        m = " ".join(f"{k}={v:.4f}" for k, v in res.metrics.items() if not k.startswith("iou_class"))
        _print(f"predicted {res.name} in {res.seconds:.1f}s {m}")
    if predictor.dense and (out / "metrics.csv").exists():
        _print(f"metrics: {out / 'metrics.csv'}")
    _print(f"results: {out}")


def cmd_train(args) -> None:
    cfg = _load_config(args)
    if not cfg.train.enable:  # train.enable: false only predicts, with predict.checkpoint
        args.checkpoint = args.input = args.labels = args.output = None
        return cmd_predict(args)
    if cfg.data.test_raw is not None:  # the test images are predicted after training: check them before it
        _check_tests(cfg)
    trainer = _train(cfg, args.argv)
    if not trainer.dist.is_main:  # distributed: rank 0 alone predicts the test images
        return
    if cfg.data.test_raw is not None and trainer.best_checkpoint is not None:
        from .engine.predict.predictor import Predictor

        predictor = Predictor(trainer.best_checkpoint, cfg.device, cfg.model_dump(mode="json"), source=str(args.config))
        _predict_folder(predictor, trainer.experiment)


def cmd_predict(args) -> None:
    """Predict a folder (or one image) with a checkpoint: its own config with this command's prediction settings
    (its YAML's or --set's); every image is checked before the experiment folder is created."""
    from .config import RunConfig, apply_override
    from .engine.errors import InputError
    from .engine.predict.predictor import Predictor
    from .engine.storage import remove_run_parts

    given = [
        f"{key}={value}"
        for key, value in (
            ("predict.checkpoint", args.checkpoint),
            ("data.test_raw", args.input),
            ("data.test_label", args.labels),
            ("output_dir", args.output),
        )
        if value
    ]
    overrides = [*given, *args.set]
    if args.config is None:  # the checkpoint's own settings, with this command's paths and overrides
        settings: dict = {}
        for item in overrides:
            apply_override(settings, item)
        source = "command line"
    else:
        settings, overrides, source = (
            RunConfig.load(args.config, overrides).model_dump(mode="json"),
            [],
            str(args.config),
        )
    checkpoint = (settings.get("predict") or {}).get("checkpoint")
    if not checkpoint:
        raise InputError("No checkpoint: give --checkpoint or set predict.checkpoint.")
    if not (settings.get("data") or {}).get("test_raw"):
        raise InputError("No images to predict: give --input or set data.test_raw.")
    predictor = Predictor(
        checkpoint, settings.get("device", "auto"), settings if args.config else None, overrides, source=source
    )
    if args.config is not None and settings["workflow"] != predictor.config.workflow:
        raise InputError(
            f"Checkpoint {checkpoint} was trained for {predictor.workflow.full_title()}, not "
            f"{settings['workflow'].replace('_', ' ')} ({args.config})."
        )
    cfg = predictor.config
    items = predictor.folder_items(
        cfg.data.test_raw, cfg.data.test_label, "--labels" if args.labels else "data.test_label"
    )
    for note in predictor.check_files(items):
        _print(f"note: {note}")
    experiment = predictor.create_experiment()
    try:
        _predict_folder(predictor, experiment, items, finite_checked=True)  # just checked
    except BaseException:
        remove_run_parts(experiment)  # a full disk, Ctrl-C: no .part file stays behind
        raise


def cmd_batch(args) -> int:
    """Predict every image of a folder into a new run (or continue one with --resume), on this machine or dask.
    Returns 3 when the batch finished with failed files (FAILED_FILES), 0 when every file was predicted."""
    from .engine.batch import BatchRequest, BatchRun, BatchStarted, BatchSummary, FileDone, FileFailed
    from .engine.storage import DiskFull

    request = BatchRequest(
        checkpoint=args.checkpoint,
        input_dir=args.input,
        labels_dir=args.labels,
        output_dir=args.output,
        name=args.name,
        resume=args.resume,
        device=args.device,
        overrides=list(args.set),
        scheduler=args.scheduler,
        workers=args.workers or 0,
        block_size=args.block_size,
        halo=args.halo,
    )
    run = BatchRun(request)
    finished = 0
    total = 0
    failed = False
    try:
        for r in run.run():
            if isinstance(r, BatchStarted):
                total = len(r.to_do)
                earlier = f", {len(r.finished_earlier)} finished earlier" if r.finished_earlier else ""
                _print(f"run {r.run_dir} ({r.mode}): {total} image(s) to predict{earlier}")
                if r.unfinished_earlier is not None:
                    _print(f"note: {r.hint()}: napari-bioflow batch --resume {r.unfinished_earlier[0]}")
            elif isinstance(r, FileDone):
                finished += 1
                parts = [f"{r.seconds:.1f} s"] + [
                    f"{k}={v:.4f}" for k, v in r.metrics.items() if not k.startswith("iou_class")
                ]
                eta = f", eta {r.eta_seconds:.0f} s" if r.eta_seconds else ""
                _print(f"[{finished}/{total}] {r.name}: {' '.join(parts)} ({r.overall:.0%} done{eta})")
            elif isinstance(r, FileFailed):
                finished += 1
                _print(f"[{finished}/{total}] FAILED {r.name}: {r.reason}")
            elif isinstance(r, BatchSummary):
                _print(r.text())
                if r.predictions_csv is not None and not run.loaded.workflow.dense:
                    from .engine.predict.classification_results import predictions_text

                    text = predictions_text(r.predictions_csv, run.loaded.config.class_names)
                    if text:  # class sub-folders: the confusion matrix and per-class values
                        _print(text)
                _print(f"throughput: {r.files_per_second:.2f} files/s, {r.megapixels_per_second:.2f} megapixels/s")
                for name, why in r.failed:
                    _print(f"failed: {name}: {why}")
                failed = bool(r.failed)
                for label, path in (
                    ("metrics", r.metrics_csv),
                    ("predictions", r.predictions_csv),
                    ("summary", r.summary_csv),
                ):
                    if path is not None:
                        _print(f"{label}: {path}")
                if r.not_run:
                    _print(f"continue with: napari-bioflow batch --resume {r.run_dir}")
    except DiskFull as e:  # the files finished so far are kept: the run goes on once there is space
        raise e.advise(f"free some space, then continue with: napari-bioflow batch --resume {run.run_dir}") from None
    except KeyboardInterrupt:
        print(
            f"napari-bioflow: interrupted; continue with: napari-bioflow batch --resume {run.run_dir}", file=sys.stderr
        )
        raise SystemExit(130) from None
    if failed:
        _print(f"finished with failures: exit status {FAILED_FILES}")
    return FAILED_FILES if failed else 0


def cmd_init(args) -> None:
    from .config import commented_config
    from .engine.errors import InputError
    from .engine.workflows.base import variants, workflow_class, workflow_classes

    field, values = variants(args.workflow)
    if args.variant and field is None:
        having = ", ".join(dict.fromkeys(c.name for c in workflow_classes() if c.variant))
        raise InputError(f"--pretext is an option of {having}, not {args.workflow}.")
    if args.variant and args.variant not in values:
        raise InputError(f"--pretext {args.variant} is not a variant of {args.workflow}; use {', '.join(values)}.")
    cls = workflow_class(args.workflow, args.variant)
    stem = cls.key().replace("/", "_")
    out = Path(args.output or f"{stem}_{args.ndim}d.yaml")
    if out.exists() and not args.force:
        raise InputError(f"{out} exists already; choose another --output or add --force.")
    out.write_text(commented_config(args.workflow, args.ndim, cls.init_values(args.ndim), cls.init_notes))
    _print(f"wrote {out}")


def cmd_docs(args) -> None:
    from .config import config_reference

    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(config_reference())
    _print(f"wrote {args.output}")


def cmd_models(args) -> None:
    from .engine.models import model_info
    from .engine.workflows.base import workflow_classes

    for cls in workflow_classes():  # grouped by the workflows they serve (a model may serve several)
        _print(f"# {cls.full_title()}")
        for name in cls.models():
            _print(f"{name}: {model_info(name)}")


def cmd_sample(args) -> None:
    """Train on the shipped sample data and predict its held-aside test images."""
    from .config import RunConfig
    from .sample_data import sample_root

    root = sample_root() / ("nuclei_3d" if args.ndim == 3 else "bbbc007_2d")
    base = {
        "name": f"sample_{args.ndim}d",
        "output_dir": args.output,
        "ndim": args.ndim,
        "data": {
            "train_raw": str(root / "train/raw"),
            "train_label": str(root / "train/label"),
            "test_raw": str(root / "test/raw"),
            "test_label": str(root / "test/label"),
            "patch_size": [16, 64, 64] if args.ndim == 3 else [128, 128],
            "val_split": 0.25,
        },
        "model": {"options": {"feature_maps": [16, 32, 64]}},
        "train": {"epochs": args.epochs, "patience": 5, "batch_size": 4, "learning_rate": 2e-3},
    }
    cfg = RunConfig.from_dict(base, args.set, source="sample job")
    args.config = None
    trainer = _train(cfg, args.argv)
    if not trainer.dist.is_main:
        return
    from .engine.predict.predictor import Predictor

    predictor = Predictor(trainer.best_checkpoint, cfg.device, cfg.model_dump(mode="json"), source="sample job")
    _predict_folder(predictor, trainer.experiment)


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
    sp.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
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
    sp.set_defaults(func=cmd_batch)
    sp = sub.add_parser("init", help="write a commented starting config")
    from .engine.workflows.base import list_workflows, workflow_classes

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
    return p


def main(argv=None) -> int:
    """Exit status: 0 done, 2 a user's mistake or a full disk (one line), 3 a batch that finished with failed
    files, 130 interrupted."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    from .engine.errors import InputError
    from .engine.storage import disk_full_from

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
        from .engine.train.distributed import shutdown

        shutdown()  # leaves the process group of a torchrun run (no-op otherwise)
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
