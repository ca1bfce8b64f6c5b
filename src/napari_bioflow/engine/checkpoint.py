"""Checkpoints: weights plus everything needed to predict again (config, normalization, class names)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from .errors import InputError

FORMAT = "napari-bioflow/1"


def save_checkpoint(path: Path, payload: dict[str, Any]) -> Path:
    """Write atomically: a crash or a cancel mid-write never leaves a broken best checkpoint."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    torch.save({"format": FORMAT, **payload}, tmp)
    os.replace(tmp, path)
    return path


def read_checkpoint(path: Path) -> dict[str, Any]:
    import torch

    path = Path(path)
    if not path.is_file():
        raise InputError(f"Checkpoint {path} does not exist.")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise InputError(f"Checkpoint {path} cannot be read: {str(e).splitlines()[0] if str(e) else type(e).__name__}.") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise InputError(f"{path} is not a napari-bioflow checkpoint.")
    return ckpt


def read_weights(path: Path) -> tuple[dict, str]:
    """(state dict, model name) of a napari-bioflow checkpoint, or of a plain weights file (a torch state dict,
    e.g. timm's, possibly under 'state_dict' or 'model'; or .safetensors) for model.start_from. No download."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise InputError(f"Checkpoint {path} does not exist.")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file

            return load_file(str(path)), "unknown (safetensors weights)"
        except Exception as e:
            raise InputError(f"Weights file {path} cannot be read: {str(e).splitlines()[0] if str(e) else type(e).__name__}.") from None
    try:
        data = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise InputError(f"Checkpoint {path} cannot be read: {str(e).splitlines()[0] if str(e) else type(e).__name__}.") from None
    if isinstance(data, dict) and data.get("format") == FORMAT:
        return data["state_dict"], (data.get("model") or {}).get("name", "unknown")
    for key in ("state_dict", "model"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
    if isinstance(data, dict) and data and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in data.items()):
        return data, "unknown (plain weights file)"
    raise InputError(f"{path} is neither a napari-bioflow checkpoint nor a file of model weights (a state dict).")


@dataclass
class LoadedModel:
    """A trained model ready to predict, with the config, normalization and class names it was trained with."""
    model: Any
    config: Any  # RunConfig
    normalizer: Any  # Normalizer
    path: Optional[Path] = None
    epoch: int = 0
    workflow: Any = None  # the Workflow with its fitted state; built from the config when not given

    def __post_init__(self):
        if self.workflow is None:
            from .workflows import get_workflow

            self.workflow = get_workflow(self.config.workflow)


def load_model(path: Path, device: str = "cpu", expect_workflow: Optional[str] = None,
               expect_channels: Optional[int] = None) -> LoadedModel:
    from pydantic import ValidationError

    from ..config import RunConfig
    from .models import create_model
    from .normalize import Normalizer
    from .workflows import list_workflows

    ckpt = read_checkpoint(path)
    workflow = str(ckpt.get("config", {}).get("workflow", ""))
    if workflow not in list_workflows():
        raise InputError(f"Checkpoint {path} was trained for {workflow.replace('_', ' ') or 'an unknown workflow'}, "
                         f"which this version of napari-bioflow does not have ({', '.join(list_workflows())}).")
    try:
        cfg = RunConfig.model_validate(ckpt["config"])
    except ValidationError as e:
        raise InputError(f"Checkpoint {path} holds an invalid config: {e.errors()[0]['msg']}.") from None
    if expect_workflow and cfg.workflow != expect_workflow:
        raise InputError(f"Checkpoint {path} was trained for {cfg.workflow.replace('_', ' ')}, not {expect_workflow.replace('_', ' ')}.")
    if expect_channels is not None and cfg.data.in_channels != expect_channels:
        raise InputError(f"Checkpoint {path} expects {cfg.data.in_channels} input channel(s), but the image has {expect_channels}.")
    m = ckpt["model"]
    model = create_model(m["name"], ndim=cfg.ndim, in_channels=cfg.data.in_channels, out_channels=m["out_channels"], **m["options"])
    model.load_state_dict(ckpt["state_dict"])
    model.to(device).eval()
    loaded = LoadedModel(model, cfg, Normalizer.from_dict(ckpt["normalization"]), Path(path), ckpt.get("epoch", 0))
    loaded.workflow.load_state(ckpt.get("workflow_state", {}))
    return loaded
