"""A BioImage Model Zoo package (a local .zip or folder; nothing is downloaded) opened as a checkpoint.

A package napari-bioflow exported carries the checkpoint's config, normalization and workflow state
(bioflow_checkpoint.json) beside its PyTorch weights: it becomes the same checkpoint dict read_checkpoint returns,
so prediction, batch, the docks and `model.start_from` use it as they use a .pth file. Other packages whose weights
are TorchScript or ONNX are opened for prediction only (engine/export/foreign.py)."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

from ..errors import InputError

RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")


def is_package(path) -> bool:
    """Whether `path` looks like a BioImage Model Zoo package: a .zip or a folder holding rdf.yaml/bioimageio.yaml."""
    path = Path(path)
    if path.is_dir():
        return any((path / n).is_file() for n in RDF_NAMES) or any(path.glob("*.bioimageio.yaml"))
    return path.suffix.lower() == ".zip"


def foreign_package(path) -> bool:
    """Whether `path` is a BioImage Model Zoo package napari-bioflow did not export (InputError when it is a package
    that cannot be read)."""
    return is_package(path) and Package(path).bioflow() is None


class Package:
    """The files of a package, read from its zip or folder."""

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.exists():
            raise InputError(f"Model package {self.path} does not exist.")
        self.zip = None
        if self.path.is_file():
            try:
                self.zip = zipfile.ZipFile(self.path)
            except (zipfile.BadZipFile, OSError) as e:
                raise InputError(f"Model package {self.path} is not a readable zip file ({e}).") from None
        names = self.names()
        rdf = next((n for n in RDF_NAMES if n in names), None) or next(
            (n for n in names if n.endswith(".bioimageio.yaml") and "/" not in n), None
        )
        if rdf is None:
            raise InputError(f"{self.path} is not a BioImage Model Zoo package: it holds no rdf.yaml.")
        import yaml

        try:
            self.rdf = yaml.safe_load(self.read(rdf))
        except yaml.YAMLError as e:
            raise InputError(f"The rdf.yaml of {self.path} cannot be read ({str(e).splitlines()[0]}).") from None
        if not isinstance(self.rdf, dict) or self.rdf.get("type") != "model":
            raise InputError(f"{self.path} is a BioImage Model Zoo package, but not of a model.")

    def names(self) -> list[str]:
        if self.zip is not None:
            return self.zip.namelist()
        return [str(p.relative_to(self.path)) for p in self.path.rglob("*") if p.is_file()]

    def read(self, name: str) -> bytes:
        name = str(name)
        if "://" in name:
            raise InputError(f"Model package {self.path} refers to {name} online; only local files are read.")
        try:
            if self.zip is not None:
                return self.zip.read(name)
            return (self.path / name).read_bytes()
        except (KeyError, OSError):
            raise InputError(f"Model package {self.path} lacks its file {name}.") from None

    def weights(self) -> dict:
        return self.rdf.get("weights") or {}

    def bioflow(self) -> dict | None:
        """Its napari-bioflow section (config.napari_bioflow), or None for packages of other tools."""
        section = (self.rdf.get("config") or {}).get("napari_bioflow")
        return section if isinstance(section, dict) and section.get("checkpoint") else None


def read_package_checkpoint(path) -> dict:
    """The checkpoint dict (as read_checkpoint gives it) of a package napari-bioflow exported; InputError for other
    packages (naming what they can be used for)."""
    import torch

    from ..train.checkpoint import FORMAT

    package = Package(path)
    section = package.bioflow()
    if section is None:
        usable = [f for f in ("torchscript", "onnx") if f in package.weights()]
        raise InputError(
            f"Model package {package.path} was not exported by napari-bioflow, so it cannot be trained further "
            + (
                f"(its {' and '.join(usable)} weights can predict)."
                if usable
                else "nor run (no TorchScript or ONNX weights)."
            )
        )
    try:
        state = json.loads(package.read(section["checkpoint"]))
    except json.JSONDecodeError:
        raise InputError(f"The napari-bioflow checkpoint inside {package.path} is damaged.") from None
    entry = package.weights().get("pytorch_state_dict")
    if not entry:
        raise InputError(
            f"Model package {package.path} holds no PyTorch state dict weights, which napari-bioflow needs."
        )
    try:
        weights = torch.load(io.BytesIO(package.read(entry["source"])), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise InputError(
            f"The weights of model package {package.path} cannot be read ({str(e).splitlines()[0]})."
        ) from None
    state_dict = {k.removeprefix("net."): v for k, v in weights.items()}
    return {
        **{k: v for k, v in state.items() if k != "format"},
        "format": FORMAT,
        "state_dict": state_dict,
        "package": str(package.path),
    }
