"""Transfer: a pretrained checkpoint starts a downstream model (model.start_from).

A crappify-pretrained U-Net starts a segmentation U-Net (its head, with other out_channels, is initialised) and an
image-to-image U-Net (everything loads); an MAE's encoder starts a UNETR segmentation model. Right after set-up,
before the first training step, every loaded tensor equals the pretrained one and the start note counts what was
loaded and names what was initialised; after a short fine-tune the loaded weights have changed. A checkpoint of
another architecture is refused with a sentence that says what did not match.
"""

import re
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from helpers import TINY_MODEL, crop_folders, reports_of, run_all, tiny_config

from napari_bioflow.engine.errors import InputError
from napari_bioflow.engine.train import DoneReport, EpochReport, StartReport, Trainer
from napari_bioflow.engine.train.checkpoint import read_checkpoint

DATA = Path(__file__).parents[1] / "data"
TIMELAPSE = DATA / "timelapse_2d_crops.tif"  # four real 160x160 crops of the time-lapse (see data/ATTRIBUTION.md)

# the tiny MAE and the UNETR with the same encoder: 8-pixel tokens, ViT 64 wide x 2 deep, 2 heads, 32x32 images
ENCODER = {"patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 2, "img_size": 32}
MAE = {**ENCODER, "decoder_embed_dim": 32, "decoder_depth": 1, "decoder_num_heads": 2}
UNETR = {**ENCODER, "feature_size": 4}


@pytest.fixture(scope="module")
def raw_folder(tmp_path_factory):
    """Unlabelled real images for pretraining: the time-lapse crops."""
    folder = tmp_path_factory.mktemp("unlabelled")
    for i, frame in enumerate(tifffile.imread(TIMELAPSE)):
        tifffile.imwrite(folder / f"crop{i}.tif", frame)
    return folder


@pytest.fixture(scope="module")
def seg_data(tmp_path_factory):
    """Labelled real images for the downstream segmentation: BBBC007 crops."""
    return crop_folders(tmp_path_factory.mktemp("bbbc"), n=4, size=64)


@pytest.fixture(scope="module")
def i2i_data(tmp_path_factory):
    """Real image-to-image pairs: a noisy copy of each time-lapse crop -> the crop."""
    root = tmp_path_factory.mktemp("pairs")
    (root / "raw").mkdir()
    (root / "target").mkdir()
    rng = np.random.default_rng(0)
    for i, frame in enumerate(tifffile.imread(TIMELAPSE)[:2]):
        noisy = np.clip(frame + rng.normal(0, 30, frame.shape), 0, 255).astype(np.uint8)
        tifffile.imwrite(root / "raw" / f"crop{i}.tif", noisy)
        tifffile.imwrite(root / "target" / f"crop{i}.tif", frame)
    return root / "raw", root / "target"


def pretrain(output_dir: Path, raw_folder: Path, **sections) -> Path:
    cfg = tiny_config(
        output_dir,
        workflow="self_supervised",
        train={"epochs": 1, "steps_per_epoch": 3},
        data={"train_raw": str(raw_folder), "patch_size": [32, 32]},
        **sections,
    )
    trainer = Trainer(cfg)
    run_all(trainer)
    return trainer.experiment.best_checkpoint


@pytest.fixture(scope="module")
def crappify_unet(tmp_path_factory, raw_folder):
    # instance norm as the segmentation U-Net's default, so the two architectures match but for the head
    # (restoration U-Nets default to no norm: the image-to-image case below loads across that difference)
    return pretrain(
        tmp_path_factory.mktemp("crappify"), raw_folder, model={"options": {**TINY_MODEL, "norm": "instance"}}
    )


@pytest.fixture(scope="module")
def mae_checkpoint(tmp_path_factory, raw_folder):
    return pretrain(
        tmp_path_factory.mktemp("mae"),
        raw_folder,
        self_supervised={"pretext": "masking"},
        model={"name": "mae", "options": dict(MAE)},
    )


def start_then_finetune(cfg, pretrained: Path):
    """Set the run up, check the weights before the first step, then fine-tune. Returns (start report, the loaded
    tensor names, the pretrained state, the model's state before and after the fine-tune)."""
    source = read_checkpoint(pretrained)["state_dict"]
    trainer = Trainer(cfg)
    run = trainer.run()
    start = next(run)
    assert isinstance(start, StartReport)
    before = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    loaded = sorted(k for k in before if k in source and source[k].shape == before[k].shape)
    for k in loaded:
        assert torch.equal(before[k], source[k]), f"{k} was not loaded"
    reports = [start, *run]
    assert reports_of(reports, DoneReport)[0].reason == "finished"
    assert all(np.isfinite(e.train_loss) for e in reports_of(reports, EpochReport))
    after = {k: v.detach().cpu() for k, v in trainer.model.state_dict().items()}
    return start, loaded, source, before, after, trainer


def start_note(start: StartReport, pretrained: Path) -> str:
    (note,) = [n for n in start.notes if n.startswith("Started from")]
    assert note.startswith(f"Started from {pretrained}: ")
    return note


def assert_changed(loaded, source, after, trainer):
    parameters = {k for k, p in trainer.model.named_parameters() if p.requires_grad}
    unchanged = [k for k in loaded if k in parameters and torch.equal(after[k], source[k])]
    assert not unchanged, f"not fine-tuned: {unchanged}"


def test_crappify_unet_starts_a_segmentation_unet(tmp_path, crappify_unet, seg_data):
    cfg = tiny_config(
        tmp_path,
        *seg_data,
        data={"patch_size": [32, 32]},
        model={"options": dict(TINY_MODEL), "start_from": str(crappify_unet)},
        train={"epochs": 1, "steps_per_epoch": 3},
    )
    start, loaded, source, before, after, trainer = start_then_finetune(cfg, crappify_unet)
    initialised = sorted(set(before) - set(loaded))
    # every tensor but the head: the restoration head has 1 output channel, the segmentation head 2
    assert initialised == ["head.bias", "head.weight"]
    assert source["head.weight"].shape[0] == 1 and before["head.weight"].shape[0] == 2
    assert len(loaded) == len(source) - 2 and len(loaded) > 20
    note = start_note(start, crappify_unet)
    # the restoration head did not fit: named among the checkpoint's skipped tensors
    assert note.endswith(
        f"{len(loaded)} tensors loaded, 2 initialised: head.bias, head.weight; "
        f"2 of the checkpoint's tensors skipped: head.bias, head.weight."
    )
    assert_changed(loaded, source, after, trainer)


def test_crappify_unet_starts_an_image_to_image_unet(tmp_path, crappify_unet, i2i_data):
    cfg = tiny_config(
        tmp_path,
        *i2i_data,
        workflow="image_to_image",
        data={"patch_size": [32, 32]},
        model={"options": {**TINY_MODEL, "norm": "instance"}, "start_from": str(crappify_unet)},
        train={"epochs": 1, "steps_per_epoch": 3},
    )
    start, loaded, source, before, after, trainer = start_then_finetune(cfg, crappify_unet)
    assert loaded == sorted(before) == sorted(source)  # the same network, head included
    assert start_note(start, crappify_unet).endswith(
        f"{len(source)} tensors loaded, 0 initialised; 0 of the checkpoint's tensors skipped."
    )
    assert_changed(loaded, source, after, trainer)


def test_mae_encoder_starts_a_unetr_segmentation_model(tmp_path, mae_checkpoint, seg_data):
    cfg = tiny_config(
        tmp_path,
        *seg_data,
        data={"patch_size": [32, 32]},
        model={"name": "unetr", "options": dict(UNETR), "start_from": str(mae_checkpoint)},
        train={"epochs": 1, "steps_per_epoch": 3},
    )
    start, loaded, source, before, after, trainer = start_then_finetune(cfg, mae_checkpoint)
    encoder = sorted(k for k in source if k.startswith("encoder."))
    assert loaded == encoder  # the whole encoder, and nothing of the MAE's decoder
    assert sorted(k for k in before if k.startswith("encoder.")) == encoder
    assert len(encoder) > 20 and any(k.startswith("decoder.") for k in source)
    initialised = sorted(set(before) - set(encoder))
    note = start_note(start, mae_checkpoint)
    counts = re.search(r": (\d+) tensors loaded, (\d+) initialised: ", note)
    assert counts and (int(counts[1]), int(counts[2])) == (len(encoder), len(initialised))
    named_initialised, named_skipped = note.split("initialised: ")[1].split("; ")
    assert all(name in initialised for name in re.findall(r"[\w.]+\.(?:weight|bias)", named_initialised))
    # the MAE's decoder (and anything else outside the encoder) is named as skipped
    skipped = sorted(set(source) - set(encoder))
    assert named_skipped.startswith(f"{len(skipped)} of the checkpoint's tensors skipped: ")
    assert all(name in skipped for name in re.findall(r"[\w.]+\.(?:weight|bias)", named_skipped))
    assert any(name.startswith("decoder.") for name in re.findall(r"[\w.]+\.(?:weight|bias)", named_skipped))
    assert_changed(loaded, source, after, trainer)


# ----------------------------------------------------------------------------------------------------------------
# an architecture that does not match: refused before anything is written


def test_an_edsr_checkpoint_cannot_start_a_unet(tmp_path, i2i_data):
    edsr = Trainer(
        tiny_config(
            tmp_path / "edsr",
            *i2i_data,
            workflow="image_to_image",
            data={"patch_size": [32, 32]},
            model={"name": "edsr", "options": {"n_feats": 8, "n_resblocks": 2}},
        )
    )
    run_all(edsr)
    checkpoint = edsr.experiment.best_checkpoint
    cfg = tiny_config(
        tmp_path / "unet",
        *i2i_data,
        workflow="image_to_image",
        data={"patch_size": [32, 32]},
        model={"options": dict(TINY_MODEL), "start_from": str(checkpoint)},
    )
    with pytest.raises(InputError) as error:
        run_all(Trainer(cfg))
    message = str(error.value)
    print(f"\n{message}")
    assert str(checkpoint) in message
    assert "'edsr'" in message and "'unet'" in message  # the two architectures
    # both have a head.weight: the sentence names a tensor and both of its shapes
    assert re.search(r"head\.(weight|bias) is [\dx]+ there, [\dx]+ here", message)
    assert not (tmp_path / "unet").exists()


def test_an_mae_of_another_width_cannot_start_a_unetr(tmp_path, mae_checkpoint, seg_data):
    cfg = tiny_config(
        tmp_path / "out",
        *seg_data,
        data={"patch_size": [32, 32]},
        model={"name": "unetr", "options": {**UNETR, "embed_dim": 32}, "start_from": str(mae_checkpoint)},
    )
    with pytest.raises(InputError) as error:
        run_all(Trainer(cfg))
    message = str(error.value)
    print(f"\n{message}")
    assert "'mae'" in message and "'unetr'" in message
    assert re.search(r"encoder\.\S+ is [\dx]*64[\dx]* there, [\dx]*32[\dx]* here", message)
    assert not (tmp_path / "out").exists()
