"""(b) Tiled prediction throughput (megapixels/s) of the default 2D U-Net on a 2048x2048 image, CPU.

The checkpoint comes from a 1-step Trainer run on the shipped bbbc007 sample (weights barely trained: speed does
not depend on them). The image is a 2048x2048 uint8 mosaic of the real bbbc007 training images.

Measured, interleaved (A, B, C, D, A, B, C, D, ...) `--repeats` times, each in megapixels of the image per second:
  A  ImagePrediction   the full pipeline used by the CLI and the Predict widget: checks, tile plan, zarr
                       accumulator on disk, tiles batched through the model with softmax, finalize to a zarr
                       probability map, argmax labels (zarr), TIFFs of probabilities and labels
  B  predict_array     the same tiling and blending into a numpy accumulator (training preview path)
  C  bare whole image  model(x) on the whole 1x1x2048x2048 tensor (no tiling), under inference_mode
  D  bare tiles        model(x) on the same tiles as A/B (same plan, same batch size), inputs already tensors
Target: A >= 0.85 x C (pair by pair, median of the ratios). D/C shows what the tiling itself costs in compute
(overlap + instance norm per tile); A/D what the pipeline around the model costs.

    .venv/bin/python benchmarks/bench_predict.py [--repeats 3] [--size 2048]
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SAMPLE_2D, loadavg, median, table, verdict, write_result  # noqa: E402


def make_checkpoint(out_dir: Path) -> Path:
    from napari_bioflow.config import RunConfig
    from napari_bioflow.engine.train import DoneReport, Trainer

    cfg = RunConfig.model_validate({
        "name": "bench_ckpt", "output_dir": str(out_dir), "device": "cpu",
        "data": {"train_raw": str(SAMPLE_2D / "train" / "raw"), "train_label": str(SAMPLE_2D / "train" / "label"),
                 "val_raw": str(SAMPLE_2D / "test" / "raw"), "val_label": str(SAMPLE_2D / "test" / "label")},
        "train": {"epochs": 1, "steps_per_epoch": 1, "batch_size": 4},
    })
    for rep in Trainer(cfg).run():
        if isinstance(rep, DoneReport):
            return rep.checkpoint
    raise RuntimeError("no checkpoint")


def mosaic(size: int) -> np.ndarray:
    import tifffile

    tiles = [tifffile.imread(p)[:400, :400] for p in sorted((SAMPLE_2D / "train" / "raw").glob("*.tif"))]
    n = -(-size // 400)
    rows = [np.concatenate([tiles[(i * n + j) % len(tiles)] for j in range(n)], axis=1) for i in range(n)]
    return np.ascontiguousarray(np.concatenate(rows, axis=0)[:size, :size])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--tag", default="")
    args = ap.parse_args(argv)

    import torch

    from napari_bioflow.engine.checkpoint import load_model
    from napari_bioflow.engine import inference
    from napari_bioflow.engine.inference import ImagePrediction, default_tile, predict_array
    from napari_bioflow.engine.predict import _read_tile, plan_tiles

    tmp = Path(tempfile.mkdtemp(prefix="bench_predict_"))
    try:
        loaded = load_model(make_checkpoint(tmp / "ckpt"))
        cfg, model = loaded.config, loaded.model
        image = mosaic(args.size)
        mp = image.size / 1e6
        tile = default_tile(cfg, image.shape, model.size_divisor)
        plan = plan_tiles(image.shape, tile, cfg.predict.overlap, model.size_divisor)
        # the batch the engine uses for this tile (lowered for big tiles where the engine does so)
        bs = inference.tile_batch(cfg, tile) if hasattr(inference, "tile_batch") else cfg.predict.batch_size
        img_cl = image[..., None]
        tiles = [torch.from_numpy(np.moveaxis(np.stack([_read_tile(img_cl, t, image.shape, loaded.normalizer) for t in plan.tiles[k:k + bs]]), -1, 1).copy())
                 for k in range(0, len(plan.tiles), bs)]
        whole = torch.from_numpy(np.asarray(loaded.normalizer(img_cl), np.float32)[None, None, ..., 0].copy())
        tile_px = len(plan.tiles) * int(np.prod(plan.tile_shape))
        print(f"image {image.shape}, default tile {tile} -> plan {len(plan.tiles)} tiles of {plan.tile_shape} "
              f"(computed pixels {tile_px / image.size:.3f}x the image), batch {bs}", flush=True)

        def run_pipeline(i):
            job = ImagePrediction(loaded, image, "mosaic", tmp / f"out{i}", "mosaic", "cpu")
            t = time.perf_counter()
            job.run()
            job.cleanup()
            return time.perf_counter() - t

        def run_array(_):
            t = time.perf_counter()
            predict_array(loaded, image)
            return time.perf_counter() - t

        def run_whole(_):
            t = time.perf_counter()
            with torch.inference_mode():
                model(whole)
            return time.perf_counter() - t

        def run_tiles(_):
            t = time.perf_counter()
            with torch.inference_mode():
                for x in tiles:
                    model(x)
            return time.perf_counter() - t

        runs = {"A_image_prediction": run_pipeline, "B_predict_array": run_array,
                "C_bare_whole": run_whole, "D_bare_tiles": run_tiles}
        run_whole(-1)  # warm-up (allocator, kernels)
        run_tiles(-1)
        load_before = loadavg()
        seconds = {k: [] for k in runs}
        for r in range(args.repeats):
            for k, fn in runs.items():
                seconds[k].append(fn(r))
                shutil.rmtree(tmp / f"out{r}", ignore_errors=True)
            print(f"round {r + 1}: " + ", ".join(f"{k} {mp / seconds[k][-1]:.3f} MP/s" for k in runs) + f"; load {loadavg()}", flush=True)

        mps = {k: [mp / s for s in v] for k, v in seconds.items()}
        ratio = lambda a, b: [x / y for x, y in zip(mps[a], mps[b])]  # noqa: E731
        ratios = {"A/C": ratio("A_image_prediction", "C_bare_whole"), "B/C": ratio("B_predict_array", "C_bare_whole"),
                  "D/C": ratio("D_bare_tiles", "C_bare_whole"), "A/D": ratio("A_image_prediction", "D_bare_tiles"),
                  "B/D": ratio("B_predict_array", "D_bare_tiles")}
        summary = {k: median(v) for k, v in mps.items()}
        summary.update({f"ratio_{k}": median(v) for k, v in ratios.items()})
        summary["pass"] = summary["ratio_A/C"] >= 0.85
        summary["target"] = ">= 0.85 (ImagePrediction / bare whole-image forward)"
        rows = [
            ["A ImagePrediction (zarr, finalize, labels, TIFF)", summary["A_image_prediction"], args.repeats, summary["ratio_A/C"], ">= 0.85", verdict(summary["pass"])],
            ["B predict_array (numpy)", summary["B_predict_array"], args.repeats, summary["ratio_B/C"], "(info)", ""],
            ["C bare forward, whole image", summary["C_bare_whole"], args.repeats, 1.0, "", ""],
            ["D bare forward, same tiles", summary["D_bare_tiles"], args.repeats, summary["ratio_D/C"], "(info)", ""],
        ]
        print(table(rows, ["MP/s", "median", "repeats", "ratio to C", "target", ""]))
        print(f"pipeline vs bare tiles: A/D {summary['ratio_A/D']:.3f}, B/D {summary['ratio_B/D']:.3f}; "
              f"load average before {load_before}, after {loadavg()}")
        path = write_result("predict" + (f"_{args.tag}" if args.tag else ""), {
            "config": {"model": "unet (default)", "image": list(image.shape), "dtype": str(image.dtype),
                       "tile_default": tile, "tile_plan": list(plan.tile_shape), "n_tiles": len(plan.tiles),
                       "computed_pixels_over_image": tile_px / image.size, "batch": bs,
                       "overlap": cfg.predict.overlap, "device": "cpu", "save_tiff": cfg.predict.save_tiff},
            "loadavg_before": load_before, "loadavg_after": loadavg(), "summary": summary,
            "seconds": seconds, "megapixels_per_s": mps, "ratios": ratios,
        })
        print(f"wrote {path}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
