"""A BioImage Model Zoo package of another tool, opened for prediction only: its TorchScript or ONNX weights run
through bioimageio.core's prediction pipeline (the package's own pre- and postprocessing) on each tile napari-bioflow
cuts, and the result is written as an image (one channel per output channel), as an image-to-image model's.

What it cannot honour is refused in one sentence: several inputs or outputs, an output of another size than the
input, a fixed input size, no TorchScript/ONNX weights. Preprocessing that measures the image (percentiles, mean and
standard deviation per sample) is measured on each tile here, not on the whole image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import InputError

WEIGHTS = ("torchscript", "onnx")  # in the order they are preferred
SPATIAL = ("z", "y", "x")


def _axis_kind(axis) -> str:
    kind = str(getattr(axis, "type", ""))
    return kind if kind in ("batch", "channel") else str(axis.id)


class PackageNet(nn.Module):
    """(B, C, (Z,)Y,X) float tensors -> the package's output (B, C_out, (Z,)Y,X), tile by tile through
    bioimageio.core. Tiles are padded (reflect) up to a size the package accepts and cropped back."""

    def __init__(self, descr, weight_format: str, device: str, spatial: tuple[str, ...], sizes: dict):
        super().__init__()
        from bioimageio.core import create_prediction_pipeline

        self.descr, self.spatial, self.sizes = descr, spatial, sizes  # sizes: axis -> (min, step)
        self.input, self.output = descr.inputs[0], descr.outputs[0]
        self.in_axes = [_axis_kind(a) for a in self.input.axes]
        self.out_axes = [_axis_kind(a) for a in self.output.axes]
        self.pipeline = create_prediction_pipeline(
            descr, weight_format=weight_format, devices=["cuda" if str(device).startswith("cuda") else "cpu"]
        )
        self.size_divisor = max(step for _, step in sizes.values())

    def _valid(self, axis: str, n: int) -> int:
        low, step = self.sizes[axis]
        return low if n <= low else low + -(-(n - low) // step) * step

    def _run(self, arr: np.ndarray, batched: bool) -> np.ndarray:
        """(B, C, *spatial) in the package's own axis order, predicted, back as (B, C_out, *spatial)."""
        from bioimageio.core import predict

        names = ["batch", "channel", *self.spatial]
        if not batched:
            arr, names = arr[0], names[1:]
        if "channel" not in self.in_axes:
            arr, names = arr[(slice(None),) * names.index("channel") + (0,)], [n for n in names if n != "channel"]
        arr = np.ascontiguousarray(np.transpose(arr, [names.index(a) for a in self.in_axes]))
        out = predict(model=self.pipeline, inputs={str(self.input.id): arr}).members[self.output.id]
        data, dims = np.asarray(out.data), [str(d) for d in out.dims]
        for axis in ("batch", "channel"):
            if axis not in dims:
                data, dims = data[None], [axis, *dims]
        return np.transpose(data, [dims.index(a) for a in ["batch", "channel", *self.spatial]])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        arr = x.detach().float().cpu().numpy()
        shape = arr.shape[2:]
        pads = [(0, self._valid(a, n) - n) for a, n in zip(self.spatial, shape)]
        if any(p for _, p in pads):
            mode = "reflect" if all(p < n for (_, p), n in zip(pads, shape)) else "edge"
            arr = np.pad(arr, [(0, 0), (0, 0), *pads], mode=mode)
        batched = "batch" in self.in_axes
        outs = [self._run(arr if batched else arr[b : b + 1], batched) for b in range(1 if batched else len(arr))]
        y = np.concatenate(outs) if len(outs) > 1 else outs[0]
        y = y[(slice(None), slice(None), *(slice(0, n) for n in shape))]
        return torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32)).to(x.device)


