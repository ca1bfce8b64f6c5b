"""Export a napari-bioflow checkpoint as a BioImage Model Zoo package (a zip), tested before it is written.

The package predicts as the plugin does: the checkpoint's normalization is the input's preprocessing, the
workflow's activation (softmax) is part of the network, an image output is mapped back to the target's intensities
by its postprocessing, and the tile sizes and halo come from the model's size divisor and the prediction overlap.
bioimageio.core's model test (network checks off) runs on the written zip; a package that fails it is removed."""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from .weights import FORMATS, convert

PACKAGE_FORMAT = "napari-bioflow-bmz/1"
CHECKPOINT_FILE = "bioflow_checkpoint.json"  # everything but the weights: what import rebuilds the model from


@dataclass
class ExportResult:
    path: Path
    converted: list[str]
    failed: dict[str, str] = field(default_factory=dict)  # format -> why it is not in the package
    test: str = ""  # bioimageio.core's test result, one line per weight format
    notes: list[str] = field(default_factory=list)

    def sentence(self) -> str:
        parts = [f"Exported {self.path} with weights {', '.join(self.converted)}; bioimageio.core test passed."]
        parts += [f"{fmt} not included: {why}." for fmt, why in self.failed.items()]
        return " ".join(parts)


def _activation(workflow) -> str:
    """'softmax' or 'none': what the workflow applies to the network's output, found by trying it (no names)."""
    import torch

    from ..workflows.base import Workflow

    if type(workflow).prediction_forward is not Workflow.prediction_forward:
        raise InputError(
            f"A {workflow.full_title()} checkpoint predicts by more than its network's output (its own prediction "
            "forward), which a BioImage Model Zoo package cannot describe; it is not exported."
        )
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    y = workflow.activation(x)
    if torch.allclose(y, x):
        return "none"
    if torch.allclose(y, x.softmax(1), atol=1e-6):
        return "softmax"
    raise InputError(f"The {workflow.full_title()} workflow's output activation has no BioImage Model Zoo equivalent.")


def _divisors(model, ndim: int) -> tuple[int, ...]:
    divisors = getattr(model, "divisors", None)
    if divisors is not None and len(divisors) == ndim:
        return tuple(int(d) for d in divisors)
    return (int(model.size_divisor),) * ndim


def _runs(net, shape) -> bool:
    import torch

    try:
        with torch.no_grad():
            net(torch.zeros(shape))
        return True
    except Exception:  # noqa: BLE001  (too small for this network)
        return False


def layout_of(loaded, net, activation: str):
    """The package's Layout (tensor axes, sizes, halo, pre- and postprocessing) of a loaded checkpoint."""
    from .describe import Layout, identifier

    cfg, wf, model = loaded.config, loaded.workflow, loaded.model
    ndim, norm = cfg.ndim, loaded.normalizer
    divisors = _divisors(model, ndim)
    tile = list(cfg.predict.tile_size or cfg.data.patch_size)
    out_channels = wf.prediction_channels(cfg)
    if activation == "softmax":
        names = [identifier(cfg.class_label(i), "class") for i in range(out_channels)]
        if len(set(names)) < len(names):
            names = [f"class{i}" for i in range(out_channels)]
        output_id = "probabilities"
    else:
        names, output_id = [f"c{i}" for i in range(out_channels)], "image"
    out_offset = out_scale = None
    if wf.target_is_image:  # an image output: mapped back to intensities as the plugin writes it
        state = wf.state.get("target_normalization") or wf.state.get("normalization")
        if state and state.get("mode") != "none":
            out_offset, out_scale = list(state["offset"]), list(state["scale"])
    if not wf.dense:
        halo = (0,) * ndim
        fixed, minimum = tuple(int(p) for p in cfg.data.patch_size), tuple(int(p) for p in cfg.data.patch_size)
    else:
        halo = tuple(int(math.ceil(cfg.predict.overlap * t / 2)) for t in tile)
        fixed = None
        minimum = [d * math.ceil((2 * h + 1) / d) for d, h in zip(divisors, halo)]
        # the smallest input the network takes (e.g. a ViT's token grid): grow until it runs, up to the patch
        while not _runs(net, (1, cfg.data.in_channels, *minimum)) and any(
            m < max(t, d) for m, t, d in zip(minimum, tile, divisors)
        ):
            minimum = [min(max(t, d), m * 2) for m, t, d in zip(minimum, tile, divisors)]
        minimum = tuple(minimum)
    return Layout(
        ndim=ndim,
        in_channels=cfg.data.in_channels,
        out_channels=out_channels,
        dense=wf.dense,
        divisors=divisors,
        minimum=minimum,
        halo=halo,
        fixed=fixed,
        offset=list(norm.offset),
        scale=list(norm.scale),
        normalized=norm.mode != "none",
        output_id=output_id,
        output_names=names,
        out_offset=out_offset,
        out_scale=out_scale,
    )


