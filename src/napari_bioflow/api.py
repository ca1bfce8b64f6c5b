"""A small Python API over the engine, for scripts and notebooks: the same objects the CLI and the docks use
(RunConfig, Trainer, Predictor, the experiment folder), so a run made here is a run like any other.

    from napari_bioflow import api

    cfg = api.config("my.yaml", overrides=["train.epochs=5"])   # or a dict, or api.config(workflow="image_to_image")
    run = api.train(cfg)                        # from the config's folders; or api.train(cfg, images, labels)
    run.history[-1]["val_loss"], run.best_checkpoint, run.metrics
    pred = api.predict(run.best_checkpoint, image)          # a numpy array, a file or a folder
    pred.outputs["labels"]                       # numpy arrays of the first image (pred.images: every image)
    api.open_run("bioflow_runs/my_experiment/results/my_experiment_1")   # a run's config, logs and metrics

Bad input raises `napari_bioflow.engine.errors.InputError` with the one sentence the CLI prints.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .config import RunConfig
from .engine.errors import InputError

__all__ = ["Prediction", "Run", "config", "open_run", "predict", "train"]


def config(source=None, overrides: Sequence[str] = (), *, workflow: str | None = None, ndim: int = 2, **fields):
    """A validated RunConfig from a YAML file, a dict or a RunConfig (`source`); with no source, the `init`
    starting values of `workflow` in `ndim` dimensions ("self_supervised/crappify" names a pretext). `overrides` are `section.field=value` strings (as `--set`);
    keyword `fields` set top-level fields or whole sections (dicts are merged into the section)."""
    if isinstance(source, RunConfig):
        data = source.model_dump(mode="json")
    elif isinstance(source, dict):
        data = dict(source)
    elif source is not None:
        return (
            RunConfig.load(Path(source), list(overrides)) if not fields else config(_yaml(source), overrides, **fields)
        )
    else:
        from .engine.workflows import get_workflow

        # a workflow name, or name/variant (a self-supervised pretext)
        name, _, variant = (workflow or RunConfig.model_fields["workflow"].default).partition("/")
        wf = get_workflow(name, variant or None)
        data = {"workflow": wf.name, "ndim": ndim, **_merge({}, type(wf).init_values(ndim))}
        if wf.variant:
            section, key = wf.variant[0].split(".")
            data.setdefault(section, {})[key] = wf.variant[1]
        paths = data.setdefault("data", {})
        for key in [k for k, v in paths.items() if isinstance(v, str) and v.startswith("path/to/")]:
            del paths[key]  # the template's placeholders
    data = _merge(data, fields)
    return RunConfig.from_dict(data, list(overrides), source=str(source) if source is not None else "api.config")


def _yaml(path) -> dict:
    import yaml

    return yaml.safe_load(Path(path).read_text()) or {}


def _merge(base: dict, more: dict) -> dict:
    out = dict(base)
    for k, v in more.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@dataclass
class Run:
    """A run's folder and what it holds: the config it ran with, the per-epoch log, the test metrics."""

    results_dir: Path
    config: RunConfig
    history: list[dict[str, float]] = field(default_factory=list)  # train_logs/<run>_log.csv, one dict per epoch
    metrics: list[dict[str, Any]] = field(default_factory=list)  # metrics.csv rows (per image, then the set)
    predictions: list[dict[str, Any]] = field(default_factory=list)  # predictions.csv rows (classification)

    @property
    def name(self) -> str:
        return self.results_dir.name

    @property
    def experiment_dir(self) -> Path:
        return self.results_dir.parent.parent

    @property
    def best_checkpoint(self) -> Path | None:
        path = self.experiment_dir / "checkpoints" / f"{self.name}-checkpoint-best.pth"
        return path if path.is_file() else None

    @property
    def last_checkpoint(self) -> Path | None:
        path = self.experiment_dir / "checkpoints" / f"{self.name}-checkpoint-last.pth"
        return path if path.is_file() else None

    def files(self, folder: str = "") -> list[Path]:
        """The files of the results folder (or one of its sub-folders, e.g. "per_image"), sorted."""
        root = self.results_dir / folder
        return sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []


