"""(a) Training throughput through the whole Trainer vs the bare training step of the same model and loss.

Workflows (`--workflow`, `--model`), all 1 channel, patch 256x256, batch 4, CPU, ADAMW, default augmentation and
percentile normalization, on the shipped bbbc007 sample (8 training images of 400x400 / 450x450 read from TIFF;
the 2 test images are the validation set):
  semantic_segmentation (default)  BiaPy's default U-Net, 2 classes, cross-entropy (issue 2)
  image_to_image                   U-Net (norm none, the workflow's default), L1; raw = the real image blurred and
                                   noised as the tests do, target = the real image (issue 3)
  self_supervised                  masking pretext: `--model mae` (CPU-sized ViT MAE, default) or `mae_vit_base`
                                   (BiaPy's ViT-B MAE), MSE on the hidden tokens; any other model: crappify
                                   (issue 3)

Measured, interleaved `--repeats` times in pairs whose order alternates (trainer, bare; bare, trainer; ...):
  trainer step   patches/s from the time between consecutive StepReports (the whole loop: waiting for the
                 prefetched batch, tensor conversion, augmentation, the workflow's make_pair (degradation),
                 forward, backward, optimizer step, report); the first step of each epoch (prefetch start-up)
                 and the first `--skip-epochs` epochs (warm-up) are excluded.
  trainer epoch  patches/s over whole epochs (EpochReport.seconds: includes validation on 8 patches,
                 checkpoint writing, CSV log; skipped epochs excluded).
  bare step      the same model (built as the trainer builds it, with the workflow's model defaults) + the
                 workflow's own training loss (`Workflow.training_loss`: for the MAE, its forward_mae with the
                 mask it draws and the MSE on the hidden tokens) + backward + ADAMW step on tensors already in
                 memory, timed per step after `--bare-warmup` (2) untimed steps.
Target: trainer step >= 0.95 x bare step for semantic segmentation (issue 2), >= 0.9 for the others (issue 3),
pair by pair, then the median of the ratios.

    .venv/bin/python benchmarks/bench_train.py [--workflow W] [--model M] [--repeats 4] [--epochs 3] [--steps 10]
                                               [--set augment.elastic_prob=0.5 ...]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    BATCH,
    DEFAULT_MODEL,
    PATCH,
    WORKFLOWS,
    add_clock_options,
    apply_clock_options,
    loadavg,
    median,
    result_name,
    run_config,
    table,
    verdict,
    write_result,
)

TARGET = {"semantic_segmentation": 0.95, "image_to_image": 0.9, "self_supervised": 0.9}
clock = time.perf_counter  # --clock cpu: time.thread_time (the training loop's own CPU seconds)


def run_trainer(make_cfg, epochs: int, steps: int, skip_epochs: int = 1) -> dict:
    from napari_bioflow.engine.train import EpochReport, StepReport, Trainer

    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        trainer = Trainer(make_cfg(Path(tmp), epochs, steps))
        step_dt, epoch_s = [], []
        last = None
        t_total = time.perf_counter()
        for rep in trainer.run():
            now = clock()
            if isinstance(rep, StepReport):
                if rep.epoch > skip_epochs and rep.step >= 2 and last is not None:
                    step_dt.append(now - last)
                last = now
            elif isinstance(rep, EpochReport):
                if rep.epoch > skip_epochs:
                    epoch_s.append(rep.seconds)
                last = None
        total = time.perf_counter() - t_total
        # what the prefetch thread does per step (read, normalize, stack a batch), timed here on its own: it is
        # hidden behind the step as long as it is well below it; and the augmentation, which the loop does
        import torch

        data = trainer.workflow.training_data(trainer.dataset, trainer.cfg, trainer.normalizer)
        gen = torch.Generator().manual_seed(0)
        batch_s, augment_s = [], []
        for _ in range(8):
            t = clock()
            xb, yb = data.batch(BATCH)
            batch_s.append(clock() - t)
            t = clock()
            if trainer.cfg.augment.enable:
                trainer.workflow.augment(torch.from_numpy(xb), torch.from_numpy(yb), trainer.cfg, gen)
            augment_s.append(clock() - t)
    return {
        "batch_production_seconds_median": median(batch_s),
        "augmentation_seconds_median": median(augment_s),
        "step_seconds": step_dt,
        "step_patches_per_s_median": BATCH / median(step_dt),
        "step_patches_per_s_mean": BATCH * len(step_dt) / sum(step_dt),
        "epoch_seconds": epoch_s,
        "epoch_patches_per_s": BATCH * steps * len(epoch_s) / sum(epoch_s),
        "run_seconds_total": total,
    }


def run_bare(cfg, steps: int, seed: int = 0, warmup: int = 2) -> dict:
    """The workflow's model and training loss, ADAMW, on tensors in memory (no data, augmentation or reports)."""
    import torch

    from napari_bioflow.engine.models import create_model
    from napari_bioflow.engine.workflows import get_workflow
    from napari_bioflow.engine.workflows.self_supervised import crappify

    torch.manual_seed(seed)
    wf = get_workflow(cfg)
    model = create_model(
        cfg.model.name,
        ndim=cfg.ndim,
        in_channels=cfg.data.in_channels,
        out_channels=wf.out_channels(cfg),
        **{**wf.model_defaults(cfg), **cfg.model.options},
    )
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.learning_rate, weight_decay=cfg.train.weight_decay)
    loss_fn = wf.loss(cfg)
    x = torch.rand(BATCH, cfg.data.in_channels, PATCH, PATCH)
    if cfg.workflow == "semantic_segmentation":
        y = torch.randint(0, cfg.n_classes, (BATCH, PATCH, PATCH))
    elif cfg.workflow == "image_to_image":
        y = torch.rand(BATCH, wf.out_channels(cfg), PATCH, PATCH)
    elif cfg.self_supervised.pretext == "masking":
        y = x  # the MAE masks its own input; make_pair returns (x, x)
    else:
        x, y = crappify(x, cfg.self_supervised.noise, cfg.self_supervised.downsample_area), x

    def step():
        opt.zero_grad(set_to_none=True)
        loss = wf.training_loss(model, x, y, loss_fn)
        loss.backward()
        opt.step()
        return float(loss.detach())

    for _ in range(warmup):
        step()
    dts = []
    for _ in range(steps):
        t = clock()
        step()
        dts.append(clock() - t)
    return {
        "step_seconds": dts,
        "step_patches_per_s_median": BATCH / median(dts),
        "step_patches_per_s_mean": BATCH * len(dts) / sum(dts),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workflow", choices=WORKFLOWS, default="semantic_segmentation")
    ap.add_argument(
        "--model",
        default=None,
        help="model name (default: unet; mae for self_supervised; mae_vit_base is BiaPy's ViT-B MAE)",
    )
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10, help="train.steps_per_epoch")
    ap.add_argument("--skip-epochs", type=int, default=1, help="warm-up epochs left out of the step and epoch figures")
    ap.add_argument("--bare-steps", type=int, default=20)
    ap.add_argument("--bare-warmup", type=int, default=2, help="untimed bare steps first")
    ap.add_argument("--tag", default="", help="suffix of the result file name (e.g. before/after a change)")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="config override of the trainer's runs, e.g. augment.elastic_prob=0.5 (repeatable)",
    )
    add_clock_options(ap, "thread")
    args = ap.parse_args(argv)
    global clock
    clock, clock_name = apply_clock_options(args, "thread")
    model = args.model or DEFAULT_MODEL[args.workflow]
    target = TARGET[args.workflow]
    if args.epochs <= args.skip_epochs or args.steps < 2:
        ap.error(
            "--epochs must exceed --skip-epochs, and --steps be at least 2 (the first step of an epoch is left out)"
        )

    import torch

    from napari_bioflow.config import apply_override

    overrides: dict = {}
    for item in args.set:
        apply_override(overrides, item)
    data_root = Path(tempfile.mkdtemp(prefix="bench_train_data_"))

    def make_cfg(out, epochs, steps):
        return run_config(
            args.workflow,
            model,
            out,
            data_root,
            "bench_train",  # noqa: E731
            **{**overrides, "train": {**overrides.get("train", {}), "epochs": epochs, "steps_per_epoch": steps}},
        )

    cfg = make_cfg(data_root / "unused", args.epochs, args.steps)
    print(
        f"{args.workflow}, model {model}"
        + (f", pretext {cfg.self_supervised.pretext}" if args.workflow == "self_supervised" else "")
        + f"; load {loadavg()}",
        flush=True,
    )
    load_before = loadavg()
    pairs = []
    try:
        for r in range(args.repeats):
            # alternate the order inside pairs (AB, BA, AB, ...) so a drifting machine load favours neither side
            if r % 2 == 0:
                tr = run_trainer(make_cfg, args.epochs, args.steps, args.skip_epochs)
                bare = run_bare(cfg, args.bare_steps, warmup=args.bare_warmup)
            else:
                bare = run_bare(cfg, args.bare_steps, warmup=args.bare_warmup)
                tr = run_trainer(make_cfg, args.epochs, args.steps, args.skip_epochs)
            ratio = tr["step_patches_per_s_median"] / bare["step_patches_per_s_median"]
            pairs.append(
                {
                    "order": "trainer, bare" if r % 2 == 0 else "bare, trainer",
                    "trainer": tr,
                    "bare": bare,
                    "ratio_step": ratio,
                    "ratio_epoch": tr["epoch_patches_per_s"] / bare["step_patches_per_s_median"],
                    "loadavg": loadavg(),
                }
            )
            print(
                f"pair {r + 1}: trainer step {tr['step_patches_per_s_median']:.3f} p/s (mean {tr['step_patches_per_s_mean']:.3f}), "
                f"epoch {tr['epoch_patches_per_s']:.3f} p/s; bare {bare['step_patches_per_s_median']:.3f} p/s; "
                f"ratio {ratio:.3f}; load {loadavg()}",
                flush=True,
            )
    finally:
        import shutil

        shutil.rmtree(data_root, ignore_errors=True)

    med = lambda key, sub=None: median([p[key][sub] if sub else p[key] for p in pairs])  # noqa: E731
    summary = {
        "trainer_step_patches_per_s": med("trainer", "step_patches_per_s_median"),
        "trainer_step_patches_per_s_mean": med("trainer", "step_patches_per_s_mean"),
        "trainer_epoch_patches_per_s": med("trainer", "epoch_patches_per_s"),
        "bare_step_patches_per_s": med("bare", "step_patches_per_s_median"),
        "batch_production_ms": 1e3 * med("trainer", "batch_production_seconds_median"),
        "augmentation_ms": 1e3 * med("trainer", "augmentation_seconds_median"),
        "ratio_step_median_of_pairs": med("ratio_step"),
        "ratio_epoch_median_of_pairs": med("ratio_epoch"),
        "target": f">= {target} (trainer step / bare step)",
    }
    summary["pass"] = summary["ratio_step_median_of_pairs"] >= target
    rows = [
        [
            "trainer, steady step (median)",
            summary["trainer_step_patches_per_s"],
            args.repeats,
            summary["ratio_step_median_of_pairs"],
            f">= {target}",
            verdict(summary["pass"]),
        ],
        [
            "trainer, whole epoch (val+ckpt" + (", wall clock)" if clock_name != "wall" else ")"),
            summary["trainer_epoch_patches_per_s"],
            args.repeats,
            summary["ratio_epoch_median_of_pairs"],
            "(info)",
            "",
        ],
        ["bare step (model + workflow loss + AdamW)", summary["bare_step_patches_per_s"], args.repeats, 1.0, "", ""],
    ]
    print(table(rows, ["patches/s", "median", "repeats", "ratio to bare", "target", ""]))
    print(
        f"batch production (prefetch thread) {summary['batch_production_ms']:.1f} ms per batch vs a bare step of "
        f"{1e3 * BATCH / summary['bare_step_patches_per_s']:.0f} ms; {clock_name} clock"
    )
    print(f"augmentation (in the training loop) {summary['augmentation_ms']:.1f} ms per batch")
    print(f"load average before {load_before}, after {loadavg()}; torch threads {torch.get_num_threads()}")
    name = result_name("train", args.workflow, model)
    path = write_result(
        name + (f"_{args.tag}" if args.tag else ""),
        {
            "config": {
                "workflow": args.workflow,
                "model": model,
                "model_options": cfg.model.options,
                "pretext": cfg.self_supervised.pretext if args.workflow == "self_supervised" else None,
                "loss": cfg.train.loss,
                "patch": [PATCH, PATCH],
                "batch": BATCH,
                "channels": 1,
                "device": "cpu",
                "epochs": args.epochs,
                "steps_per_epoch": args.steps,
                "skip_epochs": args.skip_epochs,
                "set": args.set,
                "bare_steps": args.bare_steps,
                "bare_warmup": args.bare_warmup,
                "clock": clock_name,
                "torch_threads": torch.get_num_threads(),
                "data": "shipped bbbc007 sample: 8 train TIFFs, 2 validation TIFFs"
                + (
                    " (raw degraded: blur 1 + noise 0.16 x max; target the real image)"
                    if args.workflow == "image_to_image"
                    else ""
                ),
            },
            "loadavg_before": load_before,
            "loadavg_after": loadavg(),
            "summary": summary,
            "pairs": pairs,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
