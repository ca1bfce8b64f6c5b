"""Issue 9: the memory check before training (engine/train/memory.py) against the real peak of training steps.

Each case runs in a fresh subprocess: the trainer is set up as for a run (data, normalizer, model on the device), the
estimate is computed (its CPU and wall time: the cost the check adds to a training start), then real training
steps run at the same batch and patch size:
  CPU   peak RSS (VmHWM, reset through /proc/self/clear_refs after a warm-up step and malloc_trim) minus the RSS just
        before the measured steps: the memory the steps took from the machine
  CUDA  torch.cuda.max_memory_reserved() minus the reserved memory before them (the cache emptied after the
        warm-up): what the caching allocator took from the GPU
`ratio` = estimate / measured: >= 1 means a configuration that passes the check fits. Informational: no target.

    .venv/bin/python benchmarks/bench_memory_estimate.py [--device cpu|cuda] [--cases NAME,...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import loadavg, table, write_result  # noqa: E402

# name: (workflow config, model name, model options, ndim, patch, batch)
CASES = {
    "unet2d_default": ("semantic_segmentation", "unet", {}, 2, [256, 256], 4),
    "unet2d_512_b8": ("semantic_segmentation", "unet", {}, 2, [512, 512], 8),
    "unet3d_default": ("semantic_segmentation", "unet", {}, 3, [32, 128, 128], 2),
    "resunet2d": ("semantic_segmentation", "resunet", {}, 2, [256, 256], 4),
    "attention_unet2d": ("semantic_segmentation", "attention_unet", {}, 2, [256, 256], 4),
    "unetr2d": ("semantic_segmentation", "unetr", {}, 2, [128, 128], 4),
    "edsr2d": ("image_to_image", "edsr", {}, 2, [128, 128], 4),
    "rcan2d": ("image_to_image", "rcan", {}, 2, [64, 64], 4),
    "dfcan2d": ("image_to_image", "dfcan", {}, 2, [128, 128], 4),
    "mae2d": ("masking", "mae", {}, 2, [128, 128], 8),
    "crappify_unet2d": ("crappify", "unet", {}, 2, [256, 256], 4),
    "vit_class2d": ("classification", "vit", {}, 2, [64, 64], 16),
    "cnn_class2d": ("classification", "simple_cnn", {}, 2, [128, 128], 16),
    "effnet_b0_2d": ("classification", "efficientnet_b0", {}, 2, [128, 128], 8),
    # GPU only (the default skips them on CPU): big steps
    "unet3d_big": ("semantic_segmentation", "unet", {"feature_maps": [32, 64, 128, 256]}, 3, [64, 128, 128], 8),
    "unet2d_1024_b16": ("semantic_segmentation", "unet", {}, 2, [1024, 1024], 16),
}
GPU_ONLY = {"unet3d_big", "unet2d_1024_b16"}


def _write(path: Path, data) -> None:
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, data)


def make_data(root: Path, kind: str, ndim: int, patch: list[int]) -> dict:
    """Synthetic images a little larger than the patch (values do not matter for memory), as folders."""
    import numpy as np

    rng = np.random.default_rng(0)
    shape = tuple(p + 8 for p in patch)
    if kind == "classification":
        for c in ("a", "b"):
            for i in range(3):
                _write(root / "train" / c / f"{c}{i}.tif", rng.integers(0, 255, shape, dtype=np.uint8))
        return {"train_raw": str(root / "train"), "val_split": 0.0}
    data = {"train_raw": str(root / "raw")}
    for i in range(2):
        raw = rng.integers(0, 255, shape, dtype=np.uint8)
        _write(root / "raw" / f"im{i}.tif", raw)
        if kind in ("semantic_segmentation", "image_to_image"):
            target = (raw > 128).astype(np.uint8) if kind == "semantic_segmentation" else raw
            _write(root / "label" / f"im{i}.tif", target)
            data["train_label"] = str(root / "label")
    data["val_split"] = 0.0
    return data


def case_config(name: str, root: Path, device: str) -> dict:
    kind, model, options, ndim, patch, batch = CASES[name]
    cfg = {
        "name": name,
        "output_dir": str(root / "runs"),
        "device": device,
        "ndim": ndim,
        "seed": 0,
        "data": {"patch_size": patch, **make_data(root, kind, ndim, patch)},
        "model": {"name": model, "options": options},
        "train": {"batch_size": batch, "epochs": 1},
    }
    if kind in ("masking", "crappify"):
        cfg["workflow"] = "self_supervised"
        cfg["self_supervised"] = {"pretext": kind}
        cfg["train"]["loss"] = "auto" if kind == "masking" else "l1"
    else:
        cfg["workflow"] = kind
    return cfg


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def child(cfg_dict: dict) -> dict:
    import ctypes
    import gc

    import torch

    from napari_bioflow.config import RunConfig
    from napari_bioflow.engine.train.memory import StepMemory, available, check_training
    from napari_bioflow.engine.train.trainer import Trainer, _optimizer

    torch.manual_seed(0)
    cfg = RunConfig.from_dict(cfg_dict)
    trainer = Trainer(cfg)
    trainer._prepare()
    wf, model, device = trainer.workflow, trainer.model, trainer.device
    data = wf.training_data(trainer.dataset, cfg, trainer.normalizer)
    loss_fn = wf.loss(cfg)
    batch = cfg.train.batch_size

    _optimizer(cfg, model.parameters())  # as the trainer does before the check (its first one imports torch._dynamo)
    wall, cpu = time.perf_counter(), time.process_time()
    check_training(model, wf, cfg, data, loss_fn, device)  # what the trainer runs (passes: it fits)
    check_wall, check_cpu = time.perf_counter() - wall, time.process_time() - cpu
    estimate = StepMemory(model, wf, cfg, data.example(), loss_fn)
    need, peak = estimate.need(batch, device), estimate.peak(batch)

    gen = torch.Generator().manual_seed(0)

    def step(opt, xb, yb):
        x = torch.from_numpy(xb).to(device)
        y = torch.from_numpy(yb).to(device)
        if cfg.augment.enable:
            x, y = wf.augment(x, y, cfg, gen)
        x, y = wf.make_pair(x, y, gen, cfg)
        opt.zero_grad(set_to_none=True)
        wf.training_loss(model, x, y, loss_fn).backward()
        opt.step()

    model.train()
    step(_optimizer(cfg, model.parameters()), *data.batch(1))  # warm-up: kernels loaded, threads started
    model.zero_grad(set_to_none=True)
    gc.collect()
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_reserved()
    else:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM back to the current RSS
        base = _status("VmRSS")
    opt = _optimizer(cfg, model.parameters())
    batches = [data.batch(batch) for _ in range(3)]  # what the prefetch queue holds
    for xb, yb in batches:
        step(opt, xb, yb)
    if cuda:
        torch.cuda.synchronize()
        measured = torch.cuda.max_memory_reserved() - base
        allocated = torch.cuda.max_memory_allocated()
    else:
        measured, allocated = _status("VmHWM") - base, None
    free, _ = available(device)
    return {
        "need": need,
        "step_peak": peak,
        "fixed": estimate.fixed,
        "measured": measured,
        "max_allocated": allocated,
        "ratio": need / measured if measured > 0 else None,
        "check_ms_wall": round(check_wall * 1000, 1),
        "check_ms_cpu": round(check_cpu * 1000, 1),
        "free": free,
    }


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        print("RESULT " + json.dumps(child(json.loads(sys.argv[2]))), flush=True)
        return
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cpu")
    p.add_argument("--cases", default="")
    args = p.parse_args()
    names = args.cases.split(",") if args.cases else [n for n in CASES if args.device == "cuda" or n not in GPU_ONLY]
    rows, results = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            cfg = case_config(name, Path(tmp) / name, args.device)
            env = {**os.environ, "PYTHONWARNINGS": "ignore"}
            proc = subprocess.run(
                [sys.executable, __file__, "--child", json.dumps(cfg)],
                capture_output=True,
                text=True,
                env=env,
                timeout=1200,
            )
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                print(f"{name}: failed\n{proc.stderr[-2000:]}", flush=True)
                results[name] = {"error": proc.stderr[-2000:]}
                continue
            r = json.loads(line[7:])
            results[name] = r
            mb = lambda v: round(v / 2**20) if v is not None else None  # noqa: E731
            rows.append(
                [
                    name,
                    mb(r["step_peak"]),
                    mb(r["need"]),
                    mb(r["measured"]),
                    r["ratio"],
                    r["check_ms_cpu"],
                    r["check_ms_wall"],
                ]
            )
            print(
                table(
                    rows[-1:],
                    ["case", "step MiB", "estimate MiB", "measured MiB", "ratio", "check ms cpu", "check ms wall"],
                ),
                flush=True,
            )
    print(table(rows, ["case", "step MiB", "estimate MiB", "measured MiB", "ratio", "check ms cpu", "check ms wall"]))
    path = write_result(f"memory_estimate_{args.device}", {"cases": results, "loadavg": loadavg()})
    print(f"results: {path}")


if __name__ == "__main__":
    main()