def open_run(path) -> Run:
    """A run from its results folder (`<output_dir>/<name>/results/<name>_<n>`), its config file
    (`config_files/<name>_<n>.yaml`) or one of its checkpoints."""
    path = Path(path)
    if path.suffix in (".yaml", ".yml") and path.parent.name == "config_files":
        results = path.parent.parent / "results" / path.stem
    elif path.suffix == ".pth" and path.parent.name == "checkpoints":
        results = path.parent.parent / "results" / path.name.split("-checkpoint-")[0]
    else:
        results = path
    cfg_path = results.parent.parent / "config_files" / f"{results.name}.yaml"
    if not results.is_dir() or not cfg_path.is_file():
        raise InputError(f"{path} is not a run: expected <output_dir>/<name>/results/<name>_<n> with its config file.")
    return Run(
        results,
        RunConfig.load(cfg_path),
        _read_csv(results / "train_logs" / f"{results.name}_log.csv"),
        _read_csv(results / "metrics.csv"),
        _read_csv(results / "predictions.csv"),
    )


def _read_csv(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _number(value: str):
    try:
        return int(value)
    except ValueError:
        try:
            return float(value)
        except ValueError:
            return value


def train(
    cfg,
    images: Sequence | None = None,
    labels: Sequence | None = None,
    *,
    val_images: Sequence | None = None,
    val_labels: Sequence | None = None,
    overrides: Sequence[str] = (),
    predict_test: bool = True,
    on_report: Callable[[Any], None] | None = None,
) -> Run:
    """Train a run (engine.train.Trainer) and, when the config names test images, predict them into the run as
    `napari-bioflow train` does. `cfg`: a RunConfig, dict or YAML path. `images`/`labels`: arrays instead of the
    config's folders (labels: label or target images; class names for classification; none for self-supervision).
    `on_report` receives every report of the trainer (StartReport, StepReport, EpochReport, DoneReport)."""
    from .engine.train.trainer import Trainer

    cfg = config(cfg, overrides)
    given = (_samples(cfg, images, labels, "training"), _samples(cfg, val_images, val_labels, "validation"))
    trainer = Trainer(cfg, *given)
    for report in trainer.run():
        if on_report is not None:
            on_report(report)
    if predict_test and cfg.data.test_raw is not None and trainer.best_checkpoint is not None:
        predict(
            trainer.best_checkpoint, cfg.data.test_raw, cfg.data.test_label, settings=cfg, experiment=trainer.experiment
        )
    return open_run(trainer.experiment.results)


def _samples(cfg, images, labels, role: str):
    if images is None:
        if labels is not None:
            raise InputError(f"{role} labels were given without their images.")
        return None
    from .engine.workflows import get_workflow

    images = list(images)
    wf = get_workflow(cfg)
    if labels is not None and len(labels) != len(images):
        raise InputError(f"{len(images)} {role} images but {len(labels)} labels were given.")
    if not wf.dense:
        return _class_samples(cfg, images, labels, role)
    from .engine.data.sources import make_sample

    if wf.needs_target and labels is None:
        raise InputError(f"The {role} images need their labels (or targets) for {wf.full_title()}.")
    return [
        make_sample(
            image,
            f"{role} image {i}",
            cfg,
            label=labels[i] if wf.needs_target else None,
            label_name=f"{role} labels {i}",
            need_label=wf.needs_target,
        )
        for i, image in enumerate(images)
    ]


def _class_samples(cfg, images, labels, role: str):
    from .engine.data.classification_data import ClassSample, natural_key
    from .engine.data.sources import check_finite, to_channels_last

    if labels is None:
        raise InputError(f"The {role} images need a class name each for classification.")
    names = [str(c) for c in labels]
    if role == "training" and not cfg.class_names:
        classes = sorted(set(names), key=natural_key)
        cfg.n_classes, cfg.class_names = max(2, len(classes)), classes
    out = []
    for i, (image, cls) in enumerate(zip(images, names)):
        if cls not in cfg.class_names:
            raise InputError(f"The class {cls!r} of {role} image {i} is not one of {', '.join(cfg.class_names)}.")
        raw = to_channels_last(image, cfg.ndim, cfg.data.in_channels, f"{role} image {i}", axes=cfg.data.axes)
        check_finite(raw, f"{role} image {i}")
        out.append(ClassSample(name=f"{role} image {i}", raw=raw, class_index=cfg.class_names.index(cls)))
    return out


@dataclass
class Prediction:
    """Where a prediction was written and what it gave: per image its outputs (numpy arrays named as the
    workflow's outputs, e.g. probabilities and labels) and metrics (with labels); classifiers give `classes`."""

    results_dir: Path | None
    images: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    classes: list[dict[str, Any]] = field(default_factory=list)

    @property
    def outputs(self) -> dict[str, np.ndarray]:
        """The outputs of the first (or only) image."""
        return next(iter(self.images.values()), {})


def predict(
    checkpoint,
    image,
    labels=None,
    *,
    output_dir=None,
    name: str | None = None,
    settings=None,
    overrides: Sequence[str] = (),
    device: str = "auto",
    experiment=None,
) -> Prediction:
    """Predict with a checkpoint (engine.predict.Predictor): `image` is a numpy array (one image) or a path (a file
    or a folder; `labels` the matching label file or folder). The results go to a new run under `output_dir`
    (default: the checkpoint's) named `name`, as `napari-bioflow predict` writes them. `settings`: prediction
    settings (a RunConfig or nested dict; only prediction fields are taken), `overrides` as `--set`."""
    from .engine.predict.predictor import Predictor

    settings = settings.model_dump(mode="json") if isinstance(settings, RunConfig) else dict(settings or {})
    for key, value in (("output_dir", output_dir), ("name", name), ("device", device)):
        if value is not None:
            settings[key] = str(value)
    predictor = Predictor(checkpoint, device, settings, overrides, source="api.predict")
    if isinstance(image, (str, Path)):
        items = predictor.folder_items(Path(image), Path(labels) if labels is not None else None)
        predictor.check_files(items)
        return _run(predictor, experiment, lambda out: predictor.files(items, out, finite_checked=True))
    if not predictor.dense:
        from .engine.predict.classification_results import classify_array

        probs = np.asarray(classify_array(predictor.loaded, image, predictor.device))
        best = int(np.argmax(probs))
        row = {"class": predictor.config.class_label(best), "confidence": float(probs[best])}
        return Prediction(None, classes=[{**row, "probabilities": probs}])
    checked = predictor.check_image(image, "image", labels, "labels")

    def one(out):
        job = predictor.image(checked, "image", out, "image", labels, "labels", finite_checked=False)
        result = job.run()
        job.cleanup()
        yield result

    return _run(predictor, experiment, one)


def _run(predictor, experiment, results) -> Prediction:
    made = experiment is None
    experiment = predictor.create_experiment() if made else experiment
    try:
        out = Prediction(experiment.results)
        for result in results(experiment.results):
            if isinstance(result, dict):  # classification of files: predictions.csv and its rows
                out.classes = _read_csv(Path(result["predictions"]))
                continue
            out.images[result.name] = {
                k: np.asarray(v) for k, v in result.outputs.items() if hasattr(v, "shape") and hasattr(v, "dtype")
            }
            out.metrics[result.name] = dict(result.metrics)
        return out
    except BaseException:
        from .engine.storage import remove_run_parts

        remove_run_parts(experiment)
        raise