def _check_request(output: Path, name: str | None, authors, licence: str, formats) -> None:
    output = Path(output)
    if output.suffix.lower() != ".zip":
        raise InputError(f"The package {output} must be a .zip file.")
    if output.exists():
        raise InputError(f"{output} exists already; an export never overwrites a file.")
    if not [a for a in authors if str(a).strip()]:
        raise InputError("A BioImage Model Zoo package needs at least one author.")
    if not str(licence).strip():
        raise InputError("A BioImage Model Zoo package needs a licence (an SPDX id such as CC-BY-4.0).")
    from .describe import name_problem

    problem = name and name_problem(name)
    if problem:
        raise InputError(f"The package cannot be written: {problem}.")
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise InputError(f"Weight formats must be among {', '.join(FORMATS)}, not {', '.join(unknown) or 'none'}.")
    from bioimageio.spec.model.v0_5 import LicenseId

    try:
        LicenseId(licence)
    except Exception:  # noqa: BLE001
        raise InputError(
            f"Licence {licence!r} is not an SPDX licence id (e.g. CC-BY-4.0, MIT, BSD-3-Clause)."
        ) from None


def export_model(
    checkpoint: Path,
    output: Path,
    *,
    name: str | None = None,
    authors=(),
    licence: str = "CC-BY-4.0",
    cite=(),
    description: str | None = None,
    input_image: Path | None = None,
    formats=FORMATS,
) -> ExportResult:
    """Write checkpoint `checkpoint` as the BioImage Model Zoo package `output` (a new .zip) after bioimageio.core's
    test passed on it. InputError (one sentence) for what cannot be exported."""
    from ..train.checkpoint import load_model, read_checkpoint
    from .architecture import wrap
    from .compat import patch
    from .content import documentation, environment_file, run_folder, test_tensors, write_cover
    from .describe import model_descr, parse_cite

    patch()
    output, checkpoint = Path(output), Path(checkpoint)
    formats = list(dict.fromkeys(formats))
    _check_request(output, name, authors, licence, formats)
    try:
        cites = [parse_cite(c) and c for c in cite]
    except ValueError as e:
        raise InputError(f"The {e}.") from None
    ckpt = read_checkpoint(checkpoint)
    loaded = load_model(checkpoint, "cpu")
    cfg, wf = loaded.config, loaded.workflow
    activation = _activation(wf)
    net = wrap(loaded.model, activation)
    layout = layout_of(loaded, net, activation)
    x, sample_raw = test_tensors(loaded, layout, input_image)
    import torch

    with torch.no_grad():
        raw_out = net(torch.from_numpy(x)).numpy()
    y = raw_out
    if layout.out_scale is not None:
        shape = (1, -1) + (1,) * (raw_out.ndim - 2)
        y = raw_out * np.asarray(layout.out_scale, np.float32).reshape(shape) + np.asarray(
            layout.out_offset, np.float32
        ).reshape(shape)
    other = None
    if layout.dense:
        smaller = [s - d for s, d in zip(x.shape[2:], layout.divisors)]
        if all(s >= m for s, m in zip(smaller, layout.minimum)):
            other = np.ascontiguousarray(x[(slice(None), slice(None), *(slice(0, s) for s in smaller))])
    title = name or re.sub(r"[^A-Za-z0-9_+\- ()]", " ", f"napari-bioflow {wf.title} {cfg.model.name} {cfg.ndim}D")
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bioflow-bmz-") as tmp:
        folder = Path(tmp)
        converted = convert(net, x, folder, formats, other, dynamic_spatial=layout.dense)
        if not converted.files:
            raise InputError(
                f"No weight format of {checkpoint} converted ({'; '.join(converted.failed.values())}); "
                "nothing was exported."
            )
        np.save(folder / "test_input.npy", sample_raw)
        np.save(folder / "test_output.npy", y.astype(np.float32))
        cover = write_cover(folder / "cover.png", sample_raw, y, layout)
        run = run_folder(checkpoint, cfg)
        state = {
            k: v
            for k, v in ckpt.items()
            if k
            in (
                "workflow",
                "config",
                "model",
                "normalization",
                "workflow_state",
                "class_names",
                "epoch",
                "best_epoch",
                "best_val_loss",
            )
        }
        (folder / CHECKPOINT_FILE).write_text(json.dumps({"format": PACKAGE_FORMAT, **state}, indent=1))
        cfg.save(folder / "training_config.yaml")
        attachments = [folder / CHECKPOINT_FILE, folder / "training_config.yaml"]
        doc, logs = documentation(folder, title, loaded, ckpt, layout, converted, run)
        attachments += logs
        descr = model_descr(
            name=title,
            description=description
            or f"{wf.full_title().capitalize()} with a {cfg.model.name} trained in napari-bioflow",
            layout=layout,
            files=converted.files,
            opset=converted.opset,
            arch_kwargs={
                "model_name": ckpt["model"]["name"],
                "ndim": cfg.ndim,
                "in_channels": cfg.data.in_channels,
                "out_channels": ckpt["model"]["out_channels"],
                "options": ckpt["model"]["options"],
                "activation": activation,
            },
            tests=(folder / "test_input.npy", folder / "test_output.npy"),
            sample=None,
            cover=cover,
            documentation=doc,
            attachments=attachments,
            environment=environment_file(folder),
            authors=[str(a).strip() for a in authors if str(a).strip()],
            licence=licence,
            cite=cites,
            tags=["napari-bioflow", wf.name.replace("_", "-"), cfg.model.name, f"{cfg.ndim}d"],
            config={"napari_bioflow": {"format": PACKAGE_FORMAT, "checkpoint": CHECKPOINT_FILE}},
        )
        part = output.with_name(output.name + ".part")
        try:
            text = save_and_test(descr, part)
            os.replace(part, output)
        finally:
            part.unlink(missing_ok=True)
    return ExportResult(output, list(converted.files), converted.failed, text)


def save_and_test(descr, path: Path) -> str:
    """Write the package zip at `path` and run bioimageio.core's model test on that zip (no network); InputError
    naming the first failed check when it does not pass (the zip is removed)."""
    from bioimageio.core import test_model
    from bioimageio.spec import ValidationContext, save_bioimageio_package

    with ValidationContext(perform_io_checks=False):
        save_bioimageio_package(descr, output_path=path)
        summary = test_model(path, devices=["cpu"])
    text = test_text(summary)
    if summary.status != "passed":
        path.unlink(missing_ok=True)
        raise InputError(
            f"The package failed its own bioimageio.core test ({first_failure(summary)}); it was not written."
        )
    return text


def test_text(summary) -> str:
    lines = []
    for d in summary.details:
        if d.name.startswith("Reproduce test outputs"):
            lines.append(f"{d.name}: {d.status}")
    return "; ".join(lines) or summary.status


def first_failure(summary) -> str:
    for d in summary.details:
        if d.status == "failed":
            err = next((e.msg for e in d.errors), "")
            return f"{d.name}: {err}".strip().rstrip(":")[:400]
    return summary.status
