"""The Train dock's Advanced section reaches the training recipe's fields (issue 14): patch order, weight averaging,
the validation threshold, the loss and the GPU options; their defaults are the config's."""

from __future__ import annotations

import tifffile
from helpers import BBBC, dock

from napari_bioflow.config import RunConfig
from napari_bioflow.widgets.train import TrainWidget


def test_recipe_fields_reach_the_config(make_napari_viewer, tmp_path):
    name = "A9_A9_p10d.tif"
    viewer = make_napari_viewer()
    viewer.add_image(tifffile.imread(BBBC / "train" / "raw" / name)[:128, :128], name="nuclei")
    viewer.add_labels(tifffile.imread(BBBC / "train" / "label" / name)[:128, :128], name="nuclei mask")
    widget = dock(viewer, TrainWidget(viewer))
    f = widget.form
    f["output_dir"].value, f["device"].value = str(tmp_path), "cpu"
    defaults = RunConfig().train
    fields = ("sampling", "ema", "pick_threshold", "amp", "channels_last", "compile", "loss")
    assert {k: f[f"train.{k}"].value for k in fields} == {k: getattr(defaults, k) for k in fields}
    f["train.sampling"].value, f["train.ema"].value, f["train.pick_threshold"].value = "random", 0.0, False
    f["train.loss"].value, f["train.amp"].value, f["train.channels_last"].value = "ce", "off", False
    cfg = widget.build_config()
    assert (cfg.train.sampling, cfg.train.ema, cfg.train.pick_threshold) == ("random", 0.0, False)
    assert (cfg.train.loss, cfg.train.amp, cfg.train.channels_last, cfg.train.compile) == ("ce", "off", False, False)
