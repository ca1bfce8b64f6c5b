"""(d) Training through the Train dock's napari thread worker, with a real viewer open, vs the headless trainer.

Same config as bench_train.py (default 2D U-Net, patch 256x256, batch 4, 1 channel, 2 classes, CPU, shipped bbbc007
sample folders for training and validation). Each run is a fresh subprocess; runs are interleaved (viewer,
headless, viewer, headless, ...) `--repeats` times.

  viewer    napari.Viewer (shown, under Xvfb when there is no display) with one bbbc007 image layer (selected, so
            the dock previews it), the TrainWidget docked, its fields set through the form, and `start()`: the
            trainer runs in its own process (engine/train/child.py), with the preview between epochs computed
            there; the dock's thread worker relays the reports and the GUI updates progress, status and chart on
            every report. Step times are taken in the dock's worker thread as the reports arrive (the time between
            consecutive StepReports, as in bench_train.py); a 10 ms QTimer (PreciseTimer) on the GUI thread
            records its lateness (interval - 10 ms) for the whole training.
  headless  Trainer.run() in the main thread of a process with nothing else loaded.
Targets: viewer step throughput >= 0.95 x headless (median of per-pair ratios); timer lateness p99 < 100 ms.

    .venv/bin/python benchmarks/bench_viewer.py [--repeats 3] [--epochs 3] [--steps 10] [--no-preview]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SAMPLE_2D, loadavg, median, run_config, table, verdict, write_result  # noqa: E402

BATCH, PATCH = 4, 256


def summarize_steps(events: list[tuple[str, int, int, float, float]], steps: int) -> dict:
    """events: (kind, epoch, step, perf_counter, epoch_seconds). Same rules as bench_train.py: steps >= 2 of epochs >= 2."""
    dts, last, epoch_s = [], None, []
    for kind, epoch, step, t, seconds in events:
        if kind == "step":
            if epoch >= 2 and step >= 2 and last is not None:
                dts.append(t - last)
            last = t
        elif kind == "epoch":
            if epoch >= 2:
                epoch_s.append(seconds)
            last = None
    return {
        "step_seconds": dts,
        "step_patches_per_s_median": BATCH / median(dts),
        "step_patches_per_s_mean": BATCH * len(dts) / sum(dts),
        "epoch_seconds": epoch_s,
        "epoch_patches_per_s": BATCH * steps * len(epoch_s) / sum(epoch_s),
    }


# --- children -----------------------------------------------------------------------------------------
def child_headless(out: Path, epochs: int, steps: int) -> dict:
    from napari_bioflow.engine.train import EpochReport, StepReport, Trainer

    events = []
    cfg = run_config(
        "semantic_segmentation",
        "unet",
        out,
        out / "data",
        "bench_train",
        train={"epochs": epochs, "steps_per_epoch": steps},
    )
    for rep in Trainer(cfg).run():
        if isinstance(rep, StepReport):
            events.append(("step", rep.epoch, rep.step, time.perf_counter(), 0.0))
        elif isinstance(rep, EpochReport):
            events.append(("epoch", rep.epoch, 0, time.perf_counter(), rep.seconds))
    return summarize_steps(events, steps)


def child_thread(out: Path, epochs: int, steps: int) -> dict:
    """Headless, but the trainer runs in a plain Python thread (no Qt): what a thread alone costs."""
    import threading

    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(child_headless(out, epochs, steps)))
    worker.start()
    worker.join()
    return result


def child_viewer(out: Path, epochs: int, steps: int, preview: bool, timer_on: bool = True) -> dict:
    import napari
    import tifffile
    from qtpy.QtCore import QEventLoop

    from napari_bioflow.engine.train import EpochReport, StepReport
    from napari_bioflow.widgets import train as train_module
    from napari_bioflow.widgets.preview import PreviewResult
    from napari_bioflow.widgets.train import TrainWidget

    events: list = []
    previews: list = []
    original_job = train_module.training_job

    def timed_job(
        trainer, preview_obj, inputs=None
    ):  # the dock's own job, with a timestamp per report taken in the worker
        for rep in original_job(trainer, preview_obj, inputs):
            now = time.perf_counter()
            if isinstance(rep, StepReport):
                events.append(("step", rep.epoch, rep.step, now, 0.0))
            elif isinstance(rep, EpochReport):
                events.append(("epoch", rep.epoch, 0, now, rep.seconds))
            elif isinstance(rep, PreviewResult):
                previews.append(rep.seconds)
                events.append(("preview", 0, 0, now, rep.seconds))
            yield rep

    train_module.training_job = timed_job
    viewer = napari.Viewer(show=True)
    image = tifffile.imread(SAMPLE_2D / "train" / "raw" / "A9_A9_p10d.tif")
    viewer.add_image(image, name="nuclei")
    widget = TrainWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Train")
    f = widget.form
    widget.source.value = "folders"
    f["data.train_raw"].value, f["data.train_label"].value = (
        str(SAMPLE_2D / "train" / "raw"),
        str(SAMPLE_2D / "train" / "label"),
    )
    widget.validation.value = "folders"
    f["data.val_raw"].value, f["data.val_label"].value = (
        str(SAMPLE_2D / "test" / "raw"),
        str(SAMPLE_2D / "test" / "label"),
    )
    widget.patch_yx.value = PATCH
    f["train.epochs"].value, f["train.steps_per_epoch"].value, f["train.batch_size"].value = epochs, steps, BATCH
    f["train.patience"].value = 0
    f["output_dir"].value, f["device"].value, f["name"].value = str(out), "cpu", "bench_train"
    if not preview:
        widget.preview_ms.value = 0
    app, timer, ticks = settled_app_and_ticker()
    loop = QEventLoop()
    widget.start()
    worker = widget._worker
    if worker is None:
        raise RuntimeError(f"training did not start: {widget.status.value}")
    worker.finished.connect(loop.quit)
    if timer_on:
        timer.start()
    loop.exec_()
    timer.stop()
    cfg_check = widget.trainer.cfg
    assert cfg_check.data.patch_size == [PATCH, PATCH] and cfg_check.train.batch_size == BATCH, cfg_check
    status = widget.status.value
    viewer.close()
    late = np.maximum(np.diff(np.asarray(ticks)) - 0.010, 0) * 1000 if len(ticks) > 1 else np.full(1, np.nan)
    res = summarize_steps([e for e in events if e[0] != "preview"], steps)
    # the worst stalls of the GUI thread, and what the worker was doing around them (seconds since the timer started)
    t0 = ticks[0] if ticks else 0.0
    worst = np.argsort(late)[::-1][:5] if len(ticks) > 1 else []
    res["worst_stalls"] = [{"at_s": round(ticks[i] - t0, 2), "late_ms": round(float(late[i]), 1)} for i in worst]
    res["worker_events"] = [(k, e, st, round(t - t0, 2)) for k, e, st, t, _ in events if k != "step" or st <= 2]
    res.update(
        timer_ticks=len(ticks),
        lateness_ms_p50=float(np.percentile(late, 50)),
        lateness_ms_p99=float(np.percentile(late, 99)),
        lateness_ms_max=float(late.max()),
        preview_seconds=previews,
        status=status,
    )
    return res


def run_child(mode: str, args) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix=f"bench_viewer_{mode}_"))
    try:
        cmd = [
            sys.executable,
            __file__,
            "--child",
            mode,
            str(tmp),
            "--epochs",
            str(args.epochs),
            "--steps",
            str(args.steps),
        ]
        if args.no_preview:
            cmd.append("--no-preview")
        if mode == "viewer-no-timer" or args.no_timer:
            cmd.append("--no-timer")
        cmd[3] = "viewer" if mode.startswith("viewer") else mode
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"{mode} child failed:\n{proc.stderr[-4000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def settled_app_and_ticker():
    """The Qt application once the window has shown and settled, and a 10 ms PreciseTimer (not started) that appends
    each tick's time to `ticks`: its lateness is the event loop's."""
    import napari
    from qtpy.QtCore import Qt, QTimer

    app = napari.qt.get_qapp()
    for _ in range(20):
        app.processEvents()
        time.sleep(0.05)
    ticks: list[float] = []
    timer = QTimer()
    timer.setTimerType(Qt.PreciseTimer)
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    return app, timer, ticks


def ensure_display() -> subprocess.Popen | None:
    """Start an Xvfb server when there is no display (the vispy canvas needs a real X server, not offscreen)."""
    if os.environ.get("DISPLAY") or not shutil.which("Xvfb"):
        return None
    for n in range(90, 110):
        if not Path(f"/tmp/.X11-unix/X{n}").exists() and not Path(f"/tmp/.X{n}-lock").exists():
            proc = subprocess.Popen(
                ["Xvfb", f":{n}", "-screen", "0", "1600x1000x24", "-nolisten", "tcp"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for _ in range(50):
                if Path(f"/tmp/.X11-unix/X{n}").exists():
                    break
                time.sleep(0.1)
            os.environ["DISPLAY"] = f":{n}"
            return proc
    return None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--no-preview", action="store_true", help="preview budget 0 ms (no preview between epochs)")
    ap.add_argument(
        "--no-timer", action="store_true", help="no 10 ms timer in the viewer (does the probe itself cost?)"
    )
    ap.add_argument(
        "--diagnose",
        action="store_true",
        help="per round also run: trainer in a plain thread (no Qt), and the viewer without the 10 ms timer",
    )
    ap.add_argument("--tag", default="")
    ap.add_argument("--child", nargs=2, metavar=("MODE", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        mode, out = args.child
        if mode == "viewer":
            res = child_viewer(Path(out), args.epochs, args.steps, not args.no_preview, not args.no_timer)
        elif mode == "thread":
            res = child_thread(Path(out), args.epochs, args.steps)
        else:
            res = child_headless(Path(out), args.epochs, args.steps)
        print(json.dumps(res))
        return

    xvfb = ensure_display()
    try:
        load_before, pairs = loadavg(), []
        for r in range(args.repeats):
            v = run_child("viewer", args)
            h = run_child("headless", args)
            ratio = v["step_patches_per_s_median"] / h["step_patches_per_s_median"]
            pairs.append(
                {
                    "viewer": v,
                    "headless": h,
                    "ratio_step": ratio,
                    "ratio_epoch": v["epoch_patches_per_s"] / h["epoch_patches_per_s"],
                    "loadavg": loadavg(),
                }
            )
            if args.diagnose:
                for extra in ("thread", "viewer-no-timer"):
                    e = run_child(extra, args)
                    pairs[-1][extra] = e
                    print(
                        f"  {extra}: {e['step_patches_per_s_median']:.3f} p/s, ratio to headless "
                        f"{e['step_patches_per_s_median'] / h['step_patches_per_s_median']:.3f}",
                        flush=True,
                    )
            print(
                f"pair {r + 1}: viewer {v['step_patches_per_s_median']:.3f} p/s (epoch {v['epoch_patches_per_s']:.3f}), "
                f"headless {h['step_patches_per_s_median']:.3f} p/s (epoch {h['epoch_patches_per_s']:.3f}); ratio {ratio:.3f}; "
                f"timer lateness p99 {v['lateness_ms_p99']:.1f} ms (max {v['lateness_ms_max']:.0f}); "
                f"previews {[round(s, 2) for s in v['preview_seconds']]} s; load {loadavg()}",
                flush=True,
            )
        med = lambda f: median([f(p) for p in pairs])  # noqa: E731
        summary = {
            "viewer_step_patches_per_s": med(lambda p: p["viewer"]["step_patches_per_s_median"]),
            "headless_step_patches_per_s": med(lambda p: p["headless"]["step_patches_per_s_median"]),
            "viewer_epoch_patches_per_s": med(lambda p: p["viewer"]["epoch_patches_per_s"]),
            "headless_epoch_patches_per_s": med(lambda p: p["headless"]["epoch_patches_per_s"]),
            "ratio_step_median_of_pairs": med(lambda p: p["ratio_step"]),
            "ratio_epoch_median_of_pairs": med(lambda p: p["ratio_epoch"]),
            "lateness_ms_p99_median": med(lambda p: p["viewer"]["lateness_ms_p99"]),
            "lateness_ms_p99_worst": max(p["viewer"]["lateness_ms_p99"] for p in pairs),
        }
        summary["pass_throughput"] = summary["ratio_step_median_of_pairs"] >= 0.95
        summary["pass_latency"] = summary["lateness_ms_p99_median"] < 100
        rows = [
            [
                "viewer worker, steady step",
                summary["viewer_step_patches_per_s"],
                args.repeats,
                summary["ratio_step_median_of_pairs"],
                ">= 0.95",
                verdict(summary["pass_throughput"]),
            ],
            [
                "viewer worker, whole epoch",
                summary["viewer_epoch_patches_per_s"],
                args.repeats,
                summary["ratio_epoch_median_of_pairs"],
                "(info)",
                "",
            ],
            ["headless, steady step", summary["headless_step_patches_per_s"], args.repeats, 1.0, "", ""],
            ["headless, whole epoch", summary["headless_epoch_patches_per_s"], args.repeats, 1.0, "", ""],
            [
                "10 ms timer lateness p99 (ms)",
                summary["lateness_ms_p99_median"],
                args.repeats,
                "",
                "< 100 ms",
                verdict(summary["pass_latency"]),
            ],
        ]
        print(table(rows, ["", "median", "repeats", "ratio to headless", "target", ""]))
        print(f"load average before {load_before}, after {loadavg()}")
        path = write_result(
            "viewer" + (f"_{args.tag}" if args.tag else ""),
            {
                "config": {
                    "model": "unet (default)",
                    "patch": [PATCH, PATCH],
                    "batch": BATCH,
                    "epochs": args.epochs,
                    "steps_per_epoch": args.steps,
                    "preview": not args.no_preview,
                    "display": os.environ.get("DISPLAY"),
                    "xvfb_started_by_script": xvfb is not None,
                },
                "loadavg_before": load_before,
                "loadavg_after": loadavg(),
                "summary": summary,
                "pairs": pairs,
            },
        )
        print(f"wrote {path}")
    finally:
        if xvfb is not None:
            xvfb.terminate()


if __name__ == "__main__":
    main()
