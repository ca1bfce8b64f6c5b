"""Issue 14: how fast and how well untuned configurations learn, on fixed train/val/test splits of real sets.

Sets (all from ../shared/data or tests/data; crops fixed, so every run sees the same pixels):
  bbbc_binary   BBBC007 nuclei, foreground/background: 4 training tiles, 3 validation tiles, 4 test tiles (other
                images; each split holds images of all three acquisitions of the set)
  bbbc_3class   the same tiles, 3 classes (background, boundary, interior: skimage find_boundaries, inner)
  nuclei_3d     the cells3d nuclei volume, foreground: training and validation blocks from x < 128, test from x >= 128
  skin_he       the H&E skin section (RGB, 4x down-sampled), 3 classes from its two drawn regions: left part
                trains, the middle validates, the right part tests
  restoration   the 2D time-lapse, crappified (Gaussian blur + noise) -> clean frame: frames 0-9 train, 12 validates,
                20-23 test (image_to_image; PSNR)
  restoration_bbbc  the BBBC007 tiles of bbbc_binary, crappified the same way -> clean (2D)
  restoration_3d    the nuclei_3d blocks, crappified the same way -> clean (3D, 16x32x32 patches)
  classification tests/data/classification_2d (4 imaging modalities; accuracy on its test folder, which is also
                the validation folder here: no threshold or checkpoint choice is made from it)
  bbbc_patches  32 px BBBC007 crops classified by their centre pixel (background / nucleus edge / interior):
                90 from the training images, 45 from the test images (classification, as above)

Configurations (each run trains for the largest step budget; the test metric is read at 30, 100 and 300 steps of
that run, the trainer paused while the test images are predicted, so the schedule spans the whole run):
  old           the defaults before issue 14: learning rate 1e-3, no schedule, cross-entropy, batches drawn with
                replacement, no weight averaging, argmax labels
  biapy_1e-4, biapy_1e-3   BiaPy-equivalent: its U-Net (the plugin's default model), AdamW at that rate, no schedule,
                cross-entropy, mean/std normalization (over the training set: the plugin has no per-image mode),
                flips and 90-degree rotations only
  new           the current defaults (config/sections.py TrainConfig; data.normalization: the workflow's own)

Reported per set and configuration (mean and spread over seeds): the test metric at each budget, the predicted
foreground fraction against the truth (segmentation sets; with more than two classes also per class, as "classes"),
and the training wall time until the metric first reaches 0.97 of its final value.

    .venv/bin/python benchmarks/bench_quality.py                      # 30/100/300 steps, 3 seeds, 256 px tiles
    .venv/bin/python benchmarks/bench_quality.py --quick              # 30/100 steps, 1 seed, 128 px tiles, 64 px patches
    .venv/bin/python benchmarks/bench_quality.py --sets bbbc_binary --configs old new --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, table, write_result  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
EVERY = 10  # steps per epoch: the test metric is read every 10 steps


# --- the sets ------------------------------------------------------------------------------------------------
def _bbbc(tile: int):
    import tifffile

    raws = sorted((SHARED / "bbbc007_2d" / "images").glob("*.tif"))
    out = []
    for path in raws:
        label = SHARED / "bbbc007_2d" / "labels" / path.name
        out.append((tifffile.imread(path), tifffile.imread(label)))
    crop = lambda pair, y, x: tuple(np.ascontiguousarray(a[y : y + tile, x : x + tile]) for a in pair)  # noqa: E731
    # the 14 images come from three acquisitions (A9: 0-3, f9620: 4-8, f96_17: 9-13); each split draws from all
    # three, on different images (a validation tile from an acquisition never trained on chose thresholds for it)
    train = [crop(out[i], 60, 60) for i in (0, 1, 4, 9)]
    val = [crop(out[i], 60, 60) for i in (2, 5, 10)]
    test = [crop(out[i], 60, 60) for i in (3, 6, 11, 12)]
    return train, val, test


def set_bbbc_binary(tile: int) -> dict:
    train, val, test = _bbbc(tile)
    binary = lambda pairs: [(r, (lab > 0).astype(np.uint8)) for r, lab in pairs]  # noqa: E731
    return {
        "kind": "segmentation",
        "n_classes": 2,
        "ndim": 2,
        "train": binary(train),
        "val": binary(val),
        "test": binary(test),
    }


def set_bbbc_3class(tile: int) -> dict:
    from skimage.segmentation import find_boundaries

    def three(pairs):
        out = []
        for r, lab in pairs:
            cls = (lab > 0).astype(np.uint8) * 2
            cls[find_boundaries(lab, mode="inner")] = 1
            out.append((r, cls))
        return out

    train, val, test = _bbbc(tile)
    return {
        "kind": "segmentation",
        "n_classes": 3,
        "ndim": 2,
        "train": three(train),
        "val": three(val),
        "test": three(test),
    }


def set_nuclei_3d(tile: int) -> dict:
    import tifffile

    raw = tifffile.imread(SHARED / "nuclei_3d" / "nuclei.tif")
    lab = (tifffile.imread(SHARED / "nuclei_3d" / "nuclei_label.tif") > 0).astype(np.uint8)
    z = slice(14, 46)
    block = lambda y, x, side: (raw[z, y : y + side, x : x + side], lab[z, y : y + side, x : x + side])  # noqa: E731
    if tile <= 128:  # quick: two 64 px blocks train, one (overlapping them) validates
        train, val = [block(0, 0, 64), block(64, 0, 64)], [block(0, 32, 64)]
    else:  # the X strip 0-63 trains (4 blocks), 64-127 validates: apart from each other and from the test
        train, val = [block(y, 0, 64) for y in range(0, 256, 64)], [block(64, 64, 64)]
    test = [block(0, 128, 128), block(128, 128, 128)]
    return {
        "kind": "segmentation",
        "n_classes": 2,
        "ndim": 3,
        "patch": [16, 32, 32],
        "train": train,
        "val": val,
        "test": test,
    }


def set_skin_he(tile: int) -> dict:
    import tifffile
    from skimage.draw import polygon

    raw = tifffile.imread(SHARED / "skin_he" / "skin.tif")
    shapes = np.load(SHARED / "skin_he" / "skin_shape.npy", allow_pickle=True)
    lab = np.zeros(raw.shape[:2], np.uint8)
    for k, pts in enumerate(shapes, 1):
        rr, cc = polygon(pts[:, 0], pts[:, 1], lab.shape)
        lab[rr, cc] = k
    f = 4
    raw, lab = raw[::f, ::f], lab[::f, ::f]  # 240 x 320
    train = [(raw[:, :160], lab[:, :160])]
    val = [(raw[:, 160:224], lab[:, 160:224])]
    test = [(raw[:, 224:], lab[:, 224:])]
    return {
        "kind": "segmentation",
        "n_classes": 3,
        "ndim": 2,
        "channels": 3,
        "patch": [64, 64],
        "train": train,
        "val": val,
        "test": test,
    }


def set_restoration(tile: int) -> dict:
    import tifffile

    movie = tifffile.imread(SHARED / "timelapse_2d" / "2D_timelapse.tif").astype(np.float32)
    rng = np.random.default_rng(0)

    def pair(t):
        clean = movie[t, 100 : 100 + tile, 100 : 100 + tile]
        return _crappify(clean, rng), clean

    return {
        "kind": "restoration",
        "ndim": 2,
        "train": [pair(t) for t in range(0, 10, 3)],
        "val": [pair(12)],
        "test": [pair(t) for t in (20, 23)],
    }


def _crappify(clean: np.ndarray, rng) -> np.ndarray:
    """The restoration sets' degradation: Gaussian blur (sigma 1) plus Gaussian noise at 0.16 of the image's std."""
    from scipy.ndimage import gaussian_filter

    clean = clean.astype(np.float32)
    return (gaussian_filter(clean, 1.0) + rng.normal(0, 0.16 * clean.std(), clean.shape)).astype(np.float32)


def set_restoration_bbbc(tile: int) -> dict:
    """BBBC007 nuclei crappified -> clean, on the segmentation sets' tiles (other images for each split)."""
    train, val, test = _bbbc(tile)
    rng = np.random.default_rng(0)
    pairs = lambda split: [(_crappify(raw, rng), raw.astype(np.float32)) for raw, _ in split]  # noqa: E731
    return {"kind": "restoration", "ndim": 2, "train": pairs(train), "val": pairs(val), "test": pairs(test)}