def _check(descr, path: Path) -> tuple[str, tuple[str, ...], dict, int, int]:
    """(weight format, spatial axes, axis -> (min, step), input channels, output channels) or InputError."""
    from bioimageio.spec.model.v0_5 import ParameterizedSize, SizeReference

    what = f"Model package {path}"
    if len(descr.inputs) != 1 or len(descr.outputs) != 1:
        raise InputError(
            f"{what} has {len(descr.inputs)} inputs and {len(descr.outputs)} outputs; napari-bioflow runs one of each."
        )
    fmt = next((f for f in WEIGHTS if getattr(descr.weights, f, None) is not None), None)
    if fmt is None:
        raise InputError(
            f"{what} holds neither TorchScript nor ONNX weights, which napari-bioflow can run without its code."
        )
    inp, out = descr.inputs[0], descr.outputs[0]
    spatial = tuple(a for a in SPATIAL if any(_axis_kind(ax) == a for ax in inp.axes))
    kinds = [_axis_kind(a) for a in inp.axes]
    if len(spatial) not in (2, 3) or set(kinds) - {"batch", "channel", *spatial}:
        raise InputError(f"{what} takes axes {', '.join(kinds)}; napari-bioflow predicts (channel,) (z,) y, x images.")
    sizes = {}
    for ax in inp.axes:
        k = _axis_kind(ax)
        if k in spatial:
            if not isinstance(ax.size, ParameterizedSize):
                raise InputError(f"{what} takes a fixed {k} size ({ax.size}), which tiling cannot honour.")
            sizes[k] = (int(ax.size.min), int(ax.size.step))
    channels_in = next((len(a.channel_names) for a in inp.axes if _axis_kind(a) == "channel"), 1)
    out_kinds = [_axis_kind(a) for a in out.axes]
    for ax in out.axes:
        k = _axis_kind(ax)
        if k in spatial and not (
            isinstance(ax.size, SizeReference)
            and str(ax.size.axis_id) == k
            and not ax.size.offset
            and float(getattr(ax, "scale", 1.0)) == 1.0
        ):
            raise InputError(
                f"{what} gives an output of another {k} size than its input, which napari-bioflow does not map back."
            )
    if set(out_kinds) - {"batch", "channel", *spatial} or any(a not in out_kinds for a in spatial):
        raise InputError(f"{what} gives axes {', '.join(out_kinds)}, not an image of its input's size.")
    channels_out = next((len(a.channel_names) for a in out.axes if _axis_kind(a) == "channel"), 1)
    return fmt, spatial, sizes, channels_in, channels_out


def load_package_model(path, device: str = "cpu", expect_workflow: str | None = None, expect_channels=None):
    """A LoadedModel for prediction with a package of another tool (see the module's description)."""
    from ...config import RunConfig
    from ..data.normalize import Normalizer
    from ..train.checkpoint import LoadedModel
    from ..workflows.base import get_workflow, workflow_classes
    from .compat import patch

    path = Path(path)
    try:
        patch()
        from bioimageio.spec import ValidationContext, load_model_description
    except ImportError as e:
        raise InputError(f"Running model package {path} needs bioimageio.core (the bmz extra): {e}.") from None
    try:
        with ValidationContext(perform_io_checks=False):
            descr = load_model_description(path, format_version="latest")
    except Exception as e:  # noqa: BLE001  (an invalid description: one sentence)
        raise InputError(f"Model package {path} is not a valid model description ({str(e).splitlines()[0]}).") from None
    fmt, spatial, sizes, c_in, c_out = _check(descr, path)
    image_workflow = next(c for c in workflow_classes() if c.target_is_image and c.needs_target and c.dense)
    ndim = len(spatial)
    patch_size = [max(low, (256 if ndim == 2 else 64) // step * step) for low, step in (sizes[a] for a in spatial)]
    halo = max((int(getattr(a, "halo", 0) or 0) for a in descr.outputs[0].axes), default=0)
    cfg = RunConfig.from_dict(
        {
            "workflow": image_workflow.name,
            "name": "bmz_package",
            "ndim": ndim,
            "device": "cuda" if str(device).startswith("cuda") else "cpu",
            "data": {"in_channels": c_in, "target_channels": c_out, "patch_size": patch_size, "normalization": "none"},
            "model": {"name": f"BioImage Model Zoo package {descr.name}"[:200]},
            "predict": {"overlap": min(0.45, max(0.0625, 2 * halo / min(patch_size)))},
        }
    )
    if expect_workflow and expect_workflow != image_workflow.name:
        raise InputError(
            f"Model package {path} predicts images ({image_workflow.title}), not {expect_workflow.replace('_', ' ')}."
        )
    if expect_channels is not None and expect_channels != c_in:
        raise InputError(f"Model package {path} expects {c_in} input channel(s), but the image has {expect_channels}.")
    net = PackageNet(descr, fmt, device, spatial, sizes).eval()
    workflow = get_workflow(cfg)
    workflow.load_state({"target_normalization": Normalizer("none", [0.0] * c_out, [1.0] * c_out).to_dict()})
    return LoadedModel(net, cfg, Normalizer("none", [0.0] * c_in, [1.0] * c_in), path, 0, workflow)
