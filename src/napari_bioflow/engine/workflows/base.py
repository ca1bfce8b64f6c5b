"""The interface between a workflow and the shared engine: targets, loss, head, metrics, outputs.

The trainer and predictor only call these methods, so a new workflow is a new file with a registered
subclass and never a change to the trainer.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import InputError

_WORKFLOWS: dict[str, type["Workflow"]] = {}


def register_workflow(cls: type["Workflow"]) -> type["Workflow"]:
    _WORKFLOWS[cls.name] = cls
    return cls


def get_workflow(name: str) -> "Workflow":
    from . import classification, image_to_image, self_supervised, semantic  # noqa: F401  (registers the built-in workflows)

    if name not in _WORKFLOWS:
        raise KeyError(f"unknown workflow '{name}'; available: {', '.join(sorted(_WORKFLOWS))}")
    return _WORKFLOWS[name]()


def list_workflows() -> list[str]:
    from . import classification, image_to_image, self_supervised, semantic  # noqa: F401

    return sorted(_WORKFLOWS)


class Workflow:
    name: str = ""
    target_is_image = False  # True when the target is an image (augmented with a channel axis)
    chart_metric = ""  # the validation metric drawn beside the loss, e.g. "iou_foreground"
    needs_target = True  # False: trained on raw images alone (self-supervision)
    dense = True  # a value per pixel, predicted by sliding window (False: one prediction per image, classification)

    def __init__(self):
        self.state: dict[str, Any] = {}  # fitted on the training data, saved in the checkpoint (prepare/load_state)

    def prepare(self, dataset, cfg, normalizer) -> None:
        """Fit whatever the workflow learns from the training data before training (e.g. target normalization)."""

    def load_state(self, state: dict[str, Any]) -> None:
        self.state = dict(state)

    # --- data ---------------------------------------------------------------------------------------
    def build_dataset(self, cfg, train=None, val=None):
        """Checked training and validation samples from the given samples (layers) or the config's folders."""
        from ..models import model_task
        from ..sources import build_dataset

        try:
            if model_task(cfg.model.name) != "dense":
                raise InputError(f"Model '{cfg.model.name}' is an image classifier; it cannot be used for "
                                 f"{cfg.workflow.replace('_', ' ')} (model.name).")
        except KeyError as e:
            raise InputError(f"model: {e}") from None
        return build_dataset(cfg, train, val)

    def training_data(self, dataset, cfg, normalizer):
        """The TrainingData the trainer draws batches from (random patches for the dense workflows)."""
        from ..training_data import PatchData

        return PatchData(dataset, cfg, normalizer, self.read_target)

    def augment(self, x, y, cfg, generator):
        """Augment a training batch; the same spatial transform for an image-like target."""
        from ..augment import augment_batch

        a = cfg.augment
        return augment_batch(x, y, flips=a.flips, rotate90=a.rotate90, intensity=a.intensity, generator=generator,
                             target_is_image=self.target_is_image)

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
        from ..inference import default_tile

        return default_tile(cfg, spatial, divisor), cfg.predict.overlap

    def prediction_input(self, image, cfg, out_dir: Path, stem: str):
        """The array the model predicts from (self-supervision degrades it here); channel last."""
        return image

    def prediction_forward(self, model) -> Callable:
        """Tensor (B, C, ...) -> the values blended across tiles."""
        return lambda x: self.activation(model(x))

    def full_target(self, target, region, flags: dict[str, Any]) -> np.ndarray:
        """The ground truth of a region as write_outputs compares it (labels: integers)."""
        t = np.asarray(target[region])
        return (t > 0).astype(np.int64) if flags.get("label_is_255") else t.astype(np.int64)

    # --- outputs ------------------------------------------------------------------------------------
    def write_outputs(self, prediction, store: Path, out_dir: Path, stem: str, cfg, target=None) -> dict[str, Any]:
        """Write the results of one predicted image (prediction: channel-first zarr array inside the zarr folder
        `store`; files under the run's results folder `out_dir`). `target(region)` reads the ground truth of a
        region when there is one. Return {output name: array-like}, with metrics under 'metrics'."""
        raise NotImplementedError
