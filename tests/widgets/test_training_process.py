"""Training from the Train dock runs in its own process (engine/train/child.py): another pid, Cancel ends it within
a second (waited for with a generous timeout, not timed), a killed child is one sentence in the dock and napari
lives on, and the process trains exactly as the headless trainer does."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
import tifffile
from helpers import BBBC, TINY_MODEL, dock

from napari_bioflow.engine.train.child import NICE
from napari_bioflow.widgets.train import TrainWidget


@pytest.fixture(scope="module")
def crop():
    name = "A9_A9_p10d.tif"
    return (
        tifffile.imread(BBBC / "train" / "raw" / name)[:128, :128],
        tifffile.imread(BBBC / "train" / "label" / name)[:128, :128],
    )


def train_dock(viewer, crop, out, epochs: int = 1, steps: int = 2) -> TrainWidget:
    viewer.add_image(crop[0], name="nuclei")
    viewer.add_labels(crop[1], name="nuclei mask")
    widget = dock(viewer, TrainWidget(viewer))
    f = widget.form
    widget.patch_yx.value = 64
    widget.feature_maps.value = ", ".join(map(str, TINY_MODEL["feature_maps"]))
    f["train.epochs"].value, f["train.steps_per_epoch"].value, f["train.batch_size"].value = epochs, steps, 2
    f["train.patience"].value = 0
    f["output_dir"].value, f["device"].value, f["seed"].value = str(out), "cpu", 0
    return widget


def started(qtbot, widget) -> int:
    """The child's pid once it is training (a step reported)."""
    widget.train_button.native.click()
    qtbot.waitUntil(lambda: widget.progress.value >= 1, timeout=120_000)
    return widget.trainer.pid


def test_training_runs_in_a_child_process_that_exits_with_the_run(make_napari_viewer, wait_idle, tmp_path, crop):
    viewer = make_napari_viewer()
    widget = train_dock(viewer, crop, tmp_path)
    widget.start()
    wait_idle(widget, 120)
    process = widget.trainer.process
    assert widget.trainer.pid not in (None, os.getpid()) and process.returncode == 0  # gone: its memory too
    assert widget.result.reason == "finished" and widget.result.checkpoint.is_file()
    assert widget.trainer.experiment.run_name == widget.result.checkpoint.name.split("-checkpoint")[0]


def test_cancel_ends_the_child_within_a_second(make_napari_viewer, qtbot, tmp_path, crop):
    viewer = make_napari_viewer()
    widget = train_dock(viewer, crop, tmp_path, epochs=10_000, steps=4)
    pid = started(qtbot, widget)
    # the child trains at a lower CPU priority (engine/train/child.py NICE), so the GUI thread is not kept waiting
    assert os.getpriority(os.PRIO_PROCESS, pid) == min(19, os.getpriority(os.PRIO_PROCESS, 0) + NICE)
    qtbot.waitUntil(lambda: len(widget.chart.epochs) >= 1, timeout=120_000)  # a checkpoint to keep
    widget.cancel_button.native.click()
    qtbot.waitUntil(lambda: not widget.running, timeout=5_000)  # generous: the child is ended after 0.8 s at most
    assert widget.trainer.process.poll() is not None
    assert widget.result.reason == "cancelled" and widget.result.checkpoint.is_file()
    assert widget.train_button.enabled and not widget.cancel_button.enabled


def test_a_killed_child_is_reported_in_the_dock_and_napari_lives_on(make_napari_viewer, qtbot, tmp_path, crop):
    viewer = make_napari_viewer()
    widget = train_dock(viewer, crop, tmp_path, epochs=10_000, steps=4)
    pid = started(qtbot, widget)
    os.kill(pid, signal.SIGKILL)  # as the system's out-of-memory killer would
    qtbot.waitUntil(lambda: not widget.running, timeout=30_000)
    assert widget.status.value == "failed"
    assert "Training stopped: its process was killed by SIGKILL" in widget.message.value
    assert "out of memory" in widget.message.value and widget.result is None
    assert widget.train_button.enabled and not widget.cancel_button.enabled
    viewer.add_points(np.zeros((1, 2)))  # the viewer still works
    assert len(viewer.layers) == 3


def test_the_child_trains_as_the_headless_trainer_does(make_napari_viewer, wait_idle, tmp_path, crop):
    from napari_bioflow.engine.train import EpochReport, Trainer

    viewer = make_napari_viewer()
    widget = train_dock(viewer, crop, tmp_path / "dock")
    widget.preview_ms.value = 0  # the preview does not change the training; nothing else runs between steps
    widget.start()
    wait_idle(widget, 120)
    assert widget.result.reason == "finished"
    cfg = widget.build_config()
    cfg.output_dir = tmp_path / "headless"
    samples = widget._samples(cfg, widget.pairs.pairs, [])
    (headless,) = [r for r in Trainer(cfg, train=samples).run() if isinstance(r, EpochReport)]
    assert widget.chart.train_loss == pytest.approx([headless.train_loss], rel=1e-5)
    assert widget.chart.val_loss == pytest.approx([headless.val_loss], rel=1e-5)
