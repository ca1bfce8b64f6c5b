"""Self-supervision defaults as the reference page gives them (pretext masking, model MAE, 64x64 patches in 2D),
while configs written before keep meaning what they meant (a U-Net or crappify's settings: crappify)."""

from __future__ import annotations

import pytest

from napari_bioflow.config import RunConfig
from napari_bioflow.engine.errors import InputError
from napari_bioflow.engine.workflows import get_workflow
from napari_bioflow.engine.workflows.base import workflow_class


def cfg(**data) -> RunConfig:
    return RunConfig.from_dict({"workflow": "self_supervised", **data})


def test_page_defaults_when_the_config_says_nothing():
    c = cfg()
    assert (c.self_supervised.pretext, c.model.name, c.data.patch_size) == ("masking", "mae", [64, 64])
    assert type(get_workflow(c)).__name__ == "Masking"
    assert workflow_class("self_supervised").variant == ("self_supervised.pretext", "masking")
    c = cfg(self_supervised={"pretext": "masking"}, ndim=3, data={"patch_size": [16, 32, 32]})
    assert (c.model.name, c.data.patch_size) == ("mae", [16, 32, 32])  # a given patch size is kept
    c = cfg(model={"options": {"patch_size": 8, "embed_dim": 32}})  # MAE options: still masking
    assert (c.self_supervised.pretext, c.model.name) == ("masking", "mae")


@pytest.mark.parametrize(
    "given",
    [
        {"model": {"name": "unet"}},
        {"model": {"name": "resunet", "options": {"feature_maps": [8, 16]}}},
        {"model": {"options": {"feature_maps": [8, 16]}}},  # a U-Net's options, no name (the default U-Net)
        {"self_supervised": {"noise": 0.3}},  # crappify's own settings
        {"self_supervised": {"downsample_area": 1.0}, "data": {"patch_size": [128, 128]}},
    ],
)
def test_earlier_configs_keep_meaning_crappify(given):
    c = cfg(**given)
    assert c.self_supervised.pretext == "crappify" and type(get_workflow(c)).__name__ == "Crappify"
    assert c.model.name == given.get("model", {}).get("name", "unet")
    assert c.data.patch_size == given.get("data", {}).get("patch_size", [256, 256])  # crappify's default is kept


def test_saved_configs_and_other_workflows_are_unchanged():
    crappify = cfg(model={"name": "unet"})
    assert RunConfig.from_dict(crappify.model_dump(mode="json")).self_supervised.pretext == "crappify"
    seg = RunConfig.from_dict({"workflow": "semantic_segmentation"})
    assert (seg.model.name, seg.data.patch_size) == ("unet", [256, 256])
    bad = cfg(self_supervised={"pretext": "masking"}, model={"name": "unet"})
    with pytest.raises(InputError, match="masked autoencoder"):  # an explicit masking with a U-Net: refused
        get_workflow(bad).prepare(None, bad, None)
