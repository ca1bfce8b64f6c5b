"""(c) Peak memory (RSS) and throughput of predicting a large 3D zarr volume: the pipeline must be bounded by the tiles.

A uint16 Z,Y,X zarr volume (uncompressed, so its size on disk is its size in bytes) is written chunk by chunk
from the shipped nuclei_3d sample (tiled, never whole in RAM), then predicted through `ImagePrediction` (the CLI's
and the Predict widget's path: tile plan, prediction zarr written by whole chunks, argmax labels, TIFFs when they
fit) in a fresh subprocess with a tiny 3D U-Net (`--features 2 --kernel 1` by default: one level of 2 feature maps,
1x1x1 convs, so that the model costs little: this measures the pipeline, not the model). `--trivial` replaces the
network by a pointwise op (logits x, -x), which leaves the pipeline alone. The volume and the outputs are deleted
afterwards.

The child reports its peak RSS (VmHWM) per phase (the peak is reset between phases through /proc/self/clear_refs),
the seconds and CPU seconds of each phase, and the sliding window's throughput in Mvoxel/s. `--src DIR` runs the
child with another source tree (e.g. an older commit unpacked with `git archive`) for before/after comparisons.
Target: < 1.5 GB for a volume of more than 4 GB on disk.

    .venv/bin/python benchmarks/bench_memory.py --sizes-gb 0.5 1 2 4.3 8.2 [--features 2] [--kernel 1] [--trivial] [--no-tiff]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, loadavg, table, verdict, write_result  # noqa: E402

SAMPLE_3D = REPO / "src" / "napari_bioflow" / "sample_data" / "nuclei_3d"
YX = 2048  # Y and X of every volume (--yx); Z grows with the size asked for
CHUNK = (64, 512, 512)


def status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return -1


def reset_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
    except OSError:
        pass


# --- parent side ------------------------------------------------------------------------------------
def make_volume(path: Path, z: int) -> Path:
    import tifffile
    import zarr

    src = tifffile.imread(SAMPLE_3D / "train" / "raw" / "nuclei_train.tif")  # (32, 128, 256) uint16
    arr = zarr.create_array(store=str(path), shape=(z, YX, YX), chunks=CHUNK, dtype="uint16", compressors=None)
    reps = [-(-c // s) for c, s in zip(CHUNK, src.shape)]
    block = np.tile(src, reps)[: CHUNK[0], : CHUNK[1], : CHUNK[2]]
    rng = np.random.default_rng(0)
    for z0 in range(0, z, CHUNK[0]):
        for y0 in range(0, YX, CHUNK[1]):
            for x0 in range(0, YX, CHUNK[2]):
                dz = min(CHUNK[0], z - z0)
                noise = rng.integers(0, 64, size=(dz, *CHUNK[1:]), dtype=np.uint16)
                arr[z0 : z0 + dz, y0 : y0 + CHUNK[1], x0 : x0 + CHUNK[2]] = block[:dz] + noise
    return path


def make_checkpoint(out_dir: Path, kernel: int, features: list[int]) -> Path:
    from napari_bioflow.config import RunConfig
    from napari_bioflow.engine.train import DoneReport, Trainer

    cfg = RunConfig.model_validate(
        {
            "name": "bench_mem",
            "output_dir": str(out_dir),
            "device": "cpu",
            "ndim": 3,
            "model": {"name": "unet", "options": {"feature_maps": features, "kernel_size": kernel}},
            "data": {
                "train_raw": str(SAMPLE_3D / "train" / "raw"),
                "train_label": str(SAMPLE_3D / "train" / "label"),
                "val_raw": str(SAMPLE_3D / "test" / "raw"),
                "val_label": str(SAMPLE_3D / "test" / "label"),
                "patch_size": [32, 128, 128],
            },
            "train": {"epochs": 1, "steps_per_epoch": 1, "batch_size": 2},
        }
    )
    for rep in Trainer(cfg).run():
        if isinstance(rep, DoneReport):
            return rep.checkpoint
    raise RuntimeError("no checkpoint")


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


# --- child side -------------------------------------------------------------------------------------
def child(volume: str, ckpt: str, out: str, save_tiff: bool, batch_voxels: int = 0, trivial: bool = False) -> None:
    """Predict `volume`; print one JSON line with the peak RSS (MB), seconds and CPU seconds of every phase."""
    t0 = time.perf_counter()
    phases: dict[str, dict] = {}
    state = {"name": "import+load", "t": t0, "cpu": time.process_time()}

    def mark(next_name: str) -> None:
        now, cpu = time.perf_counter(), time.process_time()
        phases[state["name"]] = {
            "peak_rss_mb": status_kb("VmHWM") / 1024,
            "seconds": now - state["t"],
            "cpu_seconds": cpu - state["cpu"],
            "rss_mb_at_end": status_kb("VmRSS") / 1024,
        }
        state.update(name=next_name, t=now, cpu=cpu)
        reset_peak()

    import threading

    import torch
    import zarr

    samples: list[tuple[float, float]] = []  # (seconds since start, RSS MB) every 0.5 s: shows any creep over time
    done = threading.Event()

    def sample_rss() -> None:
        while not done.wait(0.5):
            samples.append((round(time.perf_counter() - t0, 1), round(status_kb("VmRSS") / 1024, 1)))

    threading.Thread(target=sample_rss, daemon=True).start()

    import napari_bioflow.engine.data.io as io_mod
    import napari_bioflow.engine.predict.sliding_window as pred
    from napari_bioflow.engine.predict.inference import ImagePrediction
    from napari_bioflow.engine.train.checkpoint import load_model

    def wrapped(mod, name, before: str, after: str):
        fn = getattr(mod, name)

        def g(*a, **k):
            mark(before)
            r = fn(*a, **k)
            mark(after)
            return r

        setattr(mod, name, g)

    wrapped(pred.ZarrAccumulator, "finalize", "finalize", "labels")
    wrapped(pred, "write_labels_zarr", "labels", "after labels")
    wrapped(io_mod, "write_tiff", "tiff", "after tiff")

    if batch_voxels:  # for before/after comparisons of the engine's bound on voxels per forward pass
        from napari_bioflow.engine.predict import inference

        bound = inference.BATCH_VOXELS
        inference.BATCH_VOXELS = dict.fromkeys(bound, batch_voxels) if isinstance(bound, dict) else batch_voxels
    loaded = load_model(Path(ckpt))
    loaded.config.predict.save_tiff = save_tiff
    if trivial:  # the pipeline alone: two pointwise "logits" per voxel instead of a network

        class Pointwise(torch.nn.Module):
            size_divisor = 1

            def forward(self, x):
                return torch.cat([x, -x], 1)

        loaded.model = Pointwise()
    image = zarr.open_array(volume, mode="r")
    mark("setup (checks, plan, accumulator)")
    job = ImagePrediction(loaded, image, "volume", Path(out), "volume", "cpu")
    mark("sliding window (tiles -> accumulator)")
    result = job.run()
    mark("cleanup")
    job.cleanup()
    mark("end")
    done.set()
    written = sorted(result.outputs)
    sw = phases["sliding window (tiles -> accumulator)"]
    starts, t = {}, 0.0
    for name, ph in phases.items():  # when each phase began, to read the RSS series
        starts[name] = round(t, 1)
        t += ph["seconds"]
    voxels = int(np.prod(image.shape))
    engine = {k: getattr(pred, k) for k in ("CACHE_BYTES", "BAND_BYTES", "WRITE_QUEUE") if hasattr(pred, k)}
    from napari_bioflow.engine.predict import inference

    engine.update(BATCH_VOXELS=inference.BATCH_VOXELS, TILE_CAP=inference.TILE_CAP)
    print(
        json.dumps(
            {
                "phases": phases,
                "overall_peak_rss_mb": max(p["peak_rss_mb"] for p in phases.values()),
                "seconds": time.perf_counter() - t0,
                "tiles": len(job.plan.tiles),
                "tile": list(job.plan.tile_shape),
                "chunks": list(job.plan.chunks),
                "outputs": written,
                "sliding_window_mvoxel_per_s": voxels / sw["seconds"] / 1e6,
                "sliding_window_mvoxel_per_cpu_s": voxels / max(sw["cpu_seconds"], 1e-9) / 1e6,
                "whole_run_mvoxel_per_s": voxels / (time.perf_counter() - t0) / 1e6,
                "engine": engine,
                "torch_threads": torch.get_num_threads(),
                "phase_starts_s": starts,
                "rss_mb_every_0.5_s": samples,
                "tiff_written": (Path(out) / "per_image" / "volume.tif").exists(),
            }
        )
    )


def run_size(
    tmp: Path,
    ckpt: Path,
    gb: float,
    save_tiff: bool,
    batch_voxels: int = 0,
    trivial: bool = False,
    src: str | None = None,
) -> dict:
    z = max(1, round(gb * 1e9 / (YX * YX * 2) / CHUNK[0])) * CHUNK[0]  # whole chunks: on-disk size = bytes
    vol = tmp / f"volume_{gb}.zarr"
    out = tmp / f"out_{gb}"
    t = time.perf_counter()
    make_volume(vol, z)
    make_s = time.perf_counter() - t
    try:
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        t = time.perf_counter()
        env = dict(os.environ)
        if src:  # another source tree (before/after comparisons)
            env["PYTHONPATH"] = os.pathsep.join([str(Path(src).resolve()), env.get("PYTHONPATH", "")])
        proc = subprocess.run(
            [sys.executable, __file__, "--child", str(vol), str(ckpt), str(out)]
            + ([] if save_tiff else ["--no-tiff"])
            + ["--batch-voxels", str(batch_voxels)]
            + (["--trivial"] if trivial else []),
            capture_output=True,
            text=True,
            env=env,
        )
        wall = time.perf_counter() - t
        if proc.returncode:
            raise RuntimeError(proc.stderr[-3000:])
        rep = json.loads(proc.stdout.strip().splitlines()[-1])
        after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        rep.update(
            volume_shape=[z, YX, YX],
            volume_gb_on_disk=du(vol) / 1e9,
            outputs_gb_on_disk=du(out) / 1e9,
            make_volume_seconds=make_s,
            wall_seconds=wall,
            rusage_children_max_rss_mb=after / 1024 if after > before else None,
            loadavg=loadavg(),
        )
        return rep
    finally:
        shutil.rmtree(vol, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)


def main(argv=None):
    global YX
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes-gb", type=float, nargs="+", default=[0.5, 1.0, 2.0, 4.3])
    ap.add_argument("--features", type=int, nargs="+", default=[2], help="feature maps of the tiny U-Net per level")
    ap.add_argument(
        "--kernel", type=int, default=1, help="conv kernel of the tiny U-Net (1 = pipeline only, 3 = real convs)"
    )
    ap.add_argument("--trivial", action="store_true", help="replace the network by a pointwise op: the pipeline alone")
    ap.add_argument(
        "--no-tiff",
        action="store_true",
        help="predict.save_tiff false (default: the engine's default, "
        "TIFFs written when the probabilities are <= 2 GiB)",
    )
    ap.add_argument("--tmp", default=None, help="scratch folder (needs ~6x the largest size free)")
    ap.add_argument(
        "--batch-voxels",
        type=int,
        default=0,
        help="override the engine's voxels per forward pass "
        "(inference.BATCH_VOXELS; 0 = the engine's own), for before/after comparisons",
    )
    ap.add_argument("--yx", type=int, default=YX, help="Y and X of the volumes (Z follows from the size)")
    ap.add_argument(
        "--src",
        default=None,
        help="run the prediction with this source tree (a 'src' folder) first on "
        "PYTHONPATH, e.g. an older commit from `git archive`, for before/after comparisons",
    )
    ap.add_argument("--tag", default="")
    ap.add_argument("--child", nargs=3, metavar=("VOLUME", "CKPT", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(*args.child, save_tiff=not args.no_tiff, batch_voxels=args.batch_voxels, trivial=args.trivial)

    YX = args.yx
    tmp = Path(tempfile.mkdtemp(prefix="bench_memory_", dir=args.tmp))
    try:
        ckpt = make_checkpoint(tmp / "ckpt", args.kernel, args.features)
        load_before, rows, runs = loadavg(), [], []
        for gb in args.sizes_gb:
            rep = run_size(tmp, ckpt, gb, not args.no_tiff, args.batch_voxels, args.trivial, args.src)
            runs.append(rep)
            ph = rep["phases"]
            top = max(ph, key=lambda k: ph[k]["peak_rss_mb"])
            print(
                f"{rep['volume_gb_on_disk']:.2f} GB volume {rep['volume_shape']}: peak RSS {rep['overall_peak_rss_mb']:.0f} MB "
                f"(in {top}), {rep['seconds']:.0f} s, sliding window {rep['sliding_window_mvoxel_per_s']:.1f} Mvoxel/s "
                f"({rep['sliding_window_mvoxel_per_cpu_s']:.1f} per CPU s), outputs {rep['outputs_gb_on_disk']:.1f} GB; "
                + ", ".join(f"{k} {v['peak_rss_mb']:.0f} MB/{v['seconds']:.0f} s" for k, v in ph.items()),
                flush=True,
            )
            rows.append(
                [
                    f"{rep['volume_gb_on_disk']:.2f}",
                    rep["overall_peak_rss_mb"],
                    top,
                    round(rep["seconds"]),
                    round(rep["sliding_window_mvoxel_per_s"], 1),
                    "< 1500 MB" if rep["volume_gb_on_disk"] > 4 else "(scaling)",
                    verdict(rep["overall_peak_rss_mb"] < 1500) if rep["volume_gb_on_disk"] > 4 else "",
                ]
            )
        print(table(rows, ["volume GB", "peak RSS MB", "peak phase", "seconds", "Mvoxel/s", "target", ""]))
        print(f"load average before {load_before}, after {loadavg()}")
        big = [r for r in runs if r["volume_gb_on_disk"] > 4]
        net = (
            "pointwise op (no network)"
            if args.trivial
            else f"unet feature_maps {args.features}, 3D, kernel {args.kernel}"
        )
        path = write_result(
            "memory" + (f"_{args.tag}" if args.tag else ""),
            {
                "config": {
                    "model": net,
                    "dtype": "uint16",
                    "yx": YX,
                    "input_chunks": CHUNK,
                    "save_tiff": not args.no_tiff,
                    "device": "cpu",
                    "batch_voxels_override": args.batch_voxels or None,
                    "src": args.src,
                    "command": " ".join([Path(sys.executable).name, *sys.argv]),
                },
                "loadavg_before": load_before,
                "loadavg_after": loadavg(),
                "runs": runs,
                "pass": (all(r["overall_peak_rss_mb"] < 1500 for r in big) if big else None),
            },
        )
        print(f"wrote {path}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
