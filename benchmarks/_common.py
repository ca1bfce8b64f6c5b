"""Shared helpers of the benchmark scripts: machine facts, medians, result files, tables.

Benchmarks are never run by the test suite (timings do not belong in tests); each script runs alone:
    .venv/bin/python benchmarks/bench_train.py
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
SAMPLE_2D = REPO / "src" / "napari_bioflow" / "sample_data" / "bbbc007_2d"


def loadavg() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def machine() -> dict:
    info = {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count()}
    try:
        import torch

        info.update(
            torch=torch.__version__,
            torch_threads=torch.get_num_threads(),
            torch_interop_threads=torch.get_num_interop_threads(),
        )
    except ImportError:
        pass
    return info


def median(values) -> float:
    return float(statistics.median(values))


def write_result(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"benchmark": name, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine(), **payload}
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path


def table(rows: list[list], header: list[str]) -> str:
    cells = [[str(c) for c in header]] + [[f"{c:.3g}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


# --- the workflows the training and prediction benchmarks run (issue 2: semantic segmentation; issue 3: image to
# image and the self-supervised MAE) -----------------------------------------------------------------------------
BATCH, PATCH = 4, 256
WORKFLOWS = ("semantic_segmentation", "image_to_image", "self_supervised")
SHORT = {"semantic_segmentation": "", "image_to_image": "i2i", "self_supervised": "ssl"}
DEFAULT_MODEL = {"semantic_segmentation": "unet", "image_to_image": "unet", "self_supervised": "mae"}


def result_name(prefix: str, workflow: str, model: str) -> str:
    """train / train_i2i / train_ssl_mae / train_ssl_mae_vit_base ... (semantic segmentation keeps issue 2's names)."""
    parts = [prefix, SHORT[workflow]] + ([model] if model != "unet" else [])
    return "_".join(p for p in parts if p)


def degrade(image, seed: int, blur: float = 1.0, noise: float = 0.16):
    """The known relation of the image-to-image tests (tests/test_image_to_image.py): Gaussian blur, then Gaussian
    noise of `noise` x the image maximum; same dtype."""
    import numpy as np
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    top = float(image.max())
    out = gaussian_filter(image.astype(np.float32), blur) + rng.normal(0, noise * top, image.shape)
    return np.clip(np.round(out), 0, np.iinfo(image.dtype).max).astype(image.dtype)


def data_section(workflow: str, root: Path) -> dict:
    """The `data` section of a benchmark run on the shipped bbbc007 sample (8 training images of 400x400 and
    450x450, the 2 test images as validation):
      semantic_segmentation  raw and label folders as shipped
      image_to_image         raw = the image degraded as the tests do (blur 1 + noise 0.16 x max), target = the
                             real image; written once under `root`
      self_supervised        the raw folders alone"""
    import tifffile

    data = {"patch_size": [PATCH, PATCH]}
    if workflow == "semantic_segmentation":
        return {
            **data,
            "train_raw": str(SAMPLE_2D / "train" / "raw"),
            "train_label": str(SAMPLE_2D / "train" / "label"),
            "val_raw": str(SAMPLE_2D / "test" / "raw"),
            "val_label": str(SAMPLE_2D / "test" / "label"),
        }
    if workflow == "self_supervised":
        return {**data, "train_raw": str(SAMPLE_2D / "train" / "raw"), "val_raw": str(SAMPLE_2D / "test" / "raw")}
    for split, role in (("train", "train"), ("test", "val")):
        raw_dir, target_dir = root / "i2i" / role / "raw", root / "i2i" / role / "target"
        if not raw_dir.exists():
            raw_dir.mkdir(parents=True)
            target_dir.mkdir(parents=True)
            for seed, path in enumerate(sorted((SAMPLE_2D / split / "raw").glob("*.tif"))):
                image = tifffile.imread(path)
                tifffile.imwrite(raw_dir / path.name, degrade(image, seed))
                tifffile.imwrite(target_dir / path.name, image)
        data[f"{role}_raw"], data[f"{role}_label"] = str(raw_dir), str(target_dir)
    return data


def run_config(workflow: str, model: str, out_dir: Path, data_root: Path, name: str = "bench", **sections):
    """A RunConfig of the benchmarks: CPU, patch 256x256, batch 4, the workflow's defaults otherwise. The
    self-supervised workflow uses the masking pretext with an MAE, crappify with any other model."""
    from napari_bioflow.config import RunConfig

    train = {"batch_size": BATCH, "patience": 0, **sections.pop("train", {})}
    spec = {
        "workflow": workflow,
        "name": name,
        "output_dir": str(out_dir),
        "device": "cpu",
        "data": data_section(workflow, data_root),
        "model": {"name": model},
        "train": train,
        **sections,
    }
    if workflow == "self_supervised":
        spec["self_supervised"] = {"pretext": "masking" if model.startswith("mae") else "crappify"}
    return RunConfig.model_validate(spec)


# --- clocks: wall time (the figure that matters) or CPU time (robust on an overloaded shared machine) -------------
CLOCKS = {
    "wall": time.perf_counter,
    # CPU seconds of the calling thread: the training loop's own work. Blind to time spent waiting (e.g. on the
    # prefetch thread), so it is used with --threads 1 and the batch production cost is checked on its own
    "thread": time.thread_time,
    # CPU seconds of the whole process (all threads: zarr's I/O loop too); with --threads 1 on a loaded machine it
    # measures the work done, which the load barely changes, where wall time varies up to 20x
    "process": time.process_time,
}


def add_clock_options(ap, default_cpu: str) -> None:
    ap.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help=f"wall: wall-clock seconds (default); cpu: CPU seconds ({default_cpu} time), for a machine "
        f"too loaded for wall-clock ratios (use with --threads 1)",
    )
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")


def apply_clock_options(args, default_cpu: str):
    """Set torch's threads; return (clock function, clock name)."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    name = "wall" if args.clock == "wall" else default_cpu
    return CLOCKS[name], name
