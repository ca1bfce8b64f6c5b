"""(g) Does the viewer stall? Event-loop lateness while training from the Train dock, alone and beside a CPU-bound
neighbour process; the clicks that start a prediction and a batch; in-viewer vs headless training speed.

Each run is a fresh subprocess; the runs are interleaved `--repeats` times: viewer, viewer + neighbour, headless.

  viewer    napari.Viewer (shown, under Xvfb when there is no display) with the 2D sample image and its mask, the
            Train dock with its defaults (patch size and validation adapted to the layers) except epochs, steps
            per epoch, CPU and the output folder; Train pressed: the trainer runs in its own process, the dock's
            worker relays its reports, the preview follows every epoch (the dock's default budget), the chart
            and progress update on the GUI thread. A 10 ms QTimer (PreciseTimer) on the GUI thread records its
            lateness (interval - 10 ms) for the whole training. The chart's `add` and the preview's `show` are timed
            on the GUI thread. Then (`--clicks`) the Predict dock's Predict press (the model just trained, the
            sample image) and the Batch dock's Run press (the sample's 2 test images): the time the click handler
            holds the GUI thread, and the timer's lateness until each finishes.
  neighbour the same, with `python -c "while True: pass"` running beside it (the machines are shared).
  headless  the run's saved config (its layers written with it) trained by Trainer.run() in the main thread of a
            process with nothing else loaded: step throughput, as the viewer run's (median time between step
            reports, steps >= 2 of epochs >= 2).
Targets: lateness p99 < 20 ms and max < 100 ms (with and without the neighbour); chart < 30 ms per epoch; click
handlers < 100 ms; viewer step throughput >= 0.95 x headless (median of the per-pair ratios).

    .venv/bin/python benchmarks/bench_gui_lateness.py [--repeats 2] [--epochs 3] [--steps 6] [--clicks]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SAMPLE_2D, loadavg, median, table, verdict, write_result  # noqa: E402
from bench_viewer import ensure_display, settled_app_and_ticker  # noqa: E402

IMAGE = "A9_A9_p10d.tif"


def steps_per_s(events: list[tuple[int, int, float]]) -> float:
    """events: (epoch, step, time). Steps per second over steps >= 2 of epochs >= 2 (the warm-up left out)."""
    dts, last = [], None
    for epoch, step, t in events:
        if epoch >= 2 and step >= 2 and last is not None and last[0] == epoch:
            dts.append(t - last[1])
        last = (epoch, t)
    return 1.0 / median(dts) if dts else float("nan")


def lateness(ticks: list[float]) -> dict:
    late = np.maximum(np.diff(np.asarray(ticks)) - 0.010, 0) * 1000 if len(ticks) > 1 else np.full(1, np.nan)
    return {
        "ticks": len(ticks),
        "p50_ms": float(np.percentile(late, 50)),
        "p99_ms": float(np.percentile(late, 99)),
        "max_ms": float(late.max()),
    }


# --- children -----------------------------------------------------------------------------------------
def child_headless(config: Path, out: Path) -> dict:
    from napari_bioflow.config import RunConfig
    from napari_bioflow.engine.train import StepReport, Trainer

    cfg = RunConfig.load(config)
    cfg.output_dir = out
    events = [(r.epoch, r.step, time.perf_counter()) for r in Trainer(cfg).run() if isinstance(r, StepReport)]
    return {"steps_per_s": steps_per_s(events)}


def child_viewer(out: Path, epochs: int, steps: int, clicks: bool) -> dict:
    import napari
    import tifffile
    from qtpy.QtCore import QEventLoop, QTimer

    from napari_bioflow.engine.train import StepReport
    from napari_bioflow.widgets import preview as preview_module
    from napari_bioflow.widgets import train as train_module
    from napari_bioflow.widgets.train import TrainWidget

    events: list = []
    original_job = train_module.training_job

    def timed_job(trainer, preview=None, inputs=None):  # the dock's own job; a timestamp per step report
        for rep in original_job(trainer, preview, inputs):
            if isinstance(rep, StepReport):
                events.append((rep.epoch, rep.step, time.perf_counter()))
            yield rep

    train_module.training_job = timed_job
    gui_ms: dict[str, list[float]] = {"chart": [], "preview": []}

    def timed(kind, method):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                gui_ms[kind].append((time.perf_counter() - start) * 1000)

        return wrapper

    preview_module.Preview.show = timed("preview", preview_module.Preview.show)
    viewer = napari.Viewer(show=True)
    viewer.add_image(tifffile.imread(SAMPLE_2D / "train" / "raw" / IMAGE), name="nuclei")
    viewer.add_labels(tifffile.imread(SAMPLE_2D / "train" / "label" / IMAGE), name="nuclei mask")
    widget = TrainWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Train")
    widget.chart.add = timed("chart", widget.chart.add)
    f = widget.form
    f["train.epochs"].value, f["train.steps_per_epoch"].value, f["train.patience"].value = epochs, steps, 0
    f["output_dir"].value, f["device"].value = str(out), "cpu"
    app, timer, ticks = settled_app_and_ticker()

    def wait_for(dock) -> None:
        loop = QEventLoop()
        poll = QTimer()
        poll.timeout.connect(lambda: None if dock.running else loop.quit())
        poll.start(50)
        loop.exec()
        poll.stop()

    timer.start()
    start = time.perf_counter()
    widget.train_button.native.click()
    press_ms = (time.perf_counter() - start) * 1000
    if widget._worker is None:
        raise RuntimeError(f"training did not start: {widget.message.value}")
    wait_for(widget)
    timer.stop()
    res = {
        "train_press_ms": press_ms,
        "training": lateness(ticks),
        "steps_per_s": steps_per_s(events),
        "config": str(widget.trainer.experiment.config_path),
        "patch": widget.trainer.cfg.data.patch_size,
        "batch": widget.trainer.cfg.train.batch_size,
        "chart_ms": gui_ms["chart"],
        "preview_show_ms": gui_ms["preview"],
        "previews": len(gui_ms["preview"]),
        "status": widget.status.value,
    }
    if clicks:
        res.update(click_predict_and_batch(viewer, out, timer, ticks, wait_for))
    viewer.close()
    return res


def click_predict_and_batch(viewer, out: Path, timer, ticks: list, wait_for) -> dict:
    from napari_bioflow.widgets.batch import BatchWidget
    from napari_bioflow.widgets.predict import PredictWidget

    res = {}
    predict = PredictWidget(viewer)
    viewer.window.add_dock_widget(predict, name="Predict")
    predict.image.value = viewer.layers["nuclei"]
    predict.form["output_dir"].value, predict.form["device"].value = str(out / "pred"), "cpu"
    batch = BatchWidget(viewer)
    viewer.window.add_dock_widget(batch, name="Batch")
    batch.input.value = SAMPLE_2D / "test" / "raw"
    batch.form["output_dir"].value, batch.form["device"].value = str(out / "batch"), "cpu"
    for name, dock, button in (("predict", predict, predict.predict_button), ("batch", batch, batch.run_button)):
        ticks.clear()
        timer.start()
        start = time.perf_counter()
        button.native.click()
        res[f"{name}_press_ms"] = (time.perf_counter() - start) * 1000
        wait_for(dock)
        timer.stop()
        res[name] = lateness(ticks)
        res[f"{name}_message"] = dock.message.value
    return res


# --- the parent ---------------------------------------------------------------------------------------
def run_child(args_list: list[str], neighbour: bool = False) -> dict:
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if neighbour else None
    try:
        proc = subprocess.run([sys.executable, __file__, "--child", *args_list], capture_output=True, text=True)
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
    if proc.returncode:
        raise RuntimeError(f"child {args_list} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--clicks", action="store_true", help="also press Predict and Run batch after each training")
    ap.add_argument("--tag", default="")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        mode, *rest = args.child
        if mode == "viewer":
            res = child_viewer(Path(rest[0]), args.epochs, args.steps, args.clicks)
        else:
            res = child_headless(Path(rest[0]), Path(rest[1]))
        print(json.dumps(res))
        return

    xvfb = ensure_display()
    tmp = Path(tempfile.mkdtemp(prefix="bench_gui_"))
    try:
        load_before, rounds = loadavg(), []
        common = ["--epochs", str(args.epochs), "--steps", str(args.steps)] + ["--clicks"] * args.clicks
        for r in range(args.repeats):
            alone = run_child(["viewer", str(tmp / f"alone{r}"), *common])
            busy = run_child(["viewer", str(tmp / f"busy{r}"), *common], neighbour=True)
            headless = run_child(["headless", alone["config"], str(tmp / f"headless{r}")])
            ratio = alone["steps_per_s"] / headless["steps_per_s"]
            rounds.append({"alone": alone, "neighbour": busy, "headless": headless, "ratio": ratio, "load": loadavg()})
            print(
                f"round {r + 1}: lateness p99/max alone {alone['training']['p99_ms']:.1f}/"
                f"{alone['training']['max_ms']:.0f} ms, with a neighbour {busy['training']['p99_ms']:.1f}/"
                f"{busy['training']['max_ms']:.0f} ms; chart {max(alone['chart_ms'], default=0):.1f} ms max; "
                f"previews {alone['previews']}; steps/s viewer {alone['steps_per_s']:.3f} headless "
                f"{headless['steps_per_s']:.3f} ratio {ratio:.3f}; load {loadavg()}",
                flush=True,
            )
        med = lambda f: median([f(x) for x in rounds])  # noqa: E731
        worst = lambda f: max(f(x) for x in rounds)  # noqa: E731
        s = {
            "p99_alone_ms": med(lambda x: x["alone"]["training"]["p99_ms"]),
            "max_alone_ms": worst(lambda x: x["alone"]["training"]["max_ms"]),
            "p99_neighbour_ms": med(lambda x: x["neighbour"]["training"]["p99_ms"]),
            "max_neighbour_ms": worst(lambda x: x["neighbour"]["training"]["max_ms"]),
            "chart_ms_max": worst(lambda x: max(x["alone"]["chart_ms"] + x["neighbour"]["chart_ms"], default=0)),
            "preview_show_ms_max": worst(
                lambda x: max(x["alone"]["preview_show_ms"] + x["neighbour"]["preview_show_ms"], default=0)
            ),
            "train_press_ms_max": worst(lambda x: max(x["alone"]["train_press_ms"], x["neighbour"]["train_press_ms"])),
            "ratio_median": med(lambda x: x["ratio"]),
        }
        rows = [
            ["lateness p99, alone (ms)", s["p99_alone_ms"], "< 20", verdict(s["p99_alone_ms"] < 20)],
            ["lateness max, alone (ms)", s["max_alone_ms"], "< 100", verdict(s["max_alone_ms"] < 100)],
            ["lateness p99, neighbour (ms)", s["p99_neighbour_ms"], "< 20", verdict(s["p99_neighbour_ms"] < 20)],
            ["lateness max, neighbour (ms)", s["max_neighbour_ms"], "< 100", verdict(s["max_neighbour_ms"] < 100)],
            ["chart add, max (ms)", s["chart_ms_max"], "< 30", verdict(s["chart_ms_max"] < 30)],
            ["preview show, max (ms)", s["preview_show_ms_max"], "< 100", verdict(s["preview_show_ms_max"] < 100)],
            ["Train press (ms)", s["train_press_ms_max"], "< 100", verdict(s["train_press_ms_max"] < 100)],
            ["viewer / headless steps", s["ratio_median"], ">= 0.95", verdict(s["ratio_median"] >= 0.95)],
        ]
        if args.clicks:
            for name in ("predict", "batch"):
                s[f"{name}_press_ms_max"] = worst(
                    lambda x, n=name: max(x["alone"][f"{n}_press_ms"], x["neighbour"][f"{n}_press_ms"])
                )
                s[f"{name}_max_ms"] = worst(lambda x, n=name: max(x["alone"][n]["max_ms"], x["neighbour"][n]["max_ms"]))
                rows.append(
                    [f"{name} press (ms)", s[f"{name}_press_ms_max"], "< 100", verdict(s[f"{name}_press_ms_max"] < 100)]
                )
                rows.append(
                    [f"{name}: lateness max (ms)", s[f"{name}_max_ms"], "< 100", verdict(s[f"{name}_max_ms"] < 100)]
                )
        print(table(rows, ["", "median/worst", "target", ""]))
        print(f"load average before {load_before}, after {loadavg()}")
        path = write_result(
            "gui_lateness" + (f"_{args.tag}" if args.tag else ""),
            {
                "config": {"epochs": args.epochs, "steps_per_epoch": args.steps, "clicks": args.clicks},
                "loadavg_before": load_before,
                "summary": s,
                "rounds": rounds,
            },
        )
        print(f"wrote {path}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if xvfb is not None:
            xvfb.terminate()


if __name__ == "__main__":
    main()
