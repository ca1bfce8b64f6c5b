"""`train` and `sample`: train from a config (then predict its test images), with the one-line reports."""

from __future__ import annotations

from .common import _load_config, _print
from .predict import _predict_folder, cmd_predict


def _train(cfg, argv=None):
    """Train with progress lines; return the trainer. Ctrl-C names the checkpoints and the command that resumes."""
    from ..engine.storage import remove_run_parts
    from ..engine.train.trainer import Trainer

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
    from ..engine.train.trainer import DoneReport, EpochReport, StartReport

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
    from ..engine.workflows import get_workflow

    if not get_workflow(cfg).dense:  # a class per image: the classes come from the training folder
        from ..engine.data.classification_data import class_subfolders, open_set, resolve_class_names
        from ..engine.data.pairing import refuse_labels_for_classifier
        from ..engine.predict.classification_results import class_test_items

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
    from ..engine.data.pairing import folder_pairs
    from ..engine.predict.inference import check_inputs

    for n in check_inputs(cfg, folder_pairs(cfg.data.test_raw, cfg.data.test_label, "test"), ""):
        _print(f"note: {n}")


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
        from ..engine.predict.predictor import Predictor

        predictor = Predictor(trainer.best_checkpoint, cfg.device, cfg.model_dump(mode="json"), source=str(args.config))
        _predict_folder(predictor, trainer.experiment)


def cmd_sample(args) -> None:
    """Train on the shipped sample data and predict its held-aside test images."""
    from ..config import RunConfig
    from ..sample_data import sample_root

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
    from ..engine.predict.predictor import Predictor

    predictor = Predictor(trainer.best_checkpoint, cfg.device, cfg.model_dump(mode="json"), source="sample job")
    _predict_folder(predictor, trainer.experiment)
