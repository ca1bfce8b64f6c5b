"""The Train, Predict and Batch docks list the devices: auto, cpu and each GPU found (number and name); the value
chosen is the config's `device`."""

from __future__ import annotations

import torch

from napari_bioflow.widgets.batch import BatchWidget
from napari_bioflow.widgets.predict import PredictWidget
from napari_bioflow.widgets.train import TrainWidget


def test_docks_list_the_gpus_found(make_napari_viewer, monkeypatch):
    viewer = make_napari_viewer()
    cpu_only = TrainWidget(viewer).form["device"]
    if not torch.cuda.is_available():
        assert [c[1] if isinstance(c, tuple) else c for c in cpu_only.choices] == ["auto", "cpu"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: f"Test GPU {i}")
    for dock in (TrainWidget(viewer), PredictWidget(viewer), BatchWidget(viewer)):
        field = dock.form["device"]
        assert field.choices == ("auto", "cpu", "cuda:0", "cuda:1")
        assert field.value == "auto"
        labels = [field.native.itemText(i) for i in range(field.native.count())]
        assert labels[2:] == ["cuda:0 (Test GPU 0)", "cuda:1 (Test GPU 1)"]
        field.value = "cuda:1"
        assert dock.form.value("device") == "cuda:1"