def set_restoration_3d(tile: int) -> dict:
    """The cells3d nuclei volume crappified -> clean (3D), on nuclei_3d's blocks: x < 128 trains and validates, the
    two test blocks at x >= 128 test."""
    spec = set_nuclei_3d(tile)
    rng = np.random.default_rng(0)
    pairs = lambda split: [(_crappify(raw, rng), raw.astype(np.float32)) for raw, _ in spec[split]]  # noqa: E731
    return {"kind": "restoration", "ndim": 3, "patch": spec["patch"], **{k: pairs(k) for k in ("train", "val", "test")}}


def set_classification(tile: int) -> dict:
    root = REPO / "tests" / "data" / "classification_2d"
    return {"kind": "classification", "ndim": 2, "folder": root}


def set_bbbc_patches(tile: int) -> dict:
    """BBBC007 crops classified by their centre pixel: background, nucleus edge (within the thick boundary) or
    nucleus interior; 30 per class from the training images, 15 per class from the test images (PNG folders)."""
    import atexit
    import shutil

    import tifffile
    from skimage.io import imsave
    from skimage.segmentation import find_boundaries

    root = Path(tempfile.mkdtemp(prefix="bbbc_patches_"))
    atexit.register(shutil.rmtree, root, True)
    raws = sorted((SHARED / "bbbc007_2d" / "images").glob("*.tif"))
    rng = np.random.default_rng(0)
    names, half = ("background", "edge", "interior"), 16
    for split, idx, per in (("train", (0, 1, 4, 9), 30), ("test", (3, 6, 11, 12), 15)):
        for c, name in enumerate(names):
            (root / split / name).mkdir(parents=True)
            for n in range(per):
                i = idx[n % len(idx)]
                raw = tifffile.imread(raws[i])
                lab = tifffile.imread(SHARED / "bbbc007_2d" / "labels" / raws[i].name)
                cls = (lab > 0).astype(np.uint8) * 2
                cls[find_boundaries(lab, mode="thick")] = 1
                ys, xs = np.nonzero(cls[half:-half, half:-half] == c)
                k = rng.integers(len(ys))
                y, x = ys[k] + half, xs[k] + half
                imsave(root / split / name / f"{name}_{i}_{n:02d}.png", raw[y - half : y + half, x - half : x + half])
    return {"kind": "classification", "ndim": 2, "folder": root}


