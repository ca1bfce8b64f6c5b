"""The Train dock's live chart (pyqtgraph): every epoch's point reaches its curves; the title follows the metric."""

from __future__ import annotations

import math

from napari_bioflow.widgets.chart import TrainingChart


def test_the_chart_gets_every_epochs_points(qtbot):
    chart = TrainingChart()
    qtbot.addWidget(chart)
    chart.add(1, 0.9, 0.8, 0.25)
    chart.add(2, 0.7, 0.6, 0.5)
    points = chart.curve_points()
    assert points["training"] == ([1.0, 2.0], [0.9, 0.7])
    assert points["validation"] == ([1.0, 2.0], [0.8, 0.6])
    assert points["metric"] == ([1.0, 2.0], [0.25, 0.5])
    assert chart.val_iou == [0.25, 0.5] and chart.metric_title == "validation IoU (foreground)"
    chart.clear()
    assert chart.curve_points()["training"] == ([], []) and chart.epochs == []


def test_a_run_without_validation_draws_only_the_training_loss_and_the_title_follows_the_metric(qtbot):
    chart = TrainingChart()
    qtbot.addWidget(chart)
    chart.add(1, 0.5, 0.8, 0.1)
    chart.set_metric("psnr")  # another workflow: its own series and title
    assert chart.epochs == [] and chart.metric_title == "validation PSNR (dB)"
    chart.add(1, 0.5, math.nan, math.nan)
    points = chart.curve_points()
    assert points["training"] == ([1.0], [0.5])
    assert points["validation"] == ([], []) and points["metric"] == ([], [])
