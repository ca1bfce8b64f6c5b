"""What a checkpoint is, read without loading its weights: the docks show the fields that apply to it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class CheckpointInfo:
    workflow: type  # the Workflow class it was trained for (its variant too)
    ndim: int
    config: dict[str, Any]  # its run config, as saved

    def config_value(self, path: str):
        """A value of its config by dotted path ('self_supervised.degrade_at_prediction'); None when absent."""
        value: Any = self.config
        for part in path.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        return value


def checkpoint_info(path) -> CheckpointInfo | None:
    """The workflow, dimensions and config of a napari-bioflow checkpoint, read memory-mapped (the weights stay on
    disk); None when it cannot be read (prediction then says why, in full)."""
    try:
        from ..export.package import is_package
        from ..workflows.base import get_workflow

        if is_package(path):  # a BioImage Model Zoo package: its napari-bioflow section (no weights read)
            cfg = _package_config(path)
            if cfg is None:  # another tool's package: prediction says what it can do
                return None
        else:
            import torch

            cfg = torch.load(Path(path), map_location="cpu", mmap=True, weights_only=False)["config"]
        return CheckpointInfo(type(get_workflow(cfg)), int(cfg.get("ndim", 2)), cfg)
    except Exception:
        return None


def _package_config(path) -> dict | None:
    """The run config of a package napari-bioflow exported (from the checkpoint JSON it carries), else None."""
    import json

    from ..export.package import Package

    package = Package(path)
    section = package.bioflow()
    return json.loads(package.read(section["checkpoint"]))["config"] if section is not None else None


def checkpoint_ndim(path) -> int | None:
    """The number of spatial axes the model at `path` predicts: a napari-bioflow checkpoint or package (its
    config), or another tool's package (its input's space axes); None when it cannot be read (prediction then
    says why)."""
    info = checkpoint_info(path)
    if info is not None:
        return info.ndim
    try:
        from ..export.package import Package, is_package

        if not is_package(path):
            return None
        axes = (Package(path).rdf.get("inputs") or [{}])[0].get("axes") or []
        spatial = [a for a in axes if isinstance(a, dict) and a.get("type") == "space"]
        return len(spatial) if len(spatial) in (2, 3) else None
    except Exception:  # noqa: BLE001  (unreadable: said by the prediction)
        return None
