"""RunConfig: the one typed config of a run, loaded from YAML with --set overrides and saved beside the results."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from .augment import AugmentConfig
from .sections import (
    NAME_RULE,
    ClassificationConfig,
    DataConfig,
    ModelConfig,
    PredictConfig,
    SelfSupervisedConfig,
    TrainConfig,
    _Section,
    run_name_problem,
)


class RunConfig(_Section):
    workflow: str = Field(
        "semantic_segmentation",
        description="The workflow: semantic_segmentation, image_to_image, self_supervised or classification. Classification reads data.train_raw (and val_raw, test_raw) as folders with one sub-folder per class, named after the class.",
    )
    name: str = Field("my_experiment", description=f"Experiment name: the folder under output_dir ({NAME_RULE}).")
    output_dir: Path = Field(Path("bioflow_runs"), description="Where experiment folders are created.")
    ndim: Literal[2, 3] = Field(2, description="2 for Y,X images, 3 for Z,Y,X volumes.")
    n_classes: int = Field(
        2,
        ge=2,
        description="Number of classes including background (2 = foreground/background). Classification: set from the class sub-folders of data.train_raw.",
    )
    class_names: list[str] = Field(
        default_factory=list,
        description="Optional class names, in label order. Classification: the class sub-folder names (sorted), or this order when given.",
    )
    seed: int = Field(0, description="Random seed (patch sampling, augmentation, initialisation).")
    device: str = Field(
        "auto",
        description="auto uses a CUDA GPU when present; cpu; cuda (the current GPU); cuda:N (GPU number N, from 0: a GPU this machine does not have is refused when the run starts).",
    )
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    predict: PredictConfig = Field(default_factory=PredictConfig)
    self_supervised: SelfSupervisedConfig = Field(default_factory=SelfSupervisedConfig)
    classification: ClassificationConfig = Field(default_factory=ClassificationConfig)

    @model_validator(mode="before")
    @classmethod
    def _workflow_defaults(cls, data):
        """Defaults that depend on the workflow (e.g. the self-supervised pretext, model and patch size the
        reference pages give), filled in by the workflow itself when the config leaves them out."""
        if isinstance(data, dict):
            from ..engine.workflows.base import workflow_class

            try:
                wf = workflow_class(data.get("workflow") or cls.model_fields["workflow"].default)
            except KeyError:
                return data  # an unknown workflow: said after validation
            data = dict(data)
            wf.complete_config(data)
        return data

    @field_validator("device")
    @classmethod
    def _device_form(cls, v):
        from ..engine.train.devices import device_problem

        problem = device_problem(v)
        if problem:
            raise ValueError(problem)
        return v

    @field_validator("name")
    @classmethod
    def _path_safe_name(cls, v):
        problem = run_name_problem(v)
        if problem:
            raise ValueError(problem)
        return v

    @field_validator("class_names")
    @classmethod
    def _unique_names(cls, v):
        if len(set(v)) != len(v):
            raise ValueError("class names must be unique")
        return v

    @model_validator(mode="after")
    def _consistent(self):
        if len(self.data.patch_size) != self.ndim:
            raise ValueError(
                f"data.patch_size {self.data.patch_size} has {len(self.data.patch_size)} axes but ndim is {self.ndim}"
            )
        if any(p < 1 for p in self.data.patch_size):
            raise ValueError(f"data.patch_size {self.data.patch_size} must be positive")
        if self.predict.tile_size is not None and len(self.predict.tile_size) != self.ndim:
            raise ValueError(
                f"predict.tile_size {self.predict.tile_size} has {len(self.predict.tile_size)} axes but ndim is {self.ndim}"
            )
        if self.predict.pixel_size is not None and (
            len(self.predict.pixel_size) != self.ndim or any(v <= 0 for v in self.predict.pixel_size)
        ):
            raise ValueError(
                f"predict.pixel_size {self.predict.pixel_size} must hold {self.ndim} positive sizes ((Z,)Y,X)"
            )
        if self.augment.problem(self.ndim):
            raise ValueError(self.augment.problem(self.ndim))
        if self.data.axes and (problem := _axes_problem(self.data.axes, self.data.in_channels, self.ndim)):
            raise ValueError(problem)
        from ..engine.workflows import get_workflow

        try:
            workflow = get_workflow(self)  # the registered workflows (and self-supervised pretexts)
        except KeyError as e:
            raise ValueError(str(e.args[0])) from None
        workflow.check_config(self)
        if self.class_names and len(self.class_names) != self.n_classes:
            raise ValueError(f"{len(self.class_names)} class names given for {self.n_classes} classes")
        return self

    # --- names and YAML --------------------------------------------------------------------------
    def class_label(self, i: int) -> str:
        return self.class_names[i] if self.class_names else ("background" if i == 0 else f"class_{i}")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def save(self, path: Path) -> Path:
        """Write atomically; a full disk is one sentence naming the folder (engine/storage.py)."""
        import os

        from ..engine.storage import discard, writing

        path = Path(path)
        tmp = path.with_name(path.name + ".part")
        with writing(path.parent, path.name):
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                tmp.write_text(self.to_yaml())
                os.replace(tmp, path)
            except BaseException:
                discard(tmp)
                raise
        return path

    @classmethod
    def load(cls, path: Path, overrides: list[str] | None = None) -> RunConfig:
        from ..engine.errors import InputError

        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except OSError as e:
            raise InputError(f"Config file {path} cannot be read: {e.strerror or e}.") from None
        except yaml.YAMLError as e:
            raise InputError(f"Config file {path} is not valid YAML: {str(e).splitlines()[0]}.") from None
        if not isinstance(data, dict):
            raise InputError(f"Config file {path} must hold a mapping of fields, not {type(data).__name__}.")
        return cls.from_dict(data, overrides, source=str(path))

    @classmethod
    def from_dict(cls, data: dict, overrides: list[str] | None = None, source: str = "config") -> RunConfig:
        from ..engine.errors import InputError

        data = dict(data)
        for item in overrides or []:
            apply_override(data, item)
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(str(p) for p in err["loc"]) or "config"
            msg = err["msg"].removeprefix("Value error, ")
            given = [o for o in overrides or [] if o.split("=", 1)[0].strip() == where]  # the last one won
            origin = f" (from --set {given[-1]})" if given else ""
            raise InputError(f"{source}: field '{where}'{origin}: {msg}.") from None


def _axes_problem(axes: str, in_channels: int, ndim: int) -> str | None:
    from ..engine.data.axes import axes_problem

    return axes_problem(axes, in_channels, ndim)


def apply_override(data: dict, item: str) -> None:
    """Apply one `section.field=value` override (value parsed as YAML) to a nested dict in place."""
    from ..engine.errors import InputError

    if "=" not in item:
        raise InputError(f"Override '{item}' must look like section.field=value.")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise InputError(f"Override '{item}': '{p}' is not a section.")
    try:
        node[parts[-1]] = yaml.safe_load(raw)
    except yaml.YAMLError:
        raise InputError(f"Override '{item}': the value is not valid YAML.") from None
