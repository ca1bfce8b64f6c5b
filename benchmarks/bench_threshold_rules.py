"""Issue 14: which validation data the segmentation threshold should be picked on, scored on the test splits.

The default U-Net's instance norm makes its probabilities depend on what a tile holds (its size, how much
foreground), so a threshold picked on the training-size validation patches need not suit whole images predicted
tile by tile, and one picked on a few whole validation images need not suit other images. This trains the current
defaults on the segmentation sets of bench_quality.py (same splits, 256 px tiles, 64 px patches, 300 steps) and, at
every 10th step, keeps the threshold histograms (engine/train/threshold.py) of the test images, of the whole
validation crops (PatchData.threshold_crops) and of the validation patches. Each rule below then picks a threshold
from its validation histograms, read on the test histogram: mean IoU of the non-background classes and predicted /
true foreground, mean over the seeds at 30, 100 and 300 steps.

  oracle        the best threshold for the test images (within 0.05-0.95, as every rule; an upper bound)
  argmax        0.5 (no threshold picked)
  patches       the validation patches only (the default until 2026-12-06)
  whole         the whole validation images only
  both          patches and whole images together (the default since 2026-12-06)
  whole_tol_X   whole images; of the thresholds within X IoU of the best, the one nearest 0.5
  halfway       halfway between the whole images' pick and 0.5

    .venv/bin/python benchmarks/bench_threshold_rules.py --seeds 0 1 2 --keep /tmp/hists   # about 40 min, 2 cores
    .venv/bin/python benchmarks/bench_threshold_rules.py --histograms /tmp/hists            # re-score kept ones
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_quality as bq  # noqa: E402
from _common import table, write_result  # noqa: E402

BUDGETS = (30, 100, 300)
SETS = ("bbbc_binary", "bbbc_3class", "nuclei_3d", "skin_he")


def picker(hist):
    from napari_bioflow.engine.train.threshold import ThresholdPicker

    p = ThresholdPicker()
    p.hist = np.asarray(hist)
    return p


def on_test(r: dict, threshold: float) -> tuple[float, float]:
    """(mean non-background IoU, predicted / true foreground) of the test images at `threshold`."""
    test = picker(r["test"])
    edges, iou = test.ious()
    k = int(np.argmin(np.abs(edges - threshold)))
    above = test.hist[:, 1:, k:].sum()  # predicted non-background at that threshold
    return float(iou[k]), float(above / test.hist[1:].sum())


def _halfway(r: dict) -> float:
    return (picker(r["whole"]).best()[0] + 0.5) / 2


RULES = {
    "oracle": lambda r: float(picker(r["test"]).best()[0]),
    "argmax": lambda r: 0.5,
    "patches": lambda r: picker(r["patch"]).best()[0],
    "whole": lambda r: picker(r["whole"]).best()[0],
    "both": lambda r: picker(np.add(r["whole"], r["patch"])).best()[0],
    "whole_tol_0.01": lambda r: picker(r["whole"]).best(0.01)[0],
    "whole_tol_0.02": lambda r: picker(r["whole"]).best(0.02)[0],
    "halfway": _halfway,
}


def histograms(set_name: str, seeds: list[int]) -> list[dict]:
    from napari_bioflow.engine.predict.inference import TILE_CAP, predict_array
    from napari_bioflow.engine.train.threshold import ThresholdPicker

    records: list[dict] = []
    plain = bq._test_metric

    def scored(spec, trainer):
        loaded = trainer.loaded_model()
        hists = {}
        for key in ("test", "whole", "patch"):
            hists[key] = ThresholdPicker()
        for raw, lab in spec["test"]:
            hists["test"].update(predict_array(loaded, raw)[None], np.asarray(lab)[None])
        data = trainer.workflow.training_data(trainer.dataset, trainer.cfg, trainer.normalizer)
        for raw, lab in data.threshold_crops(TILE_CAP[trainer.cfg.ndim]):
            hists["whole"].update(predict_array(loaded, raw, channels_last=True)[None], np.asarray(lab)[None])
        for i, start in data.positions:
            s = data.val_sampler.samples[i]
            sl = tuple(slice(a, a + p) for a, p in zip(start, data.patch))
            target = np.asarray(data.val_sampler.read_target(s, sl, None))
            hists["patch"].update(predict_array(loaded, s.raw[sl], channels_last=True)[None], target[None])
        records.append({"seed": trainer.cfg.seed, **{k: v.hist for k, v in hists.items()}})
        return plain(spec, trainer)

    bq._test_metric = scored
    try:
        spec = bq.SETS[set_name](256)
        with tempfile.TemporaryDirectory() as tmp:
            for seed in seeds:
                start = len(records)
                run = bq.run_one(spec, "new", seed, max(BUDGETS), 64, Path(tmp))
                for rec, point in zip(records[start:], run["curve"]):
                    rec["step"] = point["step"]
    finally:
        bq._test_metric = plain
    return records


def score(records: list[dict]) -> dict:
    out = {}
    for name, rule in RULES.items():
        out[name] = {}
        for step in BUDGETS:
            ious, ratios, thresholds = [], [], []
            for r in (r for r in records if r["step"] == step):
                thresholds.append(rule(r))
                iou, ratio = on_test(r, thresholds[-1])
                ious.append(iou)
                ratios.append(ratio)
            out[name][step] = {
                "iou": float(np.mean(ious)),
                "fg_ratio": float(np.mean(ratios)),
                "thresholds": thresholds,
            }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", nargs="*", default=list(SETS))
    ap.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    ap.add_argument("--name", default="threshold_rules")
    ap.add_argument("--histograms", type=Path, help="score the histograms kept in DIR/<set>.json (no training)")
    ap.add_argument("--keep", type=Path, help="keep the histograms in DIR/<set>.json (about 1 MB a set)")
    args = ap.parse_args()
    results = {}
    for s in args.sets:
        if args.histograms:
            records = json.loads((args.histograms / f"{s}.json").read_text())
        else:
            records = histograms(s, args.seeds)
            if args.keep:
                args.keep.mkdir(parents=True, exist_ok=True)
                as_lists = [{k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in r.items()} for r in records]
                (args.keep / f"{s}.json").write_text(json.dumps(as_lists))
        results[s] = score(records)
    rows = []
    for name in RULES:
        cells = [f"{results[s][name][b]['iou']:.3f}" for s in args.sets for b in BUDGETS]
        mean = np.mean([results[s][name][b]["iou"] for s in args.sets for b in BUDGETS])
        fg = [f"{results[s][name][BUDGETS[-1]]['fg_ratio']:.2f}" for s in args.sets]
        rows.append([name, *cells, f"{mean:.4f}", *fg])
    header = ["rule", *[f"{s}@{b}" for s in args.sets for b in BUDGETS], "mean", *[f"fg {s}@300" for s in args.sets]]
    print(table(rows, header))
    print("written", write_result(args.name, {"seeds": args.seeds, "budgets": BUDGETS, "results": results}))


if __name__ == "__main__":
    main()
