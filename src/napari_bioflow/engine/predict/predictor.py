"""One predictor for every entry point: `napari-bioflow predict`, the Predict dock, `napari-bioflow batch` and the
Batch dock (here and on dask workers) open a checkpoint through it.

A `Predictor` holds a checkpoint's model on a device and the run config it predicts with: the checkpoint's own config
with this run's prediction settings. Only prediction settings may differ from the checkpoint's (the `predict`
section, the workflow's own prediction options such as crappify's `self_supervised.degrade_at_prediction`, and the
run's name, output folder, device and test folders); the result is validated as any config is, so the capability
rules (no TTA for a masked autoencoder, label filters for 3D segmentation only) hold whatever the front end.
It then checks inputs before anything is written, creates the experiment, and predicts images into the workflow's
typed outputs (dense: ImagePrediction; one class per image: classification_results).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ..errors import InputError

RUN_FIELDS = ("name", "output_dir", "device")  # what a prediction may set beside its predict section
DATA_FIELDS = ("test_raw", "test_label")


def _allowed(workflow, path: str) -> bool:
    section, _, field = path.partition(".")
    return (
        section == "predict"
        or path in RUN_FIELDS
        or (section == "data" and field in DATA_FIELDS)
        or path in workflow.predict_section_options
    )


def prediction_config(
    loaded, settings: dict | None = None, overrides: Sequence[str] = (), source: str = "prediction settings"
):
    """The checkpoint's config with this run's prediction `settings` (nested, as a config: fields that are not
    prediction settings are ignored, so a full run config can be given) and `overrides` ('section.field=value',
    refused unless they are prediction settings). Validated: a setting the workflow cannot honour is refused."""
    from ...config import RunConfig

    workflow = loaded.workflow
    base = loaded.config.model_dump(mode="json")
    base["data"]["test_raw"] = base["data"]["test_label"] = None  # the training run's test images are not these
    if loaded.path is not None:
        base["predict"]["checkpoint"] = str(loaded.path)
    for key, value in (settings or {}).items():
        if isinstance(value, dict):
            for field, v in value.items():
                if _allowed(workflow, f"{key}.{field}"):
                    base[key][field] = v
        elif _allowed(workflow, key):
            base[key] = value
    for item in overrides:
        path = item.split("=", 1)[0].strip()
        if not _allowed(workflow, path) and path != "data.axes":  # the files' layout may differ from training's
            raise InputError(
                f"Only prediction settings (predict.FIELD, {', '.join(RUN_FIELDS)}, data.test_raw, "
                f"data.test_label, data.axes{''.join(', ' + p for p in workflow.predict_section_options)}) can be "
                f"set for a prediction, not {path} ({source})."
            )
    return RunConfig.from_dict(base, list(overrides), source=source)


class Predictor:
    """A checkpoint opened for prediction (see the module's description)."""

    def __init__(
        self,
        checkpoint,
        device: str = "auto",
        settings: dict | None = None,
        overrides: Sequence[str] = (),
        source: str = "prediction settings",
        loaded=None,
        expect_workflow: str | None = None,
    ):
        from ..train.checkpoint import load_model
        from ..train.trainer import resolve_device

        self.checkpoint = Path(checkpoint)
        if loaded is None:
            loaded = load_model(self.checkpoint, resolve_device(device), expect_workflow=expect_workflow)
        self.loaded, self.workflow = loaded, loaded.workflow
        self.config = prediction_config(loaded, settings, overrides, source)
        self.device = self._device(device)
        loaded.config = self.config  # the model predicts with this run's settings

    @classmethod
    def of(cls, loaded, checkpoint=None) -> Predictor:
        """A predictor over a model already loaded with its run config (a batch worker's, the dock's)."""
        self = cls.__new__(cls)
        self.checkpoint = Path(checkpoint or loaded.path or "")
        self.loaded, self.workflow, self.config = loaded, loaded.workflow, loaded.config
        self.device = self._device(loaded.config.device)
        return self

    def _device(self, requested: str) -> str:
        from ..train.trainer import resolve_device

        try:
            return str(next(self.loaded.model.parameters()).device)
        except (StopIteration, AttributeError):
            return resolve_device(requested)

    @property
    def dense(self) -> bool:
        return self.workflow.dense

    @property
    def source(self) -> str:
        return f"checkpoint {self.checkpoint}"

    # --- checks: everything that can be checked before anything is written ----------------------------------
    def folder_items(
        self, raw_dir: Path, label_dir: Path | None, labels_field: str = "data.test_label", role: str = "test"
    ) -> list[tuple[Path, Any]]:
        """The (image, label file or class index) pairs of a folder. Dense workflows pair images with label files by
        name (a model trained with data.multiple_raw also reads sample sub-folders, each view with its sample's
        target); one-class-per-image workflows read class sub-folders (or a flat folder) and refuse a labels folder."""
        from ..data.pairing import folder_pairs, refuse_labels_for_classifier

        if self.dense:
            from ..data.multi_raw import has_sample_folders, multi_raw_items

            if self.config.data.multiple_raw and has_sample_folders(raw_dir):  # sample sub-folders of raw views
                return multi_raw_items(Path(raw_dir), Path(label_dir) if label_dir else None, role)
            return folder_pairs(Path(raw_dir), Path(label_dir) if label_dir else None, role)
        from .classification_results import class_test_items

        refuse_labels_for_classifier(self.workflow, label_dir, labels_field)
        return class_test_items(Path(raw_dir), self.config.class_names, role)

    def check_files(self, items: list[tuple[Path, Any]]) -> list[str]:
        """Open and check every file as prediction will (2D/3D, channels, NaN/inf, labels): a bad file stops the run
        here. Returns notes for the user (e.g. 0/255 masks)."""
        if not self.dense:
            from ..data.classification_data import open_set

            open_set([p for p, _ in items], self.config, "test", self.source)
            return []
        from .inference import check_inputs

        return check_inputs(self.config, items, self.source)

    def check_image(self, data, name: str, target=None, target_name: str = ""):
        """A layer's (or array's) image as the model takes it (channel last, lazy), with its target checked as the
        prediction will: 2D/3D, channels and the target's shape and values, reading no pixels but the target's."""
        from ..data.sources import lazy_array, to_channels_last

        cfg = self.config
        image = to_channels_last(data, cfg.ndim, cfg.data.in_channels, name, self.source, cfg.data.axes)
        if target is not None:
            self.workflow.check_target(lazy_array(target), target_name, tuple(image.shape[:-1]), self.config, [])
        return image

    # --- the run ---------------------------------------------------------------------------------------------
    def create_experiment(self):
        """The experiment folder of this prediction, with its config saved; nothing is left if saving fails."""
        from ..experiment import folders_to_create, new_experiment

        made = folders_to_create(self.config.output_dir, self.config.name)
        experiment = new_experiment(self.config.output_dir, self.config.name)
        try:
            self.config.save(experiment.config_path)
        except BaseException:
            self.discard(experiment, made)
            raise
        experiment.created = made
        return experiment

    @staticmethod
    def discard(experiment, made: list[Path] | None = None) -> None:
        """Take a refused run's experiment away again: its results, config and the folders made for it."""
        shutil.rmtree(experiment.results, ignore_errors=True)
        experiment.config_path.unlink(missing_ok=True)
        for folder in reversed(made if made is not None else getattr(experiment, "created", [])):
            try:
                folder.rmdir()
            except OSError:
                pass

    def image(
        self,
        image,
        name: str,
        out_dir: Path,
        stem: str,
        target=None,
        target_name: str = "",
        finite_checked: bool = False,
        scale=None,
    ):
        """A dense prediction of one image, set up (tile plan, prediction zarr) and ready to run. `scale`: the input's
        PhysicalScale (engine/predict/scale.py: resolve_scale) for the outputs that carry one."""
        from .inference import ImagePrediction

        return ImagePrediction(
            self.loaded, image, name, out_dir, stem, self.device, target, target_name, finite_checked, scale=scale
        )

    def files(
        self, items: list[tuple[Path, Any]], out_dir: Path, cancel=None, finite_checked: bool = False, report=None
    ) -> Iterator[Any]:
        """Predict checked folder items into `out_dir`: ImageResults (dense, metrics.csv with labels), or the class
        predictions (predictions.csv, metrics and the confusion matrix with classes) as one dict."""
        if self.dense:
            from .inference import predict_files

            yield from predict_files(self.loaded, items, out_dir, self.device, cancel, finite_checked)
            return
        from .classification_results import run_class_prediction

        yield run_class_prediction(self.loaded, items, out_dir, self.device, cancel=cancel, report=report)
