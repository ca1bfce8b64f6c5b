"""IoU per class and mean, on small arrays computed by hand."""

import numpy as np
import pytest

from napari_bioflow.engine.train.metrics import IoUAccumulator, iou, iou_from_counts
from napari_bioflow.engine.workflows.semantic import SegmentationMetrics


def test_binary_iou_by_hand():
    target = np.array([[0, 0, 1, 1], [0, 0, 1, 1]])
    pred = np.array([[0, 1, 1, 1], [0, 0, 0, 1]])
    # class 1: predicted {(0,1),(0,2),(0,3),(1,3)}, true {(0,2),(0,3),(1,2),(1,3)}: inter 3, union 5
    # class 0: predicted {(0,0),(1,0),(1,1),(1,2)}, true {(0,0),(0,1),(1,0),(1,1)}: inter 3, union 5
    m = iou(pred, target, 2)
    assert m["iou_class_1"] == pytest.approx(3 / 5)
    assert m["iou_class_0"] == pytest.approx(3 / 5)
    assert m["iou_mean"] == pytest.approx(3 / 5)
    assert m["iou_foreground"] == pytest.approx(3 / 5)


def test_three_classes_by_hand():
    target = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    pred = np.array([0, 0, 1, 1, 2, 2, 2, 0])
    # class 0: inter 2 (idx 0,1), union {0,1,2,7} = 4 -> 0.5
    # class 1: inter 1 (idx 3), union {2,3,4} = 3 -> 1/3
    # class 2: inter 2 (idx 5,6), union {4,5,6,7} = 4 -> 0.5
    m = iou(pred, target, 3)
    assert m["iou_class_0"] == pytest.approx(0.5)
    assert m["iou_class_1"] == pytest.approx(1 / 3)
    assert m["iou_class_2"] == pytest.approx(0.5)
    assert m["iou_mean"] == pytest.approx((0.5 + 1 / 3 + 0.5) / 3)
    assert m["iou_foreground"] == pytest.approx((1 / 3 + 0.5) / 2)


def test_perfect_empty_and_all_wrong():
    t = np.array([[0, 1], [1, 0]])
    assert iou(t, t, 2) == {"iou_class_0": 1.0, "iou_class_1": 1.0, "iou_mean": 1.0, "iou_foreground": 1.0}
    m = iou(1 - t, t, 2)
    assert m["iou_class_0"] == 0.0 and m["iou_class_1"] == 0.0 and m["iou_mean"] == 0.0
    # a class absent from both truth and prediction counts as perfectly segmented
    m = iou(np.zeros((3, 3), int), np.zeros((3, 3), int), 3)
    assert m["iou_class_1"] == 1.0 and m["iou_class_2"] == 1.0 and m["iou_class_0"] == 1.0
    # predicting everything foreground: IoU of the foreground is the foreground fraction
    t = np.zeros((10, 10), int)
    t[:2] = 1
    m = iou(np.ones_like(t), t, 2)
    assert m["iou_foreground"] == pytest.approx(0.2) and m["iou_class_0"] == 0.0


def test_accumulated_counts_pool_pixels_not_averages():
    # image A: fg IoU 1/1; image B: fg IoU 1/3 (tiny object, one of three pixels): pooled is (1+1)/(1+3)
    a_t, a_p = np.array([1, 0, 0, 0]), np.array([1, 0, 0, 0])
    b_t, b_p = np.array([1, 1, 1, 0]), np.array([1, 0, 0, 0])
    acc = IoUAccumulator(2)
    acc.update(a_p, a_t)
    acc.update(b_p, b_t)
    assert acc.inter.tolist() == [3 + 1, 1 + 1]
    assert acc.union.tolist() == [3 + 3, 1 + 3]
    m = acc.compute()
    assert m["iou_class_1"] == pytest.approx(2 / 4)
    assert m["iou_class_1"] != pytest.approx((1 + 1 / 3) / 2)
    # the same as one update over everything
    assert iou(np.concatenate([a_p, b_p]), np.concatenate([a_t, b_t]), 2) == m


def test_iou_from_counts_and_nd_inputs():
    m = iou_from_counts(np.array([5, 0, 2]), np.array([10, 0, 8]))
    assert m == {
        "iou_class_0": 0.5,
        "iou_class_1": 1.0,
        "iou_class_2": 0.25,
        "iou_mean": pytest.approx((0.5 + 1 + 0.25) / 3),
        "iou_foreground": pytest.approx(0.625),
    }
    rng = np.random.default_rng(0)
    t = rng.integers(0, 3, (4, 5, 6))
    p = rng.integers(0, 3, (4, 5, 6))
    m = iou(p, t, 3)
    for c in range(3):
        inter = np.logical_and(p == c, t == c).sum()
        union = np.logical_or(p == c, t == c).sum()
        assert m[f"iou_class_{c}"] == pytest.approx(inter / union)


def test_segmentation_metrics_take_probabilities():
    # (B, C, Y, X) probabilities: argmax over C is the prediction
    prob = np.zeros((1, 2, 2, 2), np.float32)
    prob[0, 1] = [[0.9, 0.2], [0.6, 0.4]]
    prob[0, 0] = 1 - prob[0, 1]
    target = np.array([[[1, 1], [0, 0]]])
    m = SegmentationMetrics(2)
    m.update(prob, target)
    # predicted fg {(0,0),(1,0)}, true fg {(0,0),(0,1)}: inter 1, union 3
    assert m.compute()["iou_foreground"] == pytest.approx(1 / 3)
