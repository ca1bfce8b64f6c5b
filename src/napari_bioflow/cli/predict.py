"""`predict`: a checkpoint's predictions of a config's test images or a folder, through the one Predictor."""

from __future__ import annotations

from .common import _print


def output_options(sp) -> None:
    """--format and --full-image of `predict` and `batch`: shorthands of predict.output_format / predict.full_image."""
    sp.add_argument(
        "--format",
        choices=["zarr", "ome-zarr"],
        help="how the predicted arrays are stored (predict.output_format; default zarr): ome-zarr writes one "
        "OME-Zarr image per output with the input's physical scale",
    )
    sp.add_argument(
        "--full-image",
        action="store_true",
        default=None,
        help="predict each image in one pass into full_image*/ when it fits (predict.full_image)",
    )


def output_overrides(args) -> list[str]:
    """The --format / --full-image options as predict.* overrides."""
    out = []
    if getattr(args, "format", None):
        out.append(f"predict.output_format={args.format}")
    if getattr(args, "full_image", None):
        out.append("predict.full_image=true")
    return out


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
        for note in res.notes:
            _print(f"note: {note}")
    if predictor.dense and (out / "metrics.csv").exists():
        _print(f"metrics: {out / 'metrics.csv'}")
    _print(f"results: {out}")


def cmd_predict(args) -> None:
    """Predict a folder (or one image) with a checkpoint: its own config with this command's prediction settings
    (its YAML's or --set's); every image is checked before the experiment folder is created."""
    from ..config import RunConfig, apply_override
    from ..engine.errors import InputError
    from ..engine.predict.predictor import Predictor
    from ..engine.storage import remove_run_parts

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
    overrides = [*given, *output_overrides(args), *args.set]
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
