"""The three weight formats of a package: the PyTorch state dict (always), TorchScript (torch.jit.trace) and ONNX
(torch.onnx.export with dynamic batch and spatial axes). A conversion that fails, or whose module does not give the
PyTorch module's output on the test input, is left out with one sentence saying why."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FORMATS = ("pytorch_state_dict", "torchscript", "onnx")
ONNX_OPSET = 18
TOLERANCE = 1e-4  # absolute, on outputs of the order of 1 (probabilities, normalized images)


@dataclass
class Converted:
    files: dict[str, Path] = field(default_factory=dict)  # format -> weights file
    failed: dict[str, str] = field(default_factory=dict)  # format -> why it did not convert
    opset: int = ONNX_OPSET


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:300]


def _close(a: np.ndarray, b: np.ndarray) -> str | None:
    if a.shape != b.shape:
        return f"its output has shape {b.shape}, the PyTorch module's {a.shape}"
    diff = float(np.max(np.abs(a - b))) if a.size else 0.0
    scale = max(1.0, float(np.max(np.abs(a))) if a.size else 1.0)
    if not np.isfinite(diff) or diff > TOLERANCE * scale:
        return f"its output differs from the PyTorch module's by up to {diff:.3g}"
    return None


def to_torchscript(net, example: np.ndarray, path: Path, expected: np.ndarray, other: np.ndarray | None) -> str | None:
    """Trace `net` on `example` into `path`; None when it converted and reproduces `expected` (and, on `other`, a
    second valid input size, the traced module's own PyTorch result: a trace that froze a shape fails there)."""
    import torch

    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings of the shape checks in forward
            traced = torch.jit.trace(net, torch.from_numpy(example), check_trace=False)
            traced.save(str(path))
            loaded = torch.jit.load(str(path))
            problem = _close(expected, loaded(torch.from_numpy(example)).numpy())
            if problem is None and other is not None:
                problem = _close(net(torch.from_numpy(other)).numpy(), loaded(torch.from_numpy(other)).numpy())
                problem = problem and f"at another tile size {problem}"
    except Exception as e:  # noqa: BLE001  (any failure of the tracer is a reason to report)
        return f"torch.jit.trace failed: {_first_line(e)}"
    return problem and f"the traced module is not the model: {problem}"


def to_onnx(
    net, example: np.ndarray, path: Path, expected: np.ndarray, other: np.ndarray | None, dynamic_spatial: bool
) -> str | None:
    """Export `net` to ONNX at `path` (dynamic batch, and spatial axes when `dynamic_spatial`), check it with
    onnxruntime; None when it reproduces `expected` (and `other`)."""
    import torch

    names = ["batch", "channel", "z", "y", "x"][:2] + ["z", "y", "x"][-(example.ndim - 2) :]
    axes = {0: "batch"}
    if dynamic_spatial:
        axes.update({i: names[i] for i in range(2, example.ndim)})
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                net,
                (torch.from_numpy(example),),
                str(path),
                input_names=["input"],
                output_names=["output"],
                dynamic_axes={"input": axes, "output": {0: "batch"} if not dynamic_spatial else dict(axes)},
                opset_version=ONNX_OPSET,
                dynamo=False,
            )
    except Exception as e:  # noqa: BLE001
        path.unlink(missing_ok=True)
        return f"torch.onnx.export failed: {_first_line(e)}"
    try:
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        problem = _close(expected, session.run(None, {"input": example})[0])
        if problem is None and other is not None:
            with torch.no_grad():
                want = net(torch.from_numpy(other)).numpy()
            problem = _close(want, session.run(None, {"input": other})[0])
            problem = problem and f"at another tile size {problem}"
    except Exception as e:  # noqa: BLE001
        problem = f"onnxruntime cannot run it: {_first_line(e)}"
    return problem and f"the ONNX model is not the model: {problem}"


def _keep(out: Converted, fmt: str, path: Path, problem: str | None) -> None:
    if problem:
        out.failed[fmt] = problem
        path.unlink(missing_ok=True)
    else:
        out.files[fmt] = path


def convert(
    net, example: np.ndarray, folder: Path, formats, other: np.ndarray | None = None, dynamic_spatial: bool = True
) -> Converted:
    """Write the weights of `net` (a BioflowNet, eval mode) in each of `formats` into `folder`. `example`: a valid
    normalized input (B, C, ...); `other`: another valid size, to catch traces that froze a shape."""
    import torch

    out = Converted()
    with torch.no_grad():
        expected = net(torch.from_numpy(example)).numpy()
    if "pytorch_state_dict" in formats:
        path = folder / "weights.pt"
        torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, path)
        out.files["pytorch_state_dict"] = path
    if "torchscript" in formats:
        path = folder / "weights_torchscript.pt"
        _keep(out, "torchscript", path, to_torchscript(net, example, path, expected, other))
    if "onnx" in formats:
        path = folder / "weights.onnx"
        _keep(out, "onnx", path, to_onnx(net, example, path, expected, other, dynamic_spatial))
    return out
