"""The run config: YAML round trip, --set overrides, validation messages, generated reference, commented configs."""

from pathlib import Path

import pytest
import yaml

from napari_bioflow.config import (
    AugmentConfig,
    RunConfig,
    apply_override,
    commented_config,
    config_reference,
)
from napari_bioflow.engine.errors import InputError

REPO = Path(__file__).resolve().parents[2]


def non_default_config(tmp_path) -> RunConfig:
    return RunConfig.from_dict(
        {
            "name": "round.trip_3",
            "output_dir": str(tmp_path / "out"),
            "ndim": 3,
            "n_classes": 3,
            "class_names": ["bg", "nucleus", "membrane"],
            "seed": 7,
            "device": "cpu",
            "data": {
                "train_raw": str(tmp_path / "r"),
                "train_label": str(tmp_path / "l"),
                "patch_size": [8, 32, 48],
                "in_channels": 2,
                "normalization": "meanstd",
                "foreground_sampling": 0.5,
                "val_split": 0.2,
            },
            "model": {
                "name": "attention_unet",
                "options": {"feature_maps": [8, 16, 32], "norm": "batch", "dropout": 0.1},
            },
            "train": {
                "epochs": 3,
                "patience": 2,
                "optimizer": "SGD",
                "learning_rate": 0.01,
                "scheduler": "one_cycle",
                "loss": "ce_dice",
                "steps_per_epoch": 5,
            },
            "augment": {"rotate90": False, "intensity": 0.3},
            "predict": {"tile_size": [16, 64, 64], "overlap": 0.25, "tta": True, "z_filter": 3},
        }
    )


def test_yaml_round_trip_is_exact(tmp_path):
    cfg = non_default_config(tmp_path)
    path = cfg.save(tmp_path / "sub" / "cfg.yaml")
    assert path.is_file()
    loaded = RunConfig.load(path)
    assert loaded == cfg
    assert loaded.to_yaml() == cfg.to_yaml()
    # values keep their types through YAML
    assert loaded.data.train_raw == tmp_path / "r" and isinstance(loaded.data.train_raw, Path)
    assert loaded.model.options == {"feature_maps": [8, 16, 32], "norm": "batch", "dropout": 0.1}
    assert loaded.predict.tile_size == [16, 64, 64]
    assert loaded.class_label(2) == "membrane"
    # the YAML is plain data (no python tags), readable by any YAML loader
    assert yaml.safe_load(path.read_text())["train"]["optimizer"] == "SGD"


def test_default_config_round_trip(tmp_path):
    cfg = RunConfig()
    assert RunConfig.load(cfg.save(tmp_path / "d.yaml")) == cfg
    assert cfg.class_label(0) == "background" and cfg.class_label(1) == "class_1"


def test_apply_override_nested_and_typed():
    data = {"train": {"epochs": 100}}
    apply_override(data, "train.epochs=5")
    apply_override(data, "train.learning_rate=0.0005")
    apply_override(data, "augment.enable=false")
    apply_override(data, "data.patch_size=[32, 64]")
    apply_override(data, "model.options.feature_maps=[8, 16]")  # creates nested sections on the way
    apply_override(data, "name=exp=1")  # only the first '=' splits key and value
    apply_override(data, "class_names=[a, b]")
    assert data == {
        "train": {"epochs": 5, "learning_rate": 0.0005},
        "augment": {"enable": False},
        "data": {"patch_size": [32, 64]},
        "model": {"options": {"feature_maps": [8, 16]}},
        "name": "exp=1",
        "class_names": ["a", "b"],
    }
    assert isinstance(data["train"]["epochs"], int) and isinstance(data["augment"]["enable"], bool)


def test_overrides_win_over_the_file(tmp_path):
    path = RunConfig(train={"epochs": 50}).save(tmp_path / "c.yaml")
    cfg = RunConfig.load(
        path,
        [
            "train.epochs=2",
            "train.learning_rate=1e-4",
            "data.train_raw=/x/raw",
            "ndim=3",
            "data.patch_size=[4,8,8]",
            "model.options.dropout=0.2",
            "device=cpu",
        ],
    )
    assert cfg.train.epochs == 2
    assert cfg.train.learning_rate == pytest.approx(1e-4)  # YAML reads '1e-4' as text; the model makes it a float
    assert cfg.data.train_raw == Path("/x/raw")
    assert cfg.ndim == 3 and cfg.data.patch_size == [4, 8, 8]
    assert cfg.model.options == {"dropout": 0.2}
    assert cfg.device == "cpu"
    # the file itself is unchanged
    assert RunConfig.load(path).train.epochs == 50


