"""Checkpoints: weights plus everything needed to predict again (config, normalization, class names)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError

FORMAT = "napari-bioflow/1"
CHECKSUM = "weights_sha256"  # one SHA-256 per tensor of the state dict, in its order (absent in older checkpoints)


def weights_digests(state_dict: dict) -> list[str]:
    """SHA-256 of each tensor's bytes, in state-dict order. Cheap enough to check on every save and load: ~0.6 GB/s
    on a loaded 2-core CPU, ~15-20 ms for the default 2D U-Net's 7.4 MB of weights (a save takes ~80 ms)."""
    import hashlib

    import torch

    out = []
    for value in state_dict.values():
        if isinstance(value, torch.Tensor):
            data = value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
            out.append(hashlib.sha256(memoryview(data)).hexdigest())
        else:
            out.append(hashlib.sha256(repr(value).encode()).hexdigest())
    return out


def _tensor_bytes(value) -> int:
    import torch

    if isinstance(value, torch.Tensor):
        return value.nbytes
    if isinstance(value, dict):
        return sum(_tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(v) for v in value)
    return 0


def save_checkpoint(path: Path, payload: dict[str, Any]) -> Path:
    """Write atomically: a crash, a cancel or a full disk mid-write never leaves a broken best checkpoint nor a
    `.part` file. The weights' checksums go with them (verified by read_checkpoint)."""
    import torch

    from ..storage import check_free, discard, writing

    path = Path(path)
    what = f"checkpoint {path.name}"
    with writing(path.parent, what):
        path.parent.mkdir(parents=True, exist_ok=True)
        check_free(path.parent, _tensor_bytes(payload), what)  # the tensors are most of the file
        data = {"format": FORMAT, **payload}
        if isinstance(payload.get("state_dict"), dict):
            data[CHECKSUM] = weights_digests(payload["state_dict"])
        tmp = path.with_name(path.name + ".part")
        try:
            with open(tmp, "wb") as f:  # a file object: torch.save then keeps the OSError (ENOSPC) as the cause
                torch.save(data, f)
            os.replace(tmp, path)
        except BaseException:
            discard(tmp)
            raise
    return path


def verify_weights(path: Path, ckpt: dict) -> None:
    """Raise InputError when the weights differ from the checksums stored with them (a checkpoint saved by an
    earlier version has none: nothing to check)."""
    stored = ckpt.get(CHECKSUM)
    weights = ckpt.get("state_dict")
    if stored is None or not isinstance(weights, dict):
        return
    found = weights_digests(weights)
    if found == list(stored):
        return
    names = list(weights)
    bad = next((names[i] for i, (a, b) in enumerate(zip(found, stored)) if a != b), None)
    which = f"tensor '{bad}' differs" if bad else f"{len(found)} tensors where {len(stored)} were saved"
    raise InputError(
        f"Checkpoint {path} is damaged: its weights do not match the checksum stored when it was saved "
        f"({which}); use an intact copy or train again."
    )


def read_checkpoint(path: Path) -> dict[str, Any]:
    import torch

    from ..export.package import is_package, read_package_checkpoint

    path = Path(path)
    if is_package(path):  # a BioImage Model Zoo package napari-bioflow exported
        return read_package_checkpoint(path)
    if not path.is_file():
        raise InputError(f"Checkpoint {path} does not exist.")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise InputError(
            f"Checkpoint {path} cannot be read: {str(e).splitlines()[0] if str(e) else type(e).__name__}."
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise InputError(f"{path} is not a napari-bioflow checkpoint.")
    verify_weights(path, ckpt)
    return ckpt


def read_weights(path: Path) -> tuple[dict, str]:
    """(state dict, model name) of a napari-bioflow checkpoint, or of a plain weights file (a torch state dict,
    e.g. timm's, possibly under 'state_dict' or 'model'; or .safetensors) for model.start_from. No download."""
    import torch

    from ..export.package import is_package, read_package_checkpoint

    path = Path(path)
    if is_package(path):  # a BioImage Model Zoo package napari-bioflow exported
        data = read_package_checkpoint(path)
        return data["state_dict"], data["model"]["name"]
    if not path.is_file():
        raise InputError(f"Checkpoint {path} does not exist.")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file

            return load_file(str(path)), "unknown (safetensors weights)"
        except Exception as e:
            raise InputError(
                f"Weights file {path} cannot be read: {str(e).splitlines()[0] if str(e) else type(e).__name__}."
            ) from None
    try:
        data = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise InputError(
            f"Checkpoint {path} cannot be read: {str(e).splitlines()[0] if str(e) else type(e).__name__}."
        ) from None
    if isinstance(data, dict) and data.get("format") == FORMAT:
        verify_weights(path, data)
        return data["state_dict"], (data.get("model") or {}).get("name", "unknown")
    for key in ("state_dict", "model"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
    if (
        isinstance(data, dict)
        and data
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in data.items())
    ):
        return data, "unknown (plain weights file)"
    raise InputError(f"{path} is neither a napari-bioflow checkpoint nor a file of model weights (a state dict).")


@dataclass
class LoadedModel:
    """A trained model ready to predict, with the config, normalization and class names it was trained with."""

    model: Any
    config: Any  # RunConfig
    normalizer: Any  # Normalizer
    path: Path | None = None
    epoch: int = 0
    workflow: Any = None  # the Workflow with its fitted state; built from the config when not given

    def __post_init__(self):
        if self.workflow is None:
            from ..workflows import get_workflow

            self.workflow = get_workflow(self.config)


def load_model(
    path: Path, device: str = "cpu", expect_workflow: str | None = None, expect_channels: int | None = None
) -> LoadedModel:
    from pydantic import ValidationError

    from ...config import RunConfig
    from ..data.normalize import Normalizer
    from ..export.package import foreign_package
    from ..models import create_model
    from ..workflows import list_workflows

    if foreign_package(path):  # a BioImage Model Zoo package of another tool: prediction only
        from ..export.foreign import load_package_model

        return load_package_model(path, device, expect_workflow, expect_channels)
    ckpt = read_checkpoint(path)
    workflow = str(ckpt.get("config", {}).get("workflow", ""))
    if workflow not in list_workflows():
        raise InputError(
            f"Checkpoint {path} was trained for {workflow.replace('_', ' ') or 'an unknown workflow'}, "
            f"which this version of napari-bioflow does not have ({', '.join(list_workflows())})."
        )
    try:
        cfg = RunConfig.model_validate(ckpt["config"])
    except ValidationError as e:
        raise InputError(f"Checkpoint {path} holds an invalid config: {e.errors()[0]['msg']}.") from None
    if expect_workflow and cfg.workflow != expect_workflow:
        raise InputError(
            f"Checkpoint {path} was trained for {cfg.workflow.replace('_', ' ')}, not {expect_workflow.replace('_', ' ')}."
        )
    if expect_channels is not None and cfg.data.in_channels != expect_channels:
        raise InputError(
            f"Checkpoint {path} expects {cfg.data.in_channels} input channel(s), but the image has {expect_channels}."
        )
    m = ckpt["model"]
    model = create_model(
        m["name"], ndim=cfg.ndim, in_channels=cfg.data.in_channels, out_channels=m["out_channels"], **m["options"]
    )
    model.load_state_dict(ckpt["state_dict"])
    model.to(device).eval()
    loaded = LoadedModel(model, cfg, Normalizer.from_dict(ckpt["normalization"]), Path(path), ckpt.get("epoch", 0))
    loaded.workflow.load_state(ckpt.get("workflow_state", {}))
    return loaded
