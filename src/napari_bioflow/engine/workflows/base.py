"""The interface between a workflow and the shared engine: targets, loss, head, metrics, outputs.

The trainer and predictor only call these methods, so a new workflow is a new file with a registered
subclass and never a change to the trainer.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError

_WORKFLOWS: dict[tuple[str, str], type[Workflow]] = {}


def register_workflow(cls: type[Workflow]) -> type[Workflow]:
    """Register a workflow class under its config name (and variant value, e.g. a self-supervised pretext)."""
    key = (cls.name, cls.variant[1] if cls.variant else "")
    if key in _WORKFLOWS and _WORKFLOWS[key] is not cls:
        raise ValueError(f"workflow {'/'.join(filter(None, key))} is already registered")
    _WORKFLOWS[key] = cls
    return cls


def unregister_workflow(cls: type[Workflow]) -> None:
    """Take a registered workflow away again (a plugin unloaded, a test's own workflow)."""
    _WORKFLOWS.pop((cls.name, cls.variant[1] if cls.variant else ""), None)


_builtin_loaded = False


def _builtin() -> None:
    """Import every module of this package once: each registers its workflows (a new workflow is a new file here)."""
    global _builtin_loaded
    if _builtin_loaded:
        return
    _builtin_loaded = True  # first: the modules import this one
    import importlib
    import pkgutil

    package = __name__.rsplit(".", 1)[0]
    for info in pkgutil.iter_modules(importlib.import_module(package).__path__):
        importlib.import_module(f"{package}.{info.name}")


def _config_value(cfg, path: str):
    value = cfg
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else getattr(value, part, None)
    return value


def workflow_class(name: str, variant: str | None = None) -> type[Workflow]:
    """The class registered for config name `name` and, for names with variants, `variant` (the first registered
    variant, the config's default, when None)."""
    _builtin()
    classes = [c for c in workflow_classes() if c.name == name]
    if not classes:
        raise KeyError(f"unknown workflow '{name}'; available: {', '.join(list_workflows())}")
    if variant is None or classes[0].variant is None:
        return next((c for c in classes if c.default_variant), classes[0])
    for c in classes:
        if c.variant[1] == variant:
            return c
    field = classes[0].variant[0]
    raise KeyError(f"unknown {field} '{variant}' for {name}; available: {', '.join(c.variant[1] for c in classes)}")


def get_workflow(spec, variant: str | None = None) -> Workflow:
    """A fresh workflow for a config (a RunConfig or its dict: `workflow` and, when the workflow has variants,
    the field naming the variant) or for a workflow name (its default variant unless `variant` is given)."""
    if isinstance(spec, str):
        return workflow_class(spec, variant)()
    name = _config_value(spec, "workflow")
    cls = workflow_class(name)
    if cls.variant is not None:
        cls = workflow_class(name, _config_value(spec, cls.variant[0]) or None)
    return cls()


def list_workflows() -> list[str]:
    """The config names of the registered workflows, in their `order`."""
    _builtin()
    return list(dict.fromkeys(c.name for c in workflow_classes()))


def workflow_classes() -> list[type[Workflow]]:
    """Every registered workflow class (one per variant), in their `order`."""
    _builtin()
    return sorted(_WORKFLOWS.values(), key=lambda c: c.order)  # stable: registration order within one rank


def added_workflows() -> list[type[Workflow]]:
    """The registered workflow classes defined outside this package (a plugin's, a test's): a child process that
    trains (engine/train/child.py) registers them again, since it imports only the built-in ones."""
    return [c for c in workflow_classes() if not c.__module__.startswith(__name__.split(".")[0] + ".")]


def variants(name: str) -> tuple[str | None, list[str]]:
    """(config field, values) of a workflow's variants; (None, []) when it has none."""
    classes = [c for c in workflow_classes() if c.name == name]
    if not classes or classes[0].variant is None:
        return None, []
    return classes[0].variant[0], [c.variant[1] for c in classes]


class Workflow:
    # --- what the front ends read (the CLI, the docks, the preview and batch never branch on names) ----------------
    name: str = ""  # the config's `workflow:` value
    order = 100  # where it is listed (CLI choices, the Train dock's workflow list)
    variant: tuple[str, str] | None = None  # (config field, value) when several classes share `name`
    title: str = ""  # as the docks and messages name it: "semantic segmentation"
    variant_title: str = ""  # the variant's own words: "masking (masked autoencoder)"
    default_variant = False  # the variant a name alone stands for (the config field's default)
    trains_from = "labels"  # "labels" (raw + Labels), "image" (raw + target image), "none" (raw only), "classes"
    losses: tuple[str, ...] = ("auto",)  # train.loss values it accepts ("auto" first)
    default_model = "unet"
    # config fields ("section.field") whose default is the workflow's own, filled in when a config gives none (a
    # saved config names its own); the Train dock shows them and follows the workflow until the user picks a value
    config_defaults: dict[str, Any] = {"data.normalization": "percentile"}
    model_tasks: tuple[str, ...] = ("dense",)  # registry tasks that fit
    excluded_model_tags: tuple[str, ...] = ("masked_autoencoder",)  # registry tags that do not fit
    required_model_tags: tuple[str, ...] = ()  # registry tags a model must have
    prediction_options: tuple[str, ...] = (
        "tta",
    )  # predict.* options that apply (tile_size, overlap, batch_size: dense)
    prediction_options_3d: tuple[str, ...] = ()  # more options that apply to 3D checkpoints only
    section_options: tuple[str, ...] = ()  # config fields of its own section shown in the Train dock
    predict_section_options: tuple[str, ...] = ()  # ... and in the Predict dock
    target_layer = ""  # what gives metrics at prediction: "labels" (a Labels layer), "image" (a target Image), ""
    outputs: tuple = ()  # spec.Output of each predicted image, in the order the layers are added
    metric_keys: tuple[str, ...] = ()  # the metrics a predicted image reports (spec.METRICS gives their words)
    chart_title = ""  # the validation metric's title in the Train dock's chart
    init_notes: tuple[str, ...] = ()  # the header of `napari-bioflow init`

    target_is_image = False  # True when the target is an image (augmented with a channel axis)
    chart_metric = ""  # the validation metric drawn beside the loss, e.g. "iou_foreground"
    needs_target = True  # False: trained on raw images alone (self-supervision)
    dense = True  # a value per pixel, predicted by sliding window (False: one prediction per image, classification)

    @classmethod
    def key(cls) -> str:
        """'self_supervised/masking': the name and, for variants, the variant value."""
        return cls.name + (f"/{cls.variant[1]}" if cls.variant else "")

    @classmethod
    def full_title(cls) -> str:
        return cls.title + (f", {cls.variant_title}" if cls.variant_title else "")

    @classmethod
    def fits_model(cls, name: str) -> bool:
        """Whether registered model `name` fits this workflow (asked of the registry's task and tags)."""
        from ..models import model_tags, model_task

        try:
            task, tags = model_task(name), set(model_tags(name))
        except KeyError:
            return False
        return (
            task in cls.model_tasks and not tags & set(cls.excluded_model_tags) and set(cls.required_model_tags) <= tags
        )

    @classmethod
    def models(cls, ndim: int | None = None) -> list[str]:
        """The registered models that fit this workflow in `ndim` dimensions."""
        from ..models import list_models

        return [n for n in list_models(ndim, task=None) if cls.fits_model(n)]

    @classmethod
    def options_for(cls, ndim: int) -> tuple[str, ...]:
        """The prediction options that apply to a checkpoint of this workflow in `ndim` dimensions."""
        return cls.prediction_options + (cls.prediction_options_3d if ndim == 3 else ())

    @classmethod
    def init_values(cls, ndim: int) -> dict:
        """Starting values of `napari-bioflow init` (beside the config's defaults)."""
        return {}

    @classmethod
    def complete_config(cls, data: dict) -> None:
        """Fill in, in place, defaults of a config dict (before validation) that depend on what else it says, e.g.
        the self-supervised pretext chosen by the model named (the default variant's class is asked)."""
        cls.complete_defaults(data)

    @classmethod
    def default_of(cls, key: str):
        """The value of `key` ("section.field") this workflow starts from: its own or the config field's default."""
        if key in cls.config_defaults:
            return cls.config_defaults[key]
        from ...config import RunConfig

        section, _, name = key.partition(".")
        return RunConfig.model_fields[section].annotation.model_fields[name].default

    @classmethod
    def complete_defaults(cls, data: dict) -> None:
        """Each of config_defaults where the config names no value of its own (a saved config or checkpoint always
        names them, so it keeps its own)."""
        for key, value in cls.config_defaults.items():
            name, _, field = key.partition(".")
            section = data.get(name)
            if section is None or isinstance(section, dict):
                if field not in (section or {}):
                    data[name] = {**(section or {}), field: value}
            elif hasattr(section, "model_fields_set") and field not in section.model_fields_set:
                data[name] = section.model_copy(update={field: value})

    rows_column = "image"  # the first column of predictions.csv (one row per predicted image)

    def write_set_metrics(self, run_dir: Path, rows: list[dict], cfg) -> Path | None:
        """Metrics over a whole set of per-image predictions (predictions.csv rows), written into `run_dir`; the
        file written, or None (dense workflows pool their metrics image by image)."""
        return None

    def check_model(self, cfg) -> None:
        """Refuse a model that does not fit this workflow (InputError naming model.name and the models that fit)."""
        from ..models import model_task

        try:
            model_task(cfg.model.name)
        except KeyError as e:
            raise InputError(f"model: {e}") from None
        if not self.fits_model(cfg.model.name):
            raise InputError(
                f"Model '{cfg.model.name}' does not fit {self.full_title()}; use "
                f"{', '.join(self.models(cfg.ndim))} (model.name)."
            )

    def check_config(self, cfg) -> None:
        """Refuse settings this workflow cannot honour (ValueError, worded with config keys); run by RunConfig."""
        if cfg.train.loss not in self.losses:
            raise ValueError(
                f"train.loss '{cfg.train.loss}' does not fit {self.full_title()}; use one of {', '.join(self.losses)}"
            )
        from ...config import PredictConfig

        defaults = PredictConfig()
        stacked = cfg.ndim == 2 and cfg.predict.stack_2d
        if cfg.predict.stack_2d and (cfg.ndim != 2 or not self.prediction_options_3d):
            raise ValueError(f"predict.stack_2d does not apply to {cfg.ndim}D {self.full_title()}")
        for option in ("tta", "z_filter", "yz_filter"):
            applies = option in self.options_for(3 if stacked and option != "tta" else cfg.ndim)
            if not applies and getattr(cfg.predict, option) != getattr(defaults, option):
                hint = (
                    " (set predict.stack_2d to filter 2D images as one 3D stack)"
                    if option in self.options_for(3)
                    else ""
                )
                raise ValueError(f"predict.{option} does not apply to {cfg.ndim}D {self.full_title()}{hint}")
        if cfg.predict.full_image and not self.dense:
            raise ValueError(f"predict.full_image does not apply to {self.full_title()} (one prediction per image)")

    def __init__(self):
        self.state: dict[str, Any] = {}  # fitted on the training data, saved in the checkpoint (prepare/load_state)

    def prepare(self, dataset, cfg, normalizer) -> None:
        """Fit whatever the workflow learns from the training data before training (e.g. target normalization)."""

    def prepare_run(self, results: Path, dataset, cfg) -> None:
        """Once the run's results folder exists, before the first batch: write what the workflow keeps there."""

    def load_state(self, state: dict[str, Any]) -> None:
        self.state = dict(state)

    # --- data ---------------------------------------------------------------------------------------
    def build_dataset(self, cfg, train=None, val=None):
        """Checked training and validation samples from the given samples (layers) or the config's folders."""
        from ..data.sources import build_dataset

        self.check_model(cfg)
        return build_dataset(cfg, train, val)

    def training_data(self, dataset, cfg, normalizer):
        """The TrainingData the trainer draws batches from (random patches for the dense workflows)."""
        from ..data.training_data import PatchData

        return PatchData(dataset, cfg, normalizer, self.read_target)

    def augment(self, x, y, cfg, generator):
        """Augment a training batch; the same spatial transform for an image-like target."""
        from ..data.augment import augment

        return augment(x, y, cfg.augment, generator, target_is_image=self.target_is_image)

    # --- head and targets ---------------------------------------------------------------------------
    def out_channels(self, cfg) -> int:
        raise NotImplementedError

    def model_defaults(self, cfg) -> dict[str, Any]:
        """Model options this workflow prefers over the registry's defaults (the config's options still win)."""
        return {}

    def prediction_channels(self, cfg) -> int:
        """Channels of the blended prediction (usually the head's)."""
        return self.out_channels(cfg)

    def check_target(self, target, name: str, spatial_shape: tuple[int, ...], cfg, notes: list[str]) -> dict[str, Any]:
        """Validate a target array for a raw image; return Sample attributes to set (e.g. label_is_255)."""
        raise NotImplementedError

    def read_target(self, sample, sl, x: np.ndarray) -> np.ndarray:
        """The training target of a patch; `x` is the normalized raw patch (channels first)."""
        raise NotImplementedError

    def make_pair(self, x, y, generator, cfg):
        """Final (input, target) tensors of a batch, after augmentation (self-supervision degrades x here)."""
        return x, y

    def training_loss(self, model, x, y, loss_fn):
        return loss_fn(model(x), y)

    def validation_step(self, model, x, y, loss_fn):
        """(loss, prediction as the metrics take it) of a validation batch."""
        logits = model(x)
        return loss_fn(logits, y), self.activation(logits)

    # --- training -----------------------------------------------------------------------------------
    def loss(self, cfg) -> Callable:
        """Return loss(logits, target) -> scalar tensor."""
        raise NotImplementedError

    def activation(self, logits):
        """Model logits -> the values predicted and blended (e.g. softmax probabilities)."""
        raise NotImplementedError

    def metrics(self, cfg):
        """A fresh accumulator with update(prediction: np.ndarray (B,C,...), target: np.ndarray) and compute() -> dict."""
        raise NotImplementedError

    # --- prediction ---------------------------------------------------------------------------------
    def tiling(self, cfg, spatial: tuple[int, ...], divisor: int) -> tuple[list[int], float]:
        """(tile size, overlap) for predicting an image of this spatial shape."""
        from ..predict.inference import default_tile

        return default_tile(cfg, spatial, divisor), cfg.predict.overlap

    def prediction_input(self, image, cfg, out_dir: Path, stem: str) -> tuple[Any, dict[str, Any]]:
        """(the array the model predicts from, channel last; what write_outputs needs of this image besides the
        prediction). Self-supervision degrades the image here and hands the clean one on."""
        return image, {}

    def preview_input(self, crop: np.ndarray, cfg, normalizer) -> np.ndarray:
        """A channel-last crop as the training preview feeds it to the model (crappify degrades it first)."""
        return crop

    def prediction_forward(self, model, cfg=None) -> Callable:
        """Tensor (B, C, ...) -> the values blended across tiles."""
        return lambda x: self.activation(model(x))

    def full_target(self, target, region, flags: dict[str, Any]) -> np.ndarray:
        """The ground truth of a region as write_outputs compares it (labels: integers)."""
        t = np.asarray(target[region])
        return (t > 0).astype(np.int64) if flags.get("label_is_255") else t.astype(np.int64)

    # --- outputs ------------------------------------------------------------------------------------
    def write_outputs(
        self, prediction, store: Path, out_dir: Path, stem: str, cfg, target=None, inputs: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Write the results of one predicted image (prediction: channel-first zarr array inside the zarr folder
        `store`; files under the run's results folder `out_dir`). `target(region)` reads the ground truth of a
        region when there is one; `inputs` is what prediction_input handed on. Return {output key: array-like}
        (the keys of `outputs`), with metrics under 'metrics'."""
        raise NotImplementedError