SETS = {
    "bbbc_binary": set_bbbc_binary,
    "bbbc_3class": set_bbbc_3class,
    "nuclei_3d": set_nuclei_3d,
    "skin_he": set_skin_he,
    "restoration": set_restoration,
    "restoration_bbbc": set_restoration_bbbc,
    "restoration_3d": set_restoration_3d,
    "classification": set_classification,
    "bbbc_patches": set_bbbc_patches,
}


# --- the configurations ----------------------------------------------------------------------------------------
def _no_augment_but_flips() -> dict:
    from napari_bioflow.config.augment import AugmentConfig

    aug = {k: 0.0 for k in AugmentConfig.model_fields if k.endswith("_prob")}
    return {**aug, "intensity": 0.0, "flips": True, "rotate90": True}


def config_overrides(name: str, kind: str) -> dict:
    seg = kind == "segmentation"
    old = {"scheduler": "none", "sampling": "random", "ema": 0.0, "pick_threshold": False}
    if seg:
        old["loss"] = "ce"
    if name == "old":  # percentile normalization and learning rate 1e-3, the defaults of every workflow then
        return {"train": {**old, "learning_rate": 1e-3}, "data": {"normalization": "percentile"}}
    if name.startswith("biapy_"):
        lr = float(name.split("_")[1])
        return {
            "train": {**old, "learning_rate": lr},
            "data": {"normalization": "meanstd"},
            "augment": _no_augment_but_flips(),
        }
    if name == "new":
        return {}
    if name.startswith("new:"):  # a variant: new:ema=0,data.normalization=meanstd,model.options.norm=batch
        out: dict = {}
        for item in name[4:].split(","):
            key, value = item.split("=")
            section, *inner, field = key.split(".") if "." in key else ("train", key)
            target = out.setdefault(section, {})
            for part in inner:  # model.options.norm=batch
                target = target.setdefault(part, {})
            target[field] = {"true": True, "false": False}.get(value.lower(), value)
        return out
    raise ValueError(name)


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = {**out.get(k, {}), **v} if isinstance(v, dict) else v
    return out


