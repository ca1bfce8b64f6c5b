"""data.normalization defaults to the workflow's own when a config names none: meanstd for image to image (issue 14:
it wins on the restoration set), percentile for the others; configs, saved run configs and checkpoints that name
one keep it."""

import numpy as np
import pytest
import yaml

from napari_bioflow.config import DataConfig, RunConfig
from napari_bioflow.config.reference import commented_config
from napari_bioflow.engine.data.normalize import fit_normalizer
from napari_bioflow.engine.models import create_model
from napari_bioflow.engine.train.checkpoint import load_model, save_checkpoint


@pytest.mark.parametrize(
    "config, expected",
    [
        ({"workflow": "image_to_image"}, "meanstd"),
        ({"workflow": "image_to_image", "data": {"in_channels": 2}}, "meanstd"),
        ({"workflow": "image_to_image", "data": {"normalization": "percentile"}}, "percentile"),
        ({"workflow": "image_to_image", "data": {"normalization": "none"}}, "none"),
        ({"workflow": "semantic_segmentation"}, "percentile"),
        ({}, "percentile"),
        ({"workflow": "classification"}, "percentile"),
        ({"workflow": "self_supervised"}, "percentile"),
        ({"workflow": "self_supervised", "self_supervised": {"pretext": "crappify"}}, "percentile"),
    ],
)
def test_the_workflow_gives_the_default(config, expected):
    assert RunConfig.model_validate(config).data.normalization == expected


@pytest.mark.parametrize(
    "config, expected",
    [
        ({"workflow": "image_to_image"}, 0.0),
        ({"workflow": "image_to_image", "augment": {"flips": False}}, 0.0),
        ({"workflow": "image_to_image", "augment": {"intensity": 0.2}}, 0.2),
        ({"workflow": "semantic_segmentation"}, 0.1),
        ({"workflow": "self_supervised"}, 0.1),
    ],
)
def test_image_to_image_trains_without_intensity_jitter_by_default(config, expected):
    """The raw-to-target intensities are what an image-to-image model learns: a jitter of the raw alone blurs them
    (issue 14: +1 dB at 100 steps on the restoration set); a config naming augment.intensity keeps it."""
    assert RunConfig.model_validate(config).augment.intensity == expected


@pytest.mark.parametrize(
    "config, expected",
    [
        ({"workflow": "classification"}, 1e-4),
        ({"workflow": "classification", "train": {"epochs": 3}}, 1e-4),
        ({"workflow": "classification", "train": {"learning_rate": 3e-3}}, 3e-3),
        ({"workflow": "semantic_segmentation"}, 1e-3),
        ({"workflow": "image_to_image"}, 1e-3),
        ({"workflow": "self_supervised"}, 1e-3),
    ],
)
def test_classification_starts_at_a_lower_learning_rate(config, expected):
    """Issue 14: at 1e-3 the classifiers stall near chance on both classification sets of bench_quality.py; a config
    naming train.learning_rate keeps it, and a saved classification config keeps the rate it ran with."""
    cfg = RunConfig.model_validate(config)
    assert cfg.train.learning_rate == expected
    assert RunConfig.from_dict(yaml.safe_load(cfg.to_yaml())).train.learning_rate == expected


def test_init_template_writes_the_classification_rate():
    assert "\n  learning_rate: 0.0001\n" in commented_config("classification")
    assert "\n  learning_rate: 0.001\n" in commented_config("semantic_segmentation")


def test_sections_given_as_objects():
    assert RunConfig(workflow="image_to_image", data=DataConfig(in_channels=2)).data.normalization == "meanstd"
    given = DataConfig(normalization="percentile")
    assert RunConfig(workflow="image_to_image", data=given).data.normalization == "percentile"


def test_a_saved_run_config_keeps_its_normalization(tmp_path):
    saved = RunConfig(workflow="image_to_image", data={"normalization": "percentile"})
    path = tmp_path / "run.yaml"
    path.write_text(saved.to_yaml())
    assert RunConfig.load(path).data.normalization == "percentile"
    assert RunConfig.load(path, ["data.in_channels=2"]).data.normalization == "percentile"
    fresh = RunConfig(workflow="image_to_image")  # and a new run's config, saved and read again, stays meanstd
    path.write_text(fresh.to_yaml())
    assert RunConfig.load(path).data.normalization == "meanstd"


def test_init_template_writes_the_workflow_default():
    assert "\n  normalization: meanstd\n" in commented_config("image_to_image")
    assert "\n  normalization: percentile\n" in commented_config("semantic_segmentation")


def test_an_old_image_to_image_checkpoint_loads_unchanged(tmp_path):
    """A checkpoint trained before the change (percentile, as every config dump names it) predicts as before."""
    cfg = RunConfig(workflow="image_to_image", data={"normalization": "percentile", "patch_size": [32, 32]})
    dumped = cfg.model_dump(mode="json")
    assert dumped["data"]["normalization"] == "percentile"
    model = create_model("unet", ndim=2, in_channels=1, out_channels=1, feature_maps=[4, 8])
    raw = np.random.default_rng(0).random((16, 16, 1), dtype=np.float32)
    norm = fit_normalizer([raw], "percentile").to_dict()
    save_checkpoint(
        tmp_path / "old.pth",
        {
            "workflow": "image_to_image",
            "config": dumped,
            "model": {"name": "unet", "options": {"feature_maps": [4, 8]}, "out_channels": 1},
            "state_dict": model.state_dict(),
            "normalization": norm,
            "workflow_state": {"target_normalization": norm},
            "epoch": 1,
        },
    )
    loaded = load_model(tmp_path / "old.pth")
    assert loaded.config.data.normalization == "percentile"
    assert loaded.normalizer.to_dict() == norm
    assert loaded.workflow.state["target_normalization"] == norm
