"""Which BioImage Model Zoo weight formats every registered model converts to, 2D and 3D (issue 13).

Each model is built with small options (the depth and width the tests use: a conversion depends on the operations,
not on the number of layers), wrapped as the package's network (engine/export/architecture.py: the model and its
activation) and converted as `napari-bioflow export` does (engine/export/weights.py): TorchScript by torch.jit.trace,
ONNX by torch.onnx.export (opset 18, dynamic batch and spatial axes for dense models) run in onnxruntime. A format
counts as converted when its module reproduces the PyTorch output within 1e-4 on the input and, for dense models, on
a second tile size (a trace that froze a shape fails there).

    .venv/bin/python benchmarks/bmz_formats.py [--models unet vit ...]

prints a Markdown table (docs/bmz.md holds the last one)."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

SMALL = {  # option -> small value, applied where a model has the option
    "feature_maps": lambda v: v[:3],  # three levels: ResUNet++ needs them
    "depth": lambda v: 2,
    "embed_dim": lambda v: 64,
    "num_heads": lambda v: 2,
    "img_size": lambda v: 64,
    "n_resgroups": lambda v: 2,
    "n_resblocks": lambda v: 2,
    "n_resblocks_per_group": lambda v: 2,
    "n_blocks": lambda v: 2,
}


def options(name: str) -> dict:
    from napari_bioflow.engine.models import model_info

    info = model_info(name)
    out = {k: f(info[k]) for k, f in SMALL.items() if k in info}
    if isinstance(info.get("img_size"), list):
        out.pop("img_size")
    return out


def one(name: str, ndim: int) -> tuple[str, str, str]:
    from napari_bioflow.engine.export.architecture import wrap
    from napari_bioflow.engine.export.weights import convert
    from napari_bioflow.engine.models import create_model, model_task

    dense = model_task(name) == "dense"
    opts = options(name)
    if "img_size" in opts and ndim == 3:
        opts["img_size"] = 32
    try:
        model = create_model(name, ndim=ndim, in_channels=1, out_channels=2, **opts).eval()
    except ValueError:  # small options the model refuses: its defaults
        model = create_model(name, ndim=ndim, in_channels=1, out_channels=2).eval()
    size = 64 if ndim == 2 else 32
    d = model.size_divisor
    size = max(d, size // d * d)
    x = np.random.default_rng(0).normal(size=(1, 1, *(size,) * ndim)).astype(np.float32)
    other = x[(slice(None), slice(None), *(slice(0, size - d),) * ndim)].copy() if dense and size - d >= d else None
    net = wrap(model, "softmax")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            got = convert(net, x, Path(tmp), ("torchscript", "onnx"), other, dynamic_spatial=dense)
        except Exception as e:  # noqa: BLE001  (the model itself does not run on this input)
            return "n/a", "n/a", f"the model does not run on a {size}^{ndim} input: {str(e).splitlines()[0][:120]}"
    cell = {f: ("yes" if f in got.files else "no") for f in ("torchscript", "onnx")}
    why = "; ".join(f"{f}: {w}" for f, w in got.failed.items())
    return cell["torchscript"], cell["onnx"], why


def main() -> None:
    from napari_bioflow.engine.models import list_models
    from napari_bioflow.engine.models.registry import _entry

    p = argparse.ArgumentParser()
    p.add_argument("--models", nargs="*")
    args = p.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    names = args.models or list_models(task=None)
    print(f"torch {torch.__version__}, ONNX opset 18\n")
    print("| model | dims | torchscript | onnx | why not | seconds |")
    print("|---|---|---|---|---|---|")
    for name in names:
        for ndim in _entry(name).ndims:
            start = time.perf_counter()
            ts, ox, why = one(name, ndim)
            print(f"| {name} | {ndim}D | {ts} | {ox} | {why} | {time.perf_counter() - start:.1f} |", flush=True)


if __name__ == "__main__":
    main()
