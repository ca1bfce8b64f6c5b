"""(b) Tiled prediction throughput (megapixels/s) on a 2048x2048 image, CPU, against the bare forward pass.

Workflows (`--workflow`, `--model`) as in bench_train.py: semantic_segmentation (default, BiaPy's U-Net, issue 2),
image_to_image (U-Net, norm none), self_supervised (masking with `--model mae` (default) or `mae_vit_base`; crappify
with any other model) (issue 3). The checkpoint comes from a 1-step Trainer run on the shipped bbbc007 sample
(weights barely trained: speed does not depend on them). The image is a 2048x2048 uint8 mosaic of the real bbbc007
training images (image to image: degraded as its training raw images are).

Measured, interleaved (A, B, C, D, A, B, C, D, ...) `--repeats` times, each in megapixels of the image per second:
  A  ImagePrediction   the full pipeline used by the CLI and the Predict widget: checks, tile plan, zarr
                       accumulator on disk, tiles batched through the workflow's forward (softmax; the MAE's
                       reconstruction and mask), finalize to a zarr array, the workflow's outputs (labels; the
                       image in intensities; the MAE checks) and their TIFFs
  B  predict_array     the same tiling and blending into a numpy accumulator (training preview path)
  C  bare whole image  model(x) on the whole 1x1x2048x2048 tensor (no tiling), under inference_mode. Not for the
                       MAE: it predicts tiles of its training patch (side by side, as BiaPy does); a whole-image pass
                       would be a different computation (attention over 16384 tokens, quadratic)
  D  bare tiles        model(x) on the same tiles as A/B (same plan, same batch size), inputs already tensors;
                       for the MAE, on the patches of its training size that A/B cut their tiles into
Target: A >= 0.85 x C (U-Nets; D/C shows what tiling costs in compute, A/D what the pipeline around the model
costs); for the MAE, A >= 0.85 x D. Pair by pair, median of the ratios.

    .venv/bin/python benchmarks/bench_predict.py [--workflow W] [--model M] [--repeats 3] [--size 2048]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    DEFAULT_MODEL,
    SAMPLE_2D,
    WORKFLOWS,
    add_clock_options,
    apply_clock_options,
    degrade,
    loadavg,
    median,
    result_name,
    run_config,
    table,
    verdict,
    write_result,
)


def make_checkpoint(workflow: str, model: str, out_dir: Path, data_root: Path) -> Path:
    from napari_bioflow.engine.train import DoneReport, Trainer

    cfg = run_config(workflow, model, out_dir, data_root, "bench_ckpt", train={"epochs": 1, "steps_per_epoch": 1})
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
    ap.add_argument("--workflow", choices=WORKFLOWS, default="semantic_segmentation")
    ap.add_argument("--model", default=None, help="model name (default: unet; mae for self_supervised)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--tag", default="")
    add_clock_options(ap, "process")
    args = ap.parse_args(argv)
    clock, clock_name = apply_clock_options(args, "process")
    model_name = args.model or DEFAULT_MODEL[args.workflow]

    import torch

    from napari_bioflow.engine.predict import inference
    from napari_bioflow.engine.predict.inference import ImagePrediction, predict_array
    from napari_bioflow.engine.predict.sliding_window import _read_tile, plan_tiles, prediction_plan
    from napari_bioflow.engine.train.checkpoint import load_model

    tmp = Path(tempfile.mkdtemp(prefix="bench_predict_"))
    try:
        loaded = load_model(make_checkpoint(args.workflow, model_name, tmp / "ckpt", tmp / "data"))
        cfg, model, wf = loaded.config, loaded.model, loaded.workflow
        image = mosaic(args.size)
        if args.workflow == "image_to_image":
            image = degrade(image, 0)
        mp = image.size / 1e6
        tile, overlap = wf.tiling(cfg, image.shape, model.size_divisor)
        plan = prediction_plan(image.shape, tile, overlap, model.size_divisor, cfg.predict.tta)  # as ImagePrediction
        masking = hasattr(model, "forward_mae")
        if masking:
            # the MAE computes on patches of its training size side by side (whatever tiles the pipeline hands it):
            # D runs it on exactly those patches, batched as a tile of that size would be
            bare_plan = plan_tiles(image.shape, cfg.data.patch_size, 0.0, model.size_divisor)
            bs = inference.tile_batch(cfg, list(cfg.data.patch_size))
        else:
            # the batch the engine uses for this tile (lowered for big tiles where the engine does so)
            bare_plan, bs = (
                plan,
                (inference.tile_batch(cfg, tile) if hasattr(inference, "tile_batch") else cfg.predict.batch_size),
            )
        img_cl = image[..., None]
        tiles = [
            torch.from_numpy(
                np.moveaxis(
                    np.stack(
                        [_read_tile(img_cl, t, image.shape, loaded.normalizer) for t in bare_plan.tiles[k : k + bs]]
                    ),
                    -1,
                    1,
                ).copy()
            )
            for k in range(0, len(bare_plan.tiles), bs)
        ]
        whole = torch.from_numpy(np.asarray(loaded.normalizer(img_cl), np.float32)[None, None, ..., 0].copy())
        tile_px = len(bare_plan.tiles) * int(np.prod(bare_plan.tile_shape))
        print(
            f"{args.workflow}, model {model_name}; image {image.shape}, tile {tile}, overlap {overlap} -> plan "
            f"{len(plan.tiles)} tiles of {plan.tile_shape}; bare tiles: {len(bare_plan.tiles)} of {bare_plan.tile_shape} "
            f"(computed pixels {tile_px / image.size:.3f}x the image), batch {bs}; load {loadavg()}",
            flush=True,
        )

        def run_pipeline(i):
            job = ImagePrediction(loaded, image, "mosaic", tmp / f"out{i}", "mosaic", "cpu")
            t = clock()
            job.run()
            job.cleanup()
            return clock() - t

        def run_array(_):
            t = clock()
            predict_array(loaded, image)
            return clock() - t

        def run_whole(_):
            t = clock()
            with torch.inference_mode():
                model(whole)
            return clock() - t

        def run_tiles(_):
            t = clock()
            with torch.inference_mode():
                for x in tiles:
                    model(x)
            return clock() - t

        model.eval()
        runs = {
            "A_image_prediction": run_pipeline,
            "B_predict_array": run_array,
            "C_bare_whole": run_whole,
            "D_bare_tiles": run_tiles,
        }
        if masking:
            del runs["C_bare_whole"]
        else:
            run_whole(-1)  # warm-up (allocator, kernels)
        run_tiles(-1)
        load_before = loadavg()
        seconds = {k: [] for k in runs}
        for r in range(args.repeats):
            for k, fn in runs.items():
                seconds[k].append(fn(r))
                shutil.rmtree(tmp / f"out{r}", ignore_errors=True)
            print(
                f"round {r + 1}: "
                + ", ".join(f"{k} {mp / seconds[k][-1]:.3f} MP/s" for k in runs)
                + f"; load {loadavg()}",
                flush=True,
            )

        mps = {k: [mp / s for s in v] for k, v in seconds.items()}
        ratio = lambda a, b: [x / y for x, y in zip(mps[a], mps[b])]  # noqa: E731
        ratios = {"A/D": ratio("A_image_prediction", "D_bare_tiles"), "B/D": ratio("B_predict_array", "D_bare_tiles")}
        if not masking:
            ratios.update(
                {
                    "A/C": ratio("A_image_prediction", "C_bare_whole"),
                    "B/C": ratio("B_predict_array", "C_bare_whole"),
                    "D/C": ratio("D_bare_tiles", "C_bare_whole"),
                }
            )
        summary = {k: median(v) for k, v in mps.items()}
        summary.update({f"ratio_{k}": median(v) for k, v in ratios.items()})
        key, bare = ("A/D", "D") if masking else ("A/C", "C")
        summary["pass"] = summary[f"ratio_{key}"] >= 0.85
        summary["target"] = (
            f">= 0.85 (ImagePrediction / bare forward on {'the same tiles' if masking else 'the whole image'})"
        )
        ref = lambda k: summary[f"ratio_{k}/{bare}"] if k != bare else 1.0  # noqa: E731
        rows = [
            [
                "A ImagePrediction (zarr, finalize, outputs, TIFF)",
                summary["A_image_prediction"],
                args.repeats,
                ref("A"),
                ">= 0.85",
                verdict(summary["pass"]),
            ],
            ["B predict_array (numpy)", summary["B_predict_array"], args.repeats, ref("B"), "(info)", ""],
        ]
        if not masking:
            rows.append(["C bare forward, whole image", summary["C_bare_whole"], args.repeats, 1.0, "", ""])
        rows.append(
            [
                "D bare forward, same tiles",
                summary["D_bare_tiles"],
                args.repeats,
                ref("D"),
                "" if masking else "(info)",
                "",
            ]
        )
        print(table(rows, ["MP/s", "median", "repeats", f"ratio to {bare}", "target", ""]))
        print(
            f"pipeline vs bare tiles: A/D {summary['ratio_A/D']:.3f}, B/D {summary['ratio_B/D']:.3f}; "
            f"load average before {load_before}, after {loadavg()}"
        )
        name = result_name("predict", args.workflow, model_name)
        path = write_result(
            name + (f"_{args.tag}" if args.tag else ""),
            {
                "config": {
                    "workflow": args.workflow,
                    "model": model_name,
                    "image": list(image.shape),
                    "dtype": str(image.dtype),
                    "tile_default": tile,
                    "tile_plan": list(plan.tile_shape),
                    "n_tiles": len(plan.tiles),
                    "bare_tile": list(bare_plan.tile_shape),
                    "bare_n_tiles": len(bare_plan.tiles),
                    "computed_pixels_over_image": tile_px / image.size,
                    "batch": bs,
                    "overlap": overlap,
                    "device": "cpu",
                    "save_tiff": cfg.predict.save_tiff,
                    "clock": clock_name,
                    "torch_threads": torch.get_num_threads(),
                },
                "loadavg_before": load_before,
                "loadavg_after": loadavg(),
                "summary": summary,
                "seconds": seconds,
                "megapixels_per_s": mps,
                "ratios": ratios,
            },
        )
        print(f"wrote {path}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