@pytest.mark.parametrize(
    "item, words",
    [
        ("train.epochs", ["train.epochs", "section.field=value"]),
        ("name.sub=3", ["name.sub=3", "'name' is not a section"]),
        ("train.epochs=[1, 2", ["train.epochs=[1, 2", "not valid YAML"]),
    ],
)
def test_bad_override_is_an_input_error(item, words):
    with pytest.raises(InputError) as e:
        RunConfig.from_dict({"name": "x"}, [item])
    for w in words:
        assert w in str(e.value)


@pytest.mark.parametrize(
    "overrides, field",
    [
        (["train.epochs=0"], "train.epochs"),
        (["train.epoch=5"], "train.epoch"),  # a typo is refused, not ignored
        (["data.normalization=zscore"], "data.normalization"),
        (["train.optimizer=adam"], "train.optimizer"),
        (["train.scheduler=cosine"], "train.scheduler"),
        (["n_classes=1"], "n_classes"),
        (["name=my run"], "name"),
        (["data.val_split=1.5"], "data.val_split"),
        (["ndim=4"], "ndim"),
        (["ndim=3"], "data.patch_size"),  # 2 patch axes for a 3D config
        (["predict.tile_size=[64]"], "predict.tile_size"),
        (["class_names=[a, b, c]"], "class names"),
        (["class_names=[a, a]"], "class_names"),
        (["train.learning_rate=0"], "train.learning_rate"),
    ],
)
def test_validation_errors_name_the_field(overrides, field):
    with pytest.raises(InputError) as e:
        RunConfig.from_dict({}, overrides, source="my.yaml")
    msg = str(e.value)
    assert msg.startswith("my.yaml: ")
    assert field in msg
    assert "\n" not in msg


def test_bad_config_files(tmp_path):
    missing = tmp_path / "missing.yaml"
    with pytest.raises(InputError, match="missing.yaml cannot be read"):
        RunConfig.load(missing)
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [epochs: 3\n")
    with pytest.raises(InputError, match="bad.yaml is not valid YAML"):
        RunConfig.load(bad)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(InputError, match="list.yaml must hold a mapping"):
        RunConfig.load(listing)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("train:\n  epochs: many\n")
    with pytest.raises(InputError) as e:
        RunConfig.load(wrong)
    assert str(wrong) in str(e.value) and "train.epochs" in str(e.value)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert RunConfig.load(empty) == RunConfig()


def test_assignment_is_validated():
    aug = AugmentConfig()
    with pytest.raises(ValueError):
        aug.intensity = 2.0


def test_docs_config_md_is_current():
    committed = (REPO / "docs" / "config.md").read_text()
    assert committed == config_reference(), "docs/config.md is stale: run `napari-bioflow docs -o docs/config.md`"


def test_reference_documents_every_field():
    ref = config_reference()

    def fields(model, prefix=""):
        for name, f in model.model_fields.items():
            ann = f.annotation
            if isinstance(ann, type) and hasattr(ann, "model_fields"):
                yield from fields(ann, f"{prefix}{name}.")
            else:
                yield f"{prefix}{name}", f.description

    listed = list(fields(RunConfig))
    assert len(listed) >= 45  # every section's fields, not only the top level
    for dotted, description in listed:
        assert f"| `{dotted}` |" in ref, dotted
        assert description, f"{dotted} has no description"
        assert description in ref


@pytest.mark.parametrize("ndim", [2, 3])
def test_commented_config_loads_back(tmp_path, ndim):
    text = commented_config("semantic_segmentation", ndim)
    lines = text.splitlines()
    assert lines[0].startswith("# napari-bioflow config: semantic segmentation")
    assert "# Maximum number of epochs." in text
    assert "# Random flips along every spatial axis." in text
    # every leaf field is preceded by its description as a comment
    for i, line in enumerate(lines):
        if line.strip() and not line.lstrip().startswith("#") and not line.rstrip().endswith(":"):
            assert lines[i - 1].lstrip().startswith("#"), line
    path = tmp_path / "c.yaml"
    path.write_text(text)
    cfg = RunConfig.load(path)
    assert cfg.ndim == ndim
    assert len(cfg.data.patch_size) == ndim
    assert cfg.data.train_raw == Path("path/to/train/raw")
    assert cfg.name == f"my_semantic_segmentation_{ndim}d"
    # apart from the example paths, name and patch size, the commented config holds the defaults
    defaults = RunConfig(ndim=ndim, data={"patch_size": cfg.data.patch_size})
    got = cfg.model_dump()
    want = defaults.model_dump()
    for key in ("name",):
        got.pop(key), want.pop(key)
    for key in ("train_raw", "train_label"):
        got["data"].pop(key), want["data"].pop(key)
    assert got == want
