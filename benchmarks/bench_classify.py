"""Issue 4: the default classifier at its default size (``vit``, ViT-Tiny-like, on 64x64 images as
`napari-bioflow init classification` writes: batch 16, ADAMW, default augmentation and normalization), on the real
modality crops of tests/data/classification_2d (4 classes, 120 training images of 36..64 pixels, resized to 64).

    trainer step   images/s from the time between consecutive StepReports (the whole loop: batch reading, resizing
                   and normalizing in the prefetch thread, augmentation, forward, backward, optimizer); the first
                   step of each epoch and the whole first epoch excluded (warm-up)
    bare step      the same model's forward + cross-entropy + backward + ADAMW step on tensors already in memory
    prediction     images/s of `run_class_prediction` over the 40 test files (reading, checks, resizing, batched
                   forward, predictions.csv, metrics and the confusion matrix PNG) and of the bare forward

Runs are interleaved (trainer, bare, predict, bare forward) and repeated; medians and pair-by-pair ratios.
Target: trainer step >= 0.9 x bare step.

    .venv/bin/python benchmarks/bench_classify.py [--repeats 3] [--epochs 3] [--tag X]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, loadavg, median, table, verdict, write_result  # noqa: E402

DATA = REPO / "tests" / "data" / "classification_2d"
PATCH, BATCH = [64, 64], 16
CLOCK = time.perf_counter  # --clock cpu: time.thread_time (CPU seconds of the timing thread), for loaded machines


def make_config(out: Path, epochs: int):
    from napari_bioflow.config import RunConfig

    return RunConfig.model_validate(
        {
            "workflow": "classification",
            "name": "bench_cls",
            "output_dir": str(out),
            "device": "cpu",
            "model": {"name": "vit"},
            "data": {"train_raw": str(DATA / "train"), "patch_size": PATCH, "val_split": 0.2},
            "train": {"epochs": epochs, "batch_size": BATCH, "patience": 0},
        }
    )


def run_trainer(epochs: int) -> dict:
    from napari_bioflow.engine.train import DoneReport, StepReport, Trainer

    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(make_config(Path(tmp), epochs))
        steps, last, ckpt = [], None, None
        for rep in trainer.run():
            now = CLOCK()
            if isinstance(rep, StepReport):
                if last is not None and rep.step > 1 and rep.epoch > 1:
                    steps.append(now - last)
                last = now
            elif isinstance(rep, DoneReport):
                ckpt = rep.checkpoint
            else:
                last = None
        pred = run_predict(ckpt)
    return {"step_seconds": steps, "images_per_s": BATCH / median(steps), **pred}


def run_predict(ckpt: Path) -> dict:
    from napari_bioflow.engine.predict.classification_results import class_test_items, run_class_prediction
    from napari_bioflow.engine.train.checkpoint import load_model

    loaded = load_model(ckpt)
    items = class_test_items(DATA / "test", loaded.config.class_names)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        out = run_class_prediction(loaded, items, Path(tmp))
        seconds = time.perf_counter() - t
    return {
        "predict_seconds": seconds,
        "predict_images_per_s": len(items) / seconds,
        "test_accuracy": out["metrics"]["accuracy"],
    }


def run_bare(steps: int) -> dict:
    import torch

    from napari_bioflow.engine.models import create_model

    torch.manual_seed(0)
    model = create_model("vit", ndim=2, in_channels=1, out_channels=4, img_size=PATCH)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.randn(BATCH, 1, *PATCH), torch.randint(0, 4, (BATCH,))
    dts = []
    for i in range(steps + 2):
        t = CLOCK()
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        if i >= 2:
            dts.append(CLOCK() - t)
    model.eval()
    xs = torch.randn(40, 1, *PATCH)
    with torch.inference_mode():
        model(xs[:4])
        t = time.perf_counter()
        for k in range(0, 40, 4):  # the prediction's batch (predict.batch_size 4)
            torch.softmax(model(xs[k : k + 4]), 1)
        fwd = time.perf_counter() - t
    return {"step_seconds": dts, "images_per_s": BATCH / median(dts), "forward_images_per_s": 40 / fwd}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--tag", default="")
    ap.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="cpu: time steps in CPU seconds of the training thread (time.thread_time), which other jobs on "
        "a shared machine barely change; the prefetch thread's work is then timed apart",
    )
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args(argv)
    global CLOCK
    if args.clock == "cpu":
        CLOCK = time.thread_time
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    steps_per_epoch = -(-96 // BATCH)
    load_before, pairs = loadavg(), []
    for r in range(args.repeats):
        tr = run_trainer(args.epochs)
        bare = run_bare((args.epochs - 1) * (steps_per_epoch - 1))
        pairs.append(
            {
                "trainer": tr,
                "bare": bare,
                "ratio_step": tr["images_per_s"] / bare["images_per_s"],
                "ratio_predict": tr["predict_images_per_s"] / bare["forward_images_per_s"],
                "loadavg": loadavg(),
            }
        )
        print(
            f"repeat {r + 1}: trainer {tr['images_per_s']:.1f} img/s, bare {bare['images_per_s']:.1f} img/s "
            f"(ratio {pairs[-1]['ratio_step']:.3f}); predict {tr['predict_images_per_s']:.1f} img/s, bare forward "
            f"{bare['forward_images_per_s']:.1f} img/s; load {loadavg()}",
            flush=True,
        )
    s = {
        "trainer_images_per_s": median([p["trainer"]["images_per_s"] for p in pairs]),
        "bare_images_per_s": median([p["bare"]["images_per_s"] for p in pairs]),
        "ratio_step_median_of_pairs": median([p["ratio_step"] for p in pairs]),
        "predict_images_per_s": median([p["trainer"]["predict_images_per_s"] for p in pairs]),
        "bare_forward_images_per_s": median([p["bare"]["forward_images_per_s"] for p in pairs]),
        "ratio_predict_median_of_pairs": median([p["ratio_predict"] for p in pairs]),
        "target": ">= 0.9 (trainer step / bare step)",
    }
    s["pass"] = s["ratio_step_median_of_pairs"] >= 0.9
    print(
        table(
            [
                [
                    "trainer step vs bare step (img/s)",
                    s["trainer_images_per_s"],
                    s["bare_images_per_s"],
                    s["ratio_step_median_of_pairs"],
                    ">= 0.9",
                    verdict(s["pass"]),
                ],
                [
                    "prediction vs bare forward (img/s)",
                    s["predict_images_per_s"],
                    s["bare_forward_images_per_s"],
                    s["ratio_predict_median_of_pairs"],
                    "(info)",
                    "",
                ],
            ],
            ["", "pipeline", "bare", "ratio", "target", ""],
        )
    )
    path = write_result(
        "classify" + (f"_{args.tag}" if args.tag else ""),
        {
            "config": {
                "clock": args.clock,
                "threads": args.threads or "default",
                "model": "vit (default options)",
                "patch": PATCH,
                "batch": BATCH,
                "classes": 4,
                "device": "cpu",
                "epochs": args.epochs,
                "data": "tests/data/classification_2d (120 train, 40 test)",
            },
            "loadavg_before": load_before,
            "loadavg_after": loadavg(),
            "summary": s,
            "pairs": pairs,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
