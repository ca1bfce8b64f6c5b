"""(a) Training throughput of the default 2D U-Net through the whole Trainer vs the bare training step.

Config: BiaPy's default U-Net (create_model("unet")), 1 channel, 2 classes, patch 256x256, batch 4, CPU, ADAMW,
cross-entropy, default augmentation, percentile normalization, on the shipped bbbc007 sample (8 training images
of 400x400 / 450x450 read from TIFF; the 2 test images are the validation set).

Measured, interleaved `--repeats` times in pairs whose order alternates (trainer, bare; bare, trainer; ...):
  trainer step   patches/s from the time between consecutive StepReports (the whole loop: waiting for the
                 prefetched batch, tensor conversion, augmentation, forward, backward, optimizer step, report);
                 the first step of each epoch (prefetch start-up) and the first epoch (warm-up) are excluded.
  trainer epoch  patches/s over whole epochs (EpochReport.seconds: includes validation on 8 patches,
                 checkpoint writing, CSV log; epoch 1 excluded).
  bare step      the same model's forward + cross-entropy + backward + ADAMW step on tensors already in
                 memory, timed per step after 2 warm-up steps.
Target: trainer step >= 0.95 x bare step (pair by pair, then the median of the ratios).

    .venv/bin/python benchmarks/bench_train.py [--repeats 4] [--epochs 3] [--steps 10]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SAMPLE_2D, loadavg, median, table, verdict, write_result  # noqa: E402

BATCH, PATCH = 4, 256


def make_config(out_dir: Path, epochs: int, steps: int, **train):
    from napari_bioflow.config import RunConfig

    return RunConfig.model_validate({
        "name": "bench_train", "output_dir": str(out_dir), "device": "cpu", "n_classes": 2,
        "data": {"train_raw": str(SAMPLE_2D / "train" / "raw"), "train_label": str(SAMPLE_2D / "train" / "label"),
                 "val_raw": str(SAMPLE_2D / "test" / "raw"), "val_label": str(SAMPLE_2D / "test" / "label"),
                 "patch_size": [PATCH, PATCH]},
        "train": {"epochs": epochs, "steps_per_epoch": steps, "batch_size": BATCH, "patience": 0, **train},
    })


def run_trainer(epochs: int, steps: int) -> dict:
    from napari_bioflow.engine.train import EpochReport, StepReport, Trainer

    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        trainer = Trainer(make_config(Path(tmp), epochs, steps))
        step_dt, epoch_s = [], []
        last = None
        t_total = time.perf_counter()
        for rep in trainer.run():
            now = time.perf_counter()
            if isinstance(rep, StepReport):
                if rep.epoch >= 2 and rep.step >= 2 and last is not None:
                    step_dt.append(now - last)
                last = now
            elif isinstance(rep, EpochReport):
                if rep.epoch >= 2:
                    epoch_s.append(rep.seconds)
                last = None
        total = time.perf_counter() - t_total
    return {
        "step_seconds": step_dt,
        "step_patches_per_s_median": BATCH / median(step_dt),
        "step_patches_per_s_mean": BATCH * len(step_dt) / sum(step_dt),
        "epoch_seconds": epoch_s,
        "epoch_patches_per_s": BATCH * steps * len(epoch_s) / sum(epoch_s),
        "run_seconds_total": total,
    }


def run_bare(steps: int, seed: int = 0) -> dict:
    import torch
    import torch.nn.functional as F

    from napari_bioflow.engine.models import create_model

    torch.manual_seed(seed)
    model = create_model("unet", ndim=2, in_channels=1, out_channels=2)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.rand(BATCH, 1, PATCH, PATCH)
    y = torch.randint(0, 2, (BATCH, PATCH, PATCH))

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return float(loss.detach())

    for _ in range(2):
        step()
    dts = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        dts.append(time.perf_counter() - t)
    return {"step_seconds": dts, "step_patches_per_s_median": BATCH / median(dts),
            "step_patches_per_s_mean": BATCH * len(dts) / sum(dts)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10, help="train.steps_per_epoch")
    ap.add_argument("--bare-steps", type=int, default=20)
    ap.add_argument("--tag", default="", help="suffix of the result file name (e.g. before/after a change)")
    args = ap.parse_args(argv)

    import torch

    load_before = loadavg()
    pairs = []
    for r in range(args.repeats):
        # alternate the order inside pairs (AB, BA, AB, ...) so a drifting machine load favours neither side
        if r % 2 == 0:
            tr = run_trainer(args.epochs, args.steps)
            bare = run_bare(args.bare_steps)
        else:
            bare = run_bare(args.bare_steps)
            tr = run_trainer(args.epochs, args.steps)
        ratio = tr["step_patches_per_s_median"] / bare["step_patches_per_s_median"]
        pairs.append({"order": "trainer, bare" if r % 2 == 0 else "bare, trainer", "trainer": tr, "bare": bare, "ratio_step": ratio,
                      "ratio_epoch": tr["epoch_patches_per_s"] / bare["step_patches_per_s_median"], "loadavg": loadavg()})
        print(f"pair {r + 1}: trainer step {tr['step_patches_per_s_median']:.3f} p/s (mean {tr['step_patches_per_s_mean']:.3f}), "
              f"epoch {tr['epoch_patches_per_s']:.3f} p/s; bare {bare['step_patches_per_s_median']:.3f} p/s; "
              f"ratio {ratio:.3f}; load {loadavg()}", flush=True)

    med = lambda key, sub=None: median([p[key][sub] if sub else p[key] for p in pairs])  # noqa: E731
    summary = {
        "trainer_step_patches_per_s": med("trainer", "step_patches_per_s_median"),
        "trainer_step_patches_per_s_mean": med("trainer", "step_patches_per_s_mean"),
        "trainer_epoch_patches_per_s": med("trainer", "epoch_patches_per_s"),
        "bare_step_patches_per_s": med("bare", "step_patches_per_s_median"),
        "ratio_step_median_of_pairs": med("ratio_step"),
        "ratio_epoch_median_of_pairs": med("ratio_epoch"),
        "target": ">= 0.95 (trainer step / bare step)",
    }
    summary["pass"] = summary["ratio_step_median_of_pairs"] >= 0.95
    rows = [
        ["trainer, steady step (median)", summary["trainer_step_patches_per_s"], args.repeats, summary["ratio_step_median_of_pairs"], ">= 0.95", verdict(summary["pass"])],
        ["trainer, whole epoch (val+ckpt)", summary["trainer_epoch_patches_per_s"], args.repeats, summary["ratio_epoch_median_of_pairs"], "(info)", ""],
        ["bare fwd+bwd+AdamW step", summary["bare_step_patches_per_s"], args.repeats, 1.0, "", ""],
    ]
    print(table(rows, ["patches/s", "median", "repeats", "ratio to bare", "target", ""]))
    print(f"load average before {load_before}, after {loadavg()}; torch threads {torch.get_num_threads()}")
    path = write_result("train" + (f"_{args.tag}" if args.tag else ""), {
        "config": {"model": "unet (default, BiaPy-equal)", "patch": [PATCH, PATCH], "batch": BATCH, "classes": 2,
                   "channels": 1, "device": "cpu", "epochs": args.epochs, "steps_per_epoch": args.steps,
                   "data": "shipped bbbc007 sample: 8 train TIFFs, 2 validation TIFFs"},
        "loadavg_before": load_before, "loadavg_after": loadavg(), "summary": summary, "pairs": pairs,
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
