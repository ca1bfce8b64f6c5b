"""The Predict dock's checks and set-up: the chosen checkpoint and what it shows (target kind, its options), the dock's
settings as config sections (read on the GUI thread), then the engine's Predictor and the job (in a worker: opening a
checkpoint takes seconds)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from napari.layers import Image, Labels

from ..engine.errors import InputError
from ..engine.train.checkpoint_info import checkpoint_info
from .layers import (
    layer_array,
    layer_channels,
)
from .shared import last_trained

JUST_TRAINED, FROM_FILE = "model just trained", "checkpoint file"
JUST_TRAINED_OPTIONS = ("tta",)  # the prediction options shown before a checkpoint is chosen


def applies(info, option: str) -> bool:
    """Whether prediction option `option` ('tta', 'z_filter', ...) applies to the checkpoint described by `info`."""
    return option in (info.workflow.options_for(info.ndim) if info is not None else JUST_TRAINED_OPTIONS)


def is_in_memory(data) -> bool:
    """A numpy array held in memory: scanning it is quick enough for the GUI thread (not a memmap, dask or zarr)."""
    import numpy as np

    return isinstance(data, np.ndarray) and not isinstance(data, np.memmap)


@dataclass
class PendingJob:
    """A prediction checked as far as it can be without reading pixels: what `_create_job` needs."""

    predictor: Any
    data: Any  # the layer's array, as given to the engine
    image: Any  # channel-last view of it, for the NaN/inf scan
    name: str
    stem: str
    target: Any
    target_name: str
    layer: Any


class PredictSetup:
    """Mixin of PredictWidget: from the fields to a checked prediction job."""

    def _chosen_checkpoint(self) -> Path | None:
        if self.model_source.value == JUST_TRAINED:
            return last_trained.checkpoint
        text = str(self.checkpoint.line_edit.value).strip()
        return Path(text) if text else None

    def _update_visibility(self, *_) -> None:
        from_file = self.model_source.value == FROM_FILE
        self.checkpoint.visible, self.trained.visible = from_file, not from_file
        path = self._chosen_checkpoint()
        self.kind = info = checkpoint_info(path) if path is not None and path.exists() else None  # file, zip, folder
        wf = info.workflow if info is not None else None
        # the target field: a target Image for image to image, a Labels layer for segmentation, none otherwise
        kind = {"image": Image, "labels": Labels}.get(wf.target_layer if wf is not None else "")
        if kind is not None and kind is not self._target_kind:
            self._target_kind = kind
            self.target.value = None
            self.target.reset_choices()
        self.target.visible = kind is not None
        self.target.label = "labels" if kind is Labels else "target"
        cls = wf is not None and not wf.dense  # a class per image
        self.classify_group.setVisible(cls)
        self.metrics.visible = not cls  # the classification panel shows its own
        self.image.visible = not cls or self.classify.scope.value == "chosen layer"
        for w in (
            self.tile,
            *(self.form[p] for p in ("predict.overlap", "predict.batch_size", "predict.output_format")),
            self.form["predict.full_image"],
        ):
            w.visible = not cls  # tiles (and output arrays) mean nothing for a class per image
        for option in ("z_filter", "yz_filter", "tta"):
            self.form[f"predict.{option}"].visible = applies(info, option)
        for p in self.section_options:  # shown for the workflows that read them, starting at the checkpoint's value
            own = wf is not None and p in wf.predict_section_options
            self.form[p].visible = own
            if own and info.config_value(p) is not None:
                self.form[p].value = info.config_value(p)

    def _on_trained(self, checkpoint: Path) -> None:
        self.trained.value = Path(checkpoint).name
        self.trained.tooltip = str(checkpoint)
        self.model_source.value = JUST_TRAINED
        self._update_visibility()

    # --- set-up on the GUI thread: every check runs here, so bad input is reported at once ---------------------
    def _checkpoint(self) -> Path:
        if self.model_source.value == JUST_TRAINED:
            if last_trained.checkpoint is None:
                raise InputError(
                    "No model has been trained yet: train one in the Train dock or choose a checkpoint file."
                )
            return last_trained.checkpoint
        text = str(self.checkpoint.line_edit.value).strip()
        if not text:
            raise InputError("Choose a checkpoint file (.pth) to predict with.")
        return Path(text)

    def _settings(self, workflow, ndim: int) -> dict:
        """This dock's prediction settings as config sections: the options the checkpoint's workflow hides (3D label
        filters, TTA of a masked autoencoder) at their defaults; the workflow's own settings (crappify's degrade)."""
        from ..config import PredictConfig

        values = self.form.values()
        predict, defaults = values.pop("predict"), PredictConfig()
        for option in ("z_filter", "yz_filter", "tta"):
            if option not in workflow.options_for(ndim):
                predict[option] = getattr(defaults, option)
        predict["tile_size"] = [self.tile.value] * ndim if self.tile.value else None
        return {**values, "predict": predict}

    def _predictor(self, expect_workflow: str | None = None):
        """The engine's Predictor over the chosen checkpoint with this dock's settings (validated by the config)."""
        return self._predictor_opener(expect_workflow)()

    def _predictor_opener(self, expect_workflow: str | None = None):
        """What opens the engine's Predictor, from the fields read now (GUI thread): call it in a worker, as opening
        a checkpoint (reading it, building the model) takes seconds."""
        from functools import partial

        from ..engine.predict.predictor import Predictor

        path = self._checkpoint()
        info = self.kind if self.kind is not None else checkpoint_info(path)
        workflow, ndim = (info.workflow, info.ndim) if info is not None else (None, 2)
        device = self.form["device"].value
        if workflow is None:  # unreadable: the predictor says why, in full
            return partial(Predictor, path, device, source="Predict", expect_workflow=expect_workflow)
        settings = self._settings(workflow, ndim)
        return partial(Predictor, path, device, settings, source="Predict", expect_workflow=expect_workflow)

    def _make_job(self):
        """The fields read (GUI thread) into `prepare()`, which opens the checkpoint and makes every check that reads
        no pixels (the layer, checkpoint, 2D/3D, channels, the target), before any write: run it in a worker."""
        from functools import partial

        layer = self.image.value
        if layer is None:
            raise InputError("Choose an Image layer to predict (or load one into the viewer).")
        target_layer = self.target.value if not self.target.native.isHidden() else None
        return partial(self._check_job, self._predictor_opener(), layer, target_layer)

    @staticmethod
    def _check_job(open_predictor, layer, target_layer) -> PendingJob:
        predictor = open_predictor()
        cfg, workflow = predictor.config, predictor.workflow
        channels = layer_channels(layer, cfg.ndim, cfg.data.in_channels)
        if channels is not None and channels != cfg.data.in_channels:
            raise InputError(
                f"Checkpoint {predictor.checkpoint} expects {cfg.data.in_channels} input channel(s), but "
                f"image layer '{layer.name}' has {channels}."
            )
        name = f"image layer '{layer.name}'"
        data = layer_array(layer)
        target, target_name = None, ""
        if target_layer is not None:  # checked as the prediction will, but before the experiment folder exists
            target_name = f"{'labels' if isinstance(target_layer, Labels) else 'target'} layer '{target_layer.name}'"
            outputs = workflow.out_channels(cfg)
            got = layer_channels(target_layer, cfg.ndim) if isinstance(target_layer, Image) else None
            if workflow.target_is_image and got is not None and got != outputs:
                raise InputError(
                    f"Target layer '{target_layer.name}' has {got} channel(s) but {predictor.source} "
                    f"predicts {outputs}."
                )
            target = layer_array(target_layer)
        image = predictor.check_image(data, name, target, target_name)  # 2D/3D, channels, target: before any write
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", layer.name).strip(".") or "image"
        return PendingJob(predictor, data, image, name, stem, target, target_name, layer)

    @staticmethod
    def _create_job(pending: PendingJob):
        """The NaN/inf scan of the image (off the GUI thread for lazy layers), then the experiment folder and the
        job. A refused image leaves nothing behind: the folders made for it go again."""
        from ..engine.data.sources import check_finite

        check_finite(pending.image, pending.name)  # before any folder is created
        from ..engine.predict.scale import resolve_scale

        predictor = pending.predictor
        layer = pending.layer  # its scale is the outputs' physical scale (OME-Zarr)
        scale = resolve_scale(predictor.config, getattr(layer, "scale", None), getattr(layer, "units", None))
        experiment = predictor.create_experiment()
        try:
            job = predictor.image(
                pending.data,
                pending.name,
                experiment.results,
                pending.stem,
                pending.target,
                pending.target_name,
                finite_checked=True,
                scale=scale,
            )
        except BaseException:
            predictor.discard(experiment)
            raise
        return job, experiment
