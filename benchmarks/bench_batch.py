"""(f) Batch-folder prediction: throughput of the batch runner against one-image prediction in a loop, and scaling
of the dask path from 1 to 2 workers.

The checkpoint comes from a 1-step Trainer run of the default 2D U-Net (BiaPy's) on the shipped bbbc007 sample (speed
does not depend on the weights). The folder holds `--files` (50) uint8 TIFFs of `--size` (256) x 256 px cropped from
the real bbbc007 images at different places. Every run writes the full experiment layout (zarr stores, probability
and label TIFFs). Measured, interleaved, `--repeats` times, in files/s and megapixels/s:

  A  batch                 run_batch over the folder in this process (`napari-bioflow batch`, the Batch dock)
  B  loop, model loaded    for each file: a new experiment run, ImagePrediction(...).run(), cleanup; the model is
                           loaded once (what a script calling the one-image API does)
  B_main                   B in the main thread instead of a helper thread (information: see the note below)
  C  loop, model per file  the same, loading the checkpoint for each file (what pressing Predict per image costs)
  D1 dask, 1 worker        run_batch over the folder on a running LocalCluster of 1 worker process (1 torch thread)
  D2 dask, 2 workers       the same on a LocalCluster of 2 worker processes (1 torch thread each)
Ratios pair by pair (median of the ratios): A/B (target >= 0.95: the batch runner costs < 5 % over the bare
one-image loop), A/C, D2/D1 (scaling of the dask path on this 2-core machine; ideal 2), D2/A.

With `--big N` (default 2048; 0 skips it) one N x N image (a mosaic of the real images) is also predicted through
the dask block path (`block_size` N/2: 4 blocks): E1 on the 1-worker cluster, E2 on the 2-worker cluster, E0 the
whole image in this process; ratio E2/E1.

A, B and C predict in a helper thread (run_batch does; so do the docks' napari workers), so that they compare the
same thing: on this shared 2-core machine torch's 2 OpenMP threads driven from the *main* thread run several times
slower than from a helper thread (4x the CPU time for the same work while other processes hold the cores; B_main/B
shows it), an artefact of the machine, not of the batch runner.

The clusters are started once, before timing (their start-up, a few seconds with the torch import, is reported
apart), and each is warmed up by one unmeasured batch so that every worker has loaded the checkpoint.

    .venv/bin/python benchmarks/bench_batch.py [--repeats 3] [--files 50] [--size 256] [--big 2048]
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SAMPLE_2D, loadavg, median, table, verdict, write_result  # noqa: E402
from bench_predict import make_checkpoint, mosaic  # noqa: E402


def make_folder(folder: Path, files: int, size: int) -> list[Path]:
    import tifffile

    raws = [tifffile.imread(p) for p in sorted((SAMPLE_2D / "train" / "raw").glob("*.tif"))]
    raws += [tifffile.imread(p) for p in sorted((SAMPLE_2D / "test" / "raw").glob("*.tif"))]
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(files):
        image = raws[i % len(raws)]
        y, x = (int(rng.integers(0, s - size + 1)) for s in image.shape)
        path = folder / f"img_{i:03d}.tif"
        tifffile.imwrite(path, np.ascontiguousarray(image[y : y + size, x : x + size]))
        paths.append(path)
    return paths


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--files", type=int, default=50)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--big", type=int, default=2048)
    ap.add_argument(
        "--parts",
        default="loop,dask,big",
        help="what to measure: loop (A, B, B_main, C), dask (D1, D2), big (E0, E1, E2); comma-separated",
    )
    ap.add_argument("--tag", default="")
    args = ap.parse_args(argv)
    parts = set(args.parts.split(","))

    import torch
    from distributed import LocalCluster

    from napari_bioflow.engine.batch import BatchRequest, BatchSummary, run_batch
    from napari_bioflow.engine.data.io import open_image
    from napari_bioflow.engine.experiment import new_experiment
    from napari_bioflow.engine.predict.inference import ImagePrediction
    from napari_bioflow.engine.train.checkpoint import load_model

    tmp = Path(tempfile.mkdtemp(prefix="bench_batch_"))
    clusters = {}
    try:
        checkpoint = make_checkpoint("semantic_segmentation", "unet", tmp / "ckpt", tmp / "data")
        paths = make_folder(tmp / "images", args.files, args.size)
        mp = args.files * args.size * args.size / 1e6
        loaded = load_model(checkpoint)
        out = tmp / "out"

        def batch(scheduler=None, folder=tmp / "images", **kw) -> float:
            t = time.perf_counter()
            summary = None
            for r in run_batch(
                BatchRequest(
                    checkpoint=checkpoint, input_dir=folder, output_dir=out, device="cpu", scheduler=scheduler, **kw
                ),
                loaded if scheduler is None else None,
            ):
                summary = r
            seconds = time.perf_counter() - t
            assert isinstance(summary, BatchSummary) and not summary.failed, summary
            shutil.rmtree(summary.run_dir, ignore_errors=True)
            return seconds

        def loop(reload: bool, thread: bool = True) -> float:
            def work():
                for path in paths:
                    model = load_model(checkpoint) if reload else loaded
                    experiment = new_experiment(out, "loop")
                    job = ImagePrediction(model, open_image(path), str(path), experiment.results, path.stem, "cpu")
                    job.run()
                    job.cleanup()

            t = time.perf_counter()
            if thread:  # in a helper thread, as run_batch predicts (and the docks' napari workers)
                worker = threading.Thread(target=work)
                worker.start()
                worker.join()
            else:
                work()
            seconds = time.perf_counter() - t
            shutil.rmtree(out / "loop", ignore_errors=True)
            return seconds

        starts = {}
        for n in (1, 2) if parts & {"dask", "big"} else ():
            t = time.perf_counter()
            clusters[n] = LocalCluster(
                n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=logging.CRITICAL
            )
            starts[f"cluster_{n}_start_s"] = time.perf_counter() - t
            t = time.perf_counter()
            batch(clusters[n].scheduler_address)  # warm-up: every worker loads torch and the checkpoint
            starts[f"cluster_{n}_warmup_batch_s"] = time.perf_counter() - t
        print(
            f"{args.files} files of {args.size}x{args.size} ({mp:.2f} MP); torch threads here "
            f"{torch.get_num_threads()}; clusters: {starts}",
            flush=True,
        )
        batch()  # warm-up in this process
        runs = {"A_batch": lambda: batch()}  # always: the reference of the ratios
        if "loop" in parts:
            runs.update(
                {
                    "B_loop_model_loaded": lambda: loop(False),
                    "B_main_loop_in_main_thread": lambda: loop(False, thread=False),
                    "C_loop_model_per_file": lambda: loop(True),
                }
            )
        if "dask" in parts:
            runs.update(
                {
                    "D1_dask_1_worker": lambda: batch(clusters[1].scheduler_address),
                    "D2_dask_2_workers": lambda: batch(clusters[2].scheduler_address),
                }
            )
        big = None
        if args.big and "big" in parts:
            big_dir = tmp / "big"
            big_dir.mkdir()
            import tifffile

            tifffile.imwrite(big_dir / "mosaic.tif", mosaic(args.big))
            big = args.big * args.big / 1e6
            half = args.big // 2
            runs.update(
                {
                    "E0_big_whole_here": lambda: batch(folder=big_dir),
                    "E1_big_blocks_1_worker": lambda: batch(clusters[1].scheduler_address, big_dir, block_size=half),
                    "E2_big_blocks_2_workers": lambda: batch(clusters[2].scheduler_address, big_dir, block_size=half),
                }
            )
        load_before = loadavg()
        seconds = {k: [] for k in runs}
        for r in range(args.repeats):
            for k, fn in runs.items():
                seconds[k].append(fn())
            print(
                f"round {r + 1}: " + ", ".join(f"{k} {seconds[k][-1]:.1f} s" for k in runs) + f"; load {loadavg()}",
                flush=True,
            )

        files_s = {k: [args.files / s for s in v] for k, v in seconds.items() if not k.startswith("E")}
        mps = {k: [(big if k.startswith("E") else mp) / s for s in v] for k, v in seconds.items()}
        ratio = lambda a, b: [x / y for x, y in zip(mps[a], mps[b])]  # noqa: E731
        ratios = {}
        if "loop" in parts:
            ratios.update(
                {
                    "A/B": ratio("A_batch", "B_loop_model_loaded"),
                    "A/C": ratio("A_batch", "C_loop_model_per_file"),
                    "B_main/B": ratio("B_main_loop_in_main_thread", "B_loop_model_loaded"),
                }
            )
        if "dask" in parts:
            ratios.update(
                {
                    "D2/D1": ratio("D2_dask_2_workers", "D1_dask_1_worker"),
                    "D2/A": ratio("D2_dask_2_workers", "A_batch"),
                    "D1/A": ratio("D1_dask_1_worker", "A_batch"),
                }
            )
        if big:
            ratios.update(
                {
                    "E2/E1": ratio("E2_big_blocks_2_workers", "E1_big_blocks_1_worker"),
                    "E2/E0": ratio("E2_big_blocks_2_workers", "E0_big_whole_here"),
                }
            )
        summary = {f"{k}_files_per_s": median(v) for k, v in files_s.items()}
        summary.update({f"{k}_mp_per_s": median(v) for k, v in mps.items()})
        summary.update({f"ratio_{k}": median(v) for k, v in ratios.items()})
        summary["pass"] = summary["ratio_A/B"] >= 0.95 if "A/B" in ratios else None
        summary["target"] = ">= 0.95 (batch runner / one-image loop with the model loaded once)"
        rows = []
        for k in runs:
            rows.append([k, median(files_s[k]) if k in files_s else "", median(mps[k]), args.repeats])
        print(table(rows, ["run", "files/s", "MP/s", "repeats"]))
        print(
            table(
                [
                    [
                        k,
                        median(v),
                        ">= 0.95" if k == "A/B" else "(info)",
                        verdict(bool(summary["pass"])) if k == "A/B" else "",
                    ]
                    for k, v in ratios.items()
                ],
                ["ratio (pair by pair)", "median", "target", ""],
            )
        )
        print(f"load average before {load_before}, after {loadavg()}")
        path = write_result(
            "batch" + (f"_{args.tag}" if args.tag else ""),
            {
                "config": {
                    "model": "unet (default)",
                    "files": args.files,
                    "size": [args.size, args.size],
                    "dtype": "uint8",
                    "megapixels": mp,
                    "big": args.big,
                    "parts": sorted(parts),
                    "device": "cpu",
                    "threads_per_worker": 1,
                    "torch_threads_here": torch.get_num_threads(),
                    **starts,
                },
                "loadavg_before": load_before,
                "loadavg_after": loadavg(),
                "summary": summary,
                "seconds": seconds,
                "files_per_s": files_s,
                "megapixels_per_s": mps,
                "ratios": ratios,
            },
        )
        print(f"wrote {path}")
    finally:
        for c in clusters.values():
            c.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