# --- one run ---------------------------------------------------------------------------------------------------
def _test_metric(spec: dict, trainer) -> tuple[float, float | None, float | None, list | None]:
    """(metric, predicted foreground fraction, true fraction, per class [predicted, true] fractions with more than two
    classes) on the test split with the model as trained so far."""
    from napari_bioflow.engine.predict.inference import predict_array
    from napari_bioflow.engine.predict.sliding_window import argmax_labels

    loaded = trainer.loaded_model()
    if spec["kind"] == "segmentation":
        inter = np.zeros(spec["n_classes"])
        union = np.zeros(spec["n_classes"])
        pred_fg = true_fg = total = 0
        pred_c, true_c = np.zeros(spec["n_classes"]), np.zeros(spec["n_classes"])
        for raw, lab in spec["test"]:
            prob = predict_array(loaded, raw, device="cpu")
            pred = argmax_labels(prob, trainer.workflow.state.get("threshold"))
            for c in range(1, spec["n_classes"]):
                p, t = pred == c, lab == c
                inter[c] += np.sum(p & t)
                union[c] += np.sum(p | t)
                pred_c[c], true_c[c] = pred_c[c] + np.sum(p), true_c[c] + np.sum(t)
            pred_fg, true_fg, total = pred_fg + np.sum(pred > 0), true_fg + np.sum(lab > 0), total + lab.size
        iou = float(np.mean(inter[1:] / np.maximum(union[1:], 1)))
        classes = [[float(pred_c[c] / total), float(true_c[c] / total)] for c in range(1, spec["n_classes"])]
        return iou, float(pred_fg / total), float(true_fg / total), classes if len(classes) > 1 else None
    psnrs = []
    norm = trainer.workflow.state["target_normalization"]  # the model predicts normalized targets
    for raw, clean in spec["test"]:
        out = predict_array(loaded, raw, device="cpu")[0] * norm["scale"][0] + norm["offset"][0]
        rng = float(clean.max() - clean.min())
        psnrs.append(10 * np.log10(rng**2 / max(1e-12, float(np.mean((out - clean) ** 2)))))
    return float(np.mean(psnrs)), None, None, None


