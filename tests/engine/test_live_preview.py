"""The preview's budget (engine/train/live_preview.py): a view too costly for the time per epoch is cut down around
its centre, never below a patch; 0 ms or an epoch not due gives no preview."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from napari_bioflow.engine.train.live_preview import LivePreview, PreviewBudget, ViewRegion, shrink


def test_a_view_beyond_the_budget_is_cut_around_its_centre_never_below_a_patch():
    region = ViewRegion((slice(100, 500), slice(0, 200)), (2.0, 1.0), (10.0, 0.0))
    assert shrink(region, 80_000, [64, 64]) is region  # fits
    small = shrink(region, 20_000, [64, 64])  # a quarter: half of each axis
    assert small.shape == (200, 100) and small.slices == (slice(200, 400), slice(50, 150))
    assert small.translate == (10.0 + 2 * 100, 50.0) and small.scale == (2.0, 1.0)
    assert shrink(region, 10, [64, 32]).shape == (64, 32)


def test_no_preview_when_not_due_or_off():
    trainer = SimpleNamespace()  # never used: nothing is predicted
    report = SimpleNamespace(epoch=1, seconds=1.0)
    image = np.zeros((128, 128, 1), np.float32)
    every2 = LivePreview(image, PreviewBudget(ms=100, every=2))
    every2.view = ViewRegion((slice(0, 64), slice(0, 64)), (1.0, 1.0), (0.0, 0.0))
    assert every2.maybe_predict(trainer, report) is None
    off = LivePreview(image, PreviewBudget(ms=0))
    off.view = every2.view
    assert off.maybe_predict(trainer, report) is None
    assert LivePreview(image, PreviewBudget()).maybe_predict(trainer, report) is None  # no view yet