def run_one(spec: dict, config: str, seed: int, steps: int, patch: int, out_dir: Path) -> dict:
    from napari_bioflow.config import RunConfig
    from napari_bioflow.engine.data.sources import make_sample
    from napari_bioflow.engine.train import EpochReport, Trainer

    kind = spec["kind"]
    ndim = spec["ndim"]
    base = {
        "name": "q_" + "".join(c if c.isalnum() else "_" for c in config) + f"_{seed}",
        "output_dir": str(out_dir),
        "device": "cpu",
        "seed": seed,
        "ndim": ndim,
        "data": {"patch_size": spec.get("patch", [patch] * ndim), "in_channels": spec.get("channels", 1)},
        "train": {"epochs": steps // EVERY, "steps_per_epoch": EVERY, "batch_size": 4, "patience": 0},
    }
    if kind == "segmentation":
        base["n_classes"] = spec["n_classes"]
    elif kind == "restoration":
        base["workflow"] = "image_to_image"
    else:
        base["workflow"] = "classification"
        base["model"] = {"name": "simple_cnn"}
        base["data"] = {
            "train_raw": str(spec["folder"] / "train"),
            "val_raw": str(spec["folder"] / "test"),
            "patch_size": [32, 32],
        }
    cfg = RunConfig.from_dict(_merge(base, config_overrides(config, kind)))
    if kind == "classification":
        trainer = Trainer(cfg)
    else:
        make = lambda pairs, tag: [  # noqa: E731
            make_sample(r, f"{tag}{i}", cfg, label=lab) for i, (r, lab) in enumerate(pairs)
        ]
        trainer = Trainer(cfg, train=make(spec["train"], "train"), val=make(spec["val"], "val"))
    curve, wall = [], 0.0
    for report in trainer.run():
        if isinstance(report, EpochReport):
            wall += report.seconds
            step = report.epoch * EVERY
            if kind == "classification":
                metric, frac, truth, classes = float(report.metrics.get("accuracy", float("nan"))), None, None, None
            else:
                metric, frac, truth, classes = _test_metric(spec, trainer)
            threshold = trainer.workflow.state.get("threshold")
            curve.append(
                {"step": step, "seconds": round(wall, 2), "metric": metric, "fraction": frac, "truth": truth}
                | ({"threshold": threshold} if threshold is not None else {})
                | ({"classes": classes} if classes is not None else {})
            )
    final = curve[-1]["metric"]
    reach = next((c["seconds"] for c in curve if c["metric"] >= 0.97 * final), None)
    return {"config": config, "seed": seed, "curve": curve, "final": final, "seconds_to_97": reach}


def summarize(runs: list[dict], budgets: list[int]) -> dict:
    out: dict = {}
    for b in budgets:
        vals = [next((c["metric"] for c in r["curve"] if c["step"] == b), np.nan) for r in runs]
        out[f"at_{b}"] = [float(np.mean(vals)), float(np.std(vals))]
    last = [r["curve"][-1] for r in runs]
    if last[0]["fraction"] is not None:
        out["fraction"] = float(np.mean([c["fraction"] for c in last]))
        out["truth"] = float(last[0]["truth"])
    if "classes" in last[0]:  # per non-background class: mean predicted and true fraction at the last step
        out["classes"] = np.mean([c["classes"] for c in last], axis=0).tolist()
    out["seconds_to_97"] = float(np.median([r["seconds_to_97"] for r in runs]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="30/100 steps, 1 seed, 128 px tiles, 64 px patches")
    ap.add_argument("--sets", nargs="*", default=list(SETS))
    ap.add_argument("--configs", nargs="*", default=["old", "biapy_1e-4", "biapy_1e-3", "new"])
    ap.add_argument("--seeds", nargs="*", type=int)
    ap.add_argument("--budgets", nargs="*", type=int)
    ap.add_argument("--tile", type=int, help="tile side (default 128 quick, else 256)")
    ap.add_argument(
        "--patch", type=int, help="training patch side of the 2D sets that follow it (default 64 quick, else the tile)"
    )
    ap.add_argument("--name", default=None, help="result file name (default quality or quality_quick)")
    args = ap.parse_args()
    budgets = args.budgets or ([30, 100] if args.quick else [30, 100, 300])
    seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1, 2])
    tile = args.tile or (128 if args.quick else 256)
    patch = args.patch or (64 if args.quick else tile)
    results: dict = {}
    started = time.perf_counter()
    name = args.name or ("quality_quick" if args.quick else "quality")

    def write(results: dict, partial: bool) -> Path:  # after every configuration: a stopped run keeps its figures
        minutes = round((time.perf_counter() - started) / 60, 1)
        info = {"budgets": budgets, "seeds": seeds, "tile": tile, "patch": patch, "minutes": minutes}
        return write_result(name, {**info, "partial": partial, "results": results})

    with tempfile.TemporaryDirectory() as tmp:
        for set_name in args.sets:
            spec = SETS[set_name](tile)
            results[set_name] = {}
            for config in args.configs:
                runs = [run_one(spec, config, s, max(budgets), patch, Path(tmp)) for s in seeds]
                results[set_name][config] = {"summary": summarize(runs, budgets), "runs": runs}
                s = results[set_name][config]["summary"]
                print(set_name, config, dict(s.items()), flush=True)
                write(results, partial=True)
    rows = []
    for set_name, per in results.items():
        for config, r in per.items():
            s = r["summary"]
            cells = [f"{s[f'at_{b}'][0]:.3f} +- {s[f'at_{b}'][1]:.3f}" for b in budgets]
            frac = f"{s['fraction']:.3f} / {s['truth']:.3f}" if "fraction" in s else "-"
            rows.append([set_name, config, *cells, frac, f"{s['seconds_to_97']:.0f}"])
    header = ["set", "config", *[f"{b} steps" for b in budgets], "fg pred/true", "s to 0.97"]
    print(table(rows, header))
    print(f"written {write(results, partial=False)}")


if __name__ == "__main__":
    main()
