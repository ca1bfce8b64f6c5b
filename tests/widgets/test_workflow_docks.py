"""The Train and Predict docks on the image-to-image and self-supervised workflows, with real viewers (under Xvfb):
fields that follow the workflow, training and prediction into the workflow's layers, transfer, bad input.

Real data: adjacent frames of a time-lapse (tests/data, see ATTRIBUTION.md) as image-to-image pairs (frame t -> t+1),
the shipped BBBC007 sample image for self-supervision. Tiny models and a few steps keep every test short."""

from __future__ import annotations

import re
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import tifffile
from helpers import BBBC, TINY_MODEL, dock, shown
from napari.layers import Image, Labels

from napari_bioflow.widgets.predict import JUST_TRAINED, PredictWidget
from napari_bioflow.widgets.train import TrainWidget

TIMELAPSE = Path(__file__).parents[1] / "data" / "timelapse_2d_consecutive.tif"  # frames 15-18 of one crop
TINY_MAE = "embed_dim: 32, depth: 1, num_heads: 2, decoder_embed_dim: 16, decoder_depth: 1, decoder_num_heads: 2"
MAE_CHECKS = ("MAE original", "MAE masked input", "MAE reconstruction", "MAE reconstruction and visible")


@pytest.fixture(scope="module")
def frames():
    return tifffile.imread(TIMELAPSE)  # (4, 160, 160) uint8: consecutive frames


@pytest.fixture(scope="module")
def nuclei():
    name = "A9_A9_p10d.tif"
    return tifffile.imread(BBBC / "train" / "raw" / name)[:128, :128], tifffile.imread(BBBC / "train" / "label" / name)[
        :128, :128
    ]


def tiny(widget: TrainWidget, out, epochs: int = 2, steps: int = 2, patch: int = 64) -> None:
    f = widget.form
    widget.patch_yx.value = patch
    widget.feature_maps.value = ", ".join(map(str, TINY_MODEL["feature_maps"]))
    f["train.epochs"].value, f["train.steps_per_epoch"].value, f["train.batch_size"].value = epochs, steps, 2
    f["output_dir"].value, f["device"].value = str(out), "cpu"
    widget.keep_preview.value = True  # the preview layer stays when the training ends


def tiny_mae(widget: TrainWidget, token: int = 8) -> None:
    widget.form["workflow"].value = "self_supervised"
    widget.form["self_supervised.pretext"].value = "masking"
    widget.token_size.value = token
    widget.model_options.value = TINY_MAE


def predict_with_last(viewer, image, out, target=None) -> PredictWidget:
    predict = dock(viewer, PredictWidget(viewer))
    assert predict.model_source.value == JUST_TRAINED
    predict.image.value = image
    if target is not None:
        predict.target.value = target
    predict.form["output_dir"].value, predict.form["device"].value = out, "cpu"
    return predict


def test_fields_follow_the_workflow(make_napari_viewer, frames):
    viewer = make_napari_viewer()
    viewer.add_image(frames[0], name="t0")
    viewer.add_image(frames[1], name="t1")
    viewer.add_labels((frames[0] > 60).astype(np.uint8), name="t0 mask")
    w = dock(viewer, TrainWidget(viewer))
    f, pair = w.form, w.pairs.pairs[0]
    w.source.value = "folders"  # the folder fields show, so their labels can be checked too

    # segmentation: classes and a Labels layer per pair; no target, no self-supervision; U-Net family and UNETR
    assert f["workflow"].value == "semantic_segmentation"
    assert shown(f["n_classes"]) and shown(pair.labels_layer) and shown(f["data.foreground_sampling"])
    assert shown(f["data.save_prob_map"])  # data.save_prob_map: with the labels it weighs
    assert not shown(pair.target_layer) and not shown(f["data.target_channels"])
    assert not shown(w.ssl_group) and not shown(f["self_supervised.pretext"]) and not shown(w.token_size)
    assert shown(f["data.train_label"]) and f["data.train_label"].label == "label folder"
    assert list(f["train.loss"].choices) == ["auto", "ce", "ce_dice"]
    models = set(f["model.name"].choices)
    assert {"unet", "resunet", "attention_unet", "unetr"} <= models and not {"edsr", "rcan", "dfcan", "mae"} & models
    assert shown(f["model.start_from"]) and shown(w.feature_maps)
    f["model.name"].value = "unetr"
    assert shown(w.token_size) and not shown(w.feature_maps) and not shown(w.mask_type)

    # image to image: a target Image per pair (not the raw layer itself), target channels, L1/MSE
    f["workflow"].value = "image_to_image"
    assert shown(pair.target_layer) and not shown(pair.labels_layer)
    assert pair.image_layer.value.name == "t0" and pair.target_layer.value.name == "t1"
    assert shown(f["data.target_channels"]) and not shown(f["n_classes"]) and not shown(f["data.foreground_sampling"])
    assert not shown(f["data.save_prob_map"])
    assert f["data.train_label"].label == "target folder" and not shown(w.ssl_group)
    assert list(f["train.loss"].choices) == ["auto", "l1", "mse"] and shown(f["train.loss"])
    models = set(f["model.name"].choices)
    assert {"unet", "resunet", "attention_unet", "edsr", "rcan", "dfcan"} <= models and not {
        "mae",
        "mae_vit_base",
    } & models
    assert f["model.name"].value == "unetr"  # kept: it fits this workflow too

    # self-supervised, crappify: raw images only; noise and down-sampling; no MAE options
    f["workflow"].value = "self_supervised"
    assert f["self_supervised.pretext"].value == "masking"  # the reference page's default
    f["self_supervised.pretext"].value = "crappify"
    assert not shown(pair.target_layer) and not shown(pair.labels_layer) and not shown(f["data.train_label"])
    assert w.pairs.add_button.text == "+ add an image"
    assert (
        shown(w.ssl_group) and shown(f["self_supervised.pretext"]) and f["self_supervised.pretext"].value == "crappify"
    )
    ssl_paths = ("noise", "downsample_area", "degrade_at_prediction", "cache_degraded")
    for path in (f"self_supervised.{p}" for p in ssl_paths):
        assert shown(f[path]), path
    f["model.name"].value = "unet"
    assert not shown(w.mask_type) and not shown(w.mask_ratio) and not shown(w.token_size) and not shown(f["n_classes"])

    # masking: the masked autoencoders only, their token size, mask type and ratio; no noise, no loss choice
    f["self_supervised.pretext"].value = "masking"
    assert list(f["model.name"].choices) == ["mae", "mae_vit_base"] and f["model.name"].value == "mae"
    assert shown(w.token_size) and shown(w.mask_type) and shown(w.mask_ratio) and w.token_size.value == 16
    assert list(w.mask_type.choices) == ["grid", "random"]
    assert not shown(f["self_supervised.noise"]) and not shown(f["train.loss"]) and not shown(w.feature_maps)
    assert not shown(f["self_supervised.cache_degraded"])
    w.token_size.value, w.mask_type.value, w.mask_ratio.value, w.patch_yx.value = 8, "random", 0.75, 64
    cfg = w.build_config()
    assert cfg.workflow == "self_supervised" and cfg.self_supervised.pretext == "masking" and cfg.model.name == "mae"
    assert cfg.model.options == {"patch_size": 8, "mask_type": "random", "mask_ratio": 0.75}

    # 3D: the 2D-only restoration models leave the image-to-image list
    f["ndim"].value = 3
    assert shown(w.patch_z) and list(f["model.name"].choices) == ["mae", "mae_vit_base"]
    f["workflow"].value = "image_to_image"
    assert not {"edsr", "rcan", "dfcan"} & set(f["model.name"].choices) and "unet" in f["model.name"].choices


def test_image_to_image_train_and_predict(make_napari_viewer, qtbot, wait_idle, tmp_path, frames):
    viewer = make_napari_viewer()
    t = [viewer.add_image(frame, name=f"t{i}", scale=(2, 2), translate=(10, 5)) for i, frame in enumerate(frames)]
    train = dock(viewer, TrainWidget(viewer))
    train.form["workflow"].value = "image_to_image"
    pair = train.pairs.pairs[0]
    pair.image_layer.value, pair.target_layer.value = t[0], t[1]
    tiny(train, tmp_path)
    train.train_button.native.click()
    wait_idle(train)
    done = train.result
    assert done.reason == "finished" and done.checkpoint.is_file()
    assert (
        train.chart.metric == "psnr" and len(train.chart.val_metric) == 2 and np.isfinite(train.chart.val_metric).all()
    )
    preview = viewer.layers["t0 preview (epoch 2)"]  # the predicted image of the field of view, in target intensities
    assert isinstance(preview, Image) and preview.data.dtype == np.float32 and preview.data.ndim == 2
    assert tuple(preview.scale) == (2, 2)

    predict = predict_with_last(viewer, t[2], tmp_path, target=t[3])
    assert shown(predict.target) and predict.target.label == "target"
    predict.predict_button.native.click()
    qtbot.waitUntil(lambda: "t2 prediction" in viewer.layers, timeout=60_000)  # the checkpoint opened in a worker
    live = viewer.layers["t2 prediction"]
    assert isinstance(live, Image) and isinstance(live.data, da.Array)  # over the zarr being written
    wait_idle(predict)
    result = predict.result
    assert result is not None and live.data.shape == (160, 160) and live.data.dtype == np.float32
    assert isinstance(live.data, da.Array)  # now over the final "image" zarr
    assert tuple(live.scale) == (2, 2) and tuple(live.translate) == (10, 5)
    assert (
        {"psnr", "ssim"} <= set(result.metrics) and "PSNR" in predict.metrics.value and "SSIM" in predict.metrics.value
    )
    final = tifffile.imread(predict.experiment.results / "per_image" / "t2.tif")
    np.testing.assert_allclose(live.data.compute(), final[0], rtol=1e-5, atol=1e-4)
    assert not (predict.experiment.results / "per_image" / "t2.zarr" / "accumulator").exists()


def test_crappify_train_predict_and_transfer(make_napari_viewer, qtbot, wait_idle, messages, tmp_path, nuclei):
    viewer = make_napari_viewer()
    image = viewer.add_image(nuclei[0], name="nuclei", scale=(0.5, 0.5), translate=(3, 4))
    train = dock(viewer, TrainWidget(viewer))
    train.form["workflow"].value = "self_supervised"
    train.form["self_supervised.pretext"].value = "crappify"
    tiny(train, tmp_path)
    train.train_button.native.click()
    wait_idle(train)
    pretrained = train.result.checkpoint
    assert train.result.reason == "finished" and train.chart.metric == "psnr"
    preview = viewer.layers["nuclei preview (epoch 2)"]
    assert isinstance(preview, Image) and preview.data.dtype == np.float32

    predict = predict_with_last(viewer, image, tmp_path)
    assert not shown(predict.target) and shown(predict.form["self_supervised.degrade_at_prediction"])
    assert shown(predict.form["predict.tta"]) and not shown(predict.form["predict.z_filter"])  # 2D restoration
    predict.predict_button.native.click()
    qtbot.waitUntil(lambda: "nuclei restored" in viewer.layers, timeout=60_000)
    assert isinstance(viewer.layers["nuclei restored"].data, da.Array)
    wait_idle(predict)
    degraded, restored = viewer.layers["nuclei degraded"], viewer.layers["nuclei restored"]
    names = [layer.name for layer in viewer.layers]
    assert names.index("nuclei degraded") == names.index("nuclei restored") - 1  # just below it
    assert restored.visible and degraded.visible
    for layer in (degraded, restored):
        assert isinstance(layer, Image) and layer.data.shape == (128, 128) and layer.data.dtype == np.float32
        assert tuple(layer.scale) == (0.5, 0.5) and tuple(layer.translate) == (3, 4)
    assert {"psnr", "ssim", "psnr_degraded_input"} <= set(predict.result.metrics)
    assert "degraded input" in predict.metrics.value
    results = predict.experiment.results
    assert (results / "degraded" / "nuclei.tif").is_file() and (results / "per_image" / "nuclei.tif").is_file()

    # transfer: a segmentation U-Net starts from the crappify-pretrained one; the dock says what was loaded
    labels = viewer.add_labels((nuclei[1] > 0).astype(np.uint8), name="nuclei mask")
    train.form["workflow"].value = "semantic_segmentation"
    train.pairs.pairs[0].image_layer.value, train.pairs.pairs[0].labels_layer.value = image, labels
    train.form["model.start_from"].value = pretrained
    train.form["train.epochs"].value = 1
    train.train_button.native.click()
    wait_idle(train)
    assert train.result.reason == "finished" and train.chart.metric == "iou_foreground"
    started = [m for m in messages["info"] if m.startswith(f"Started from {pretrained}")]
    # the crappify U-Net has no norm layers (restoration default), the segmentation one instance norms:
    # the convolutions load, the norms and the 2-class head start fresh
    counts = re.search(r"(\d+) tensors loaded, (\d+) initialised", started[0]) if len(started) == 1 else None
    assert counts and int(counts[1]) >= 10 and int(counts[2]) > 2 and "norm" in started[0], started

    # the Predict dock follows: a segmentation checkpoint takes an optional Labels layer, for the IoU
    assert predict.model_source.value == JUST_TRAINED and shown(predict.target) and predict.target.label == "labels"
    assert not shown(predict.form["self_supervised.degrade_at_prediction"])
    assert shown(predict.form["predict.tta"]) and not shown(predict.form["predict.yz_filter"])  # 2D segmentation
    predict.target.value = labels
    predict.predict_button.native.click()
    wait_idle(predict)
    assert isinstance(viewer.layers["nuclei labels"], Labels) and "iou_foreground" in predict.result.metrics
    assert "IoU (foreground)" in predict.metrics.value
    assert "IoU per patch (foreground)" in predict.metrics.value  # the page's per-patch IoU, in the dock's words


def test_masking_train_and_predict(make_napari_viewer, qtbot, wait_idle, tmp_path, nuclei):
    viewer = make_napari_viewer()
    image = viewer.add_image(nuclei[0], name="nuclei", scale=(0.5, 0.5), translate=(3, 4))
    train = dock(viewer, TrainWidget(viewer))
    tiny(train, tmp_path)
    tiny_mae(train)
    train.train_button.native.click()
    wait_idle(train)
    assert train.result.reason == "finished" and train.chart.metric == "psnr"
    preview = viewer.layers["nuclei preview (epoch 2)"]  # the MAE's reconstruction of the view
    assert isinstance(preview, Image) and preview.data.dtype == np.float32 and preview.data.ndim == 2

    predict = predict_with_last(viewer, image, tmp_path)
    assert not shown(predict.target) and not shown(predict.form["self_supervised.degrade_at_prediction"])
    assert not shown(predict.form["predict.tta"])  # the masks decide what the MAE sees, not flips
    assert not shown(predict.form["predict.z_filter"]) and not shown(predict.form["predict.yz_filter"])
    predict.predict_button.native.click()
    qtbot.waitUntil(lambda: "nuclei MAE reconstruction" in viewer.layers, timeout=60_000)
    assert isinstance(viewer.layers["nuclei MAE reconstruction"].data, da.Array)
    wait_idle(predict)
    layers = [viewer.layers[f"nuclei {name}"] for name in MAE_CHECKS]
    names = [layer.name for layer in viewer.layers]  # from the bottom of the layer list: original ... visible
    assert [names.index(layer.name) for layer in layers] == sorted(names.index(layer.name) for layer in layers)
    for layer in layers:
        assert isinstance(layer, Image) and layer.data.shape == (128, 128) and layer.data.dtype == np.float32
        assert tuple(layer.scale) == (0.5, 0.5) and tuple(layer.translate) == (3, 4)
    original, masked, reconstruction, visible = (np.asarray(layer.data) for layer in layers)
    np.testing.assert_allclose(original, nuclei[0], atol=1e-3)
    hidden = masked == 0
    assert 0.3 < hidden.mean() < 0.7  # a 50 % grid mask of 8-pixel tokens
    np.testing.assert_allclose(visible[~hidden], original[~hidden], atol=1e-3)
    np.testing.assert_allclose(visible[hidden], reconstruction[hidden], atol=1e-3)
    assert "psnr_masked_patches" in predict.result.metrics
    checks = sorted(p.name for p in (predict.experiment.results / "MAE_checks").iterdir())
    assert checks == sorted(
        f"nuclei_{n}.tif" for n in ("original", "masked", "reconstruction", "reconstruction_and_visible")
    )


@pytest.fixture(scope="module")
def i2i_checkpoint(tmp_path_factory, frames):
    """A tiny image-to-image model trained headless (one target channel)."""
    from napari_bioflow.config import RunConfig
    from napari_bioflow.engine.data.sources import make_sample
    from napari_bioflow.engine.train import Trainer

    cfg = RunConfig.from_dict(
        {
            "workflow": "image_to_image",
            "name": "ckpt",
            "output_dir": str(tmp_path_factory.mktemp("i2i")),
            "device": "cpu",
            "data": {"patch_size": [64, 64]},
            "model": {"options": TINY_MODEL},
            "train": {"epochs": 1, "steps_per_epoch": 1, "batch_size": 2},
        }
    )
    trainer = Trainer(cfg, train=[make_sample(frames[0], "raw", cfg, label=frames[1])])
    for _ in trainer.run():
        pass
    return trainer.best_checkpoint


def test_bad_input_is_one_sentence_naming_the_layer(
    make_napari_viewer, wait_idle, messages, tmp_path, frames, nuclei, i2i_checkpoint
):
    errors = messages["error"]
    viewer = make_napari_viewer()
    t0 = viewer.add_image(frames[0], name="t0")
    small = viewer.add_image(frames[1][:100, :120], name="small target")
    two = viewer.add_image(np.stack([frames[1], frames[2]]), name="two channels")
    runs = tmp_path / "runs"
    train = dock(viewer, TrainWidget(viewer))
    tiny(train, runs)
    train.form["workflow"].value = "image_to_image"
    pair = train.pairs.pairs[0]

    # image to image: raw/target shape mismatch; a target with more channels than the model outputs
    pair.image_layer.value, pair.target_layer.value = t0, small
    train.start()
    assert "'small target'" in errors[-1] and "100x120" in errors[-1] and "160x160" in errors[-1] and not train.running
    pair.target_layer.value = two
    assert train.form["data.target_channels"].value == 2  # followed the layer; set it back to the model's 1
    train.form["data.target_channels"].value = 1
    train.start()
    assert "'two channels' has 2 channel(s)" in errors[-1] and "target channels" in errors[-1] and not train.running

    # masking: a token size that does not divide the patch (found as the training sets up, before any write)
    pair.image_layer.value = t0
    tiny_mae(train, token=24)
    train.start()
    wait_idle(train)
    assert "token size 24" in errors[-1] and "64x64" in errors[-1]

    # a 3D masked autoencoder asked for 2D data
    train.token_size.value = 8
    train.form["ndim"].value = 3
    train.start()
    assert "'t0'" in errors[-1] and "2D data" in errors[-1] and "3D" in errors[-1] and not train.running
    train.form["ndim"].value = 2

    # a pretrained checkpoint whose architecture does not match: what did not match is said
    train.form["model.start_from"].value = i2i_checkpoint
    train.start()
    wait_idle(train)
    assert str(i2i_checkpoint) in errors[-1] and "shares no weights with model 'mae'" in errors[-1]
    assert "'unet' model" in errors[-1]
    assert not runs.exists()  # nothing written by any of these

    # prediction: a target layer with more channels than the image-to-image model predicts; a wrong-size target
    predict = dock(viewer, PredictWidget(viewer))
    predict.model_source.value = "checkpoint file"
    predict.checkpoint.value = i2i_checkpoint
    assert shown(predict.target)
    predict.image.value, predict.target.value = t0, two
    predict.form["output_dir"].value = tmp_path / "pred"
    predict.start()
    wait_idle(predict)  # the checkpoint is opened and the layers checked in a worker
    assert "'two channels' has 2 channel(s)" in errors[-1] and i2i_checkpoint.name in errors[-1] and not predict.running
    predict.target.value = small
    predict.start()
    wait_idle(predict)
    assert "'small target'" in errors[-1] and "100x120" in errors[-1] and not predict.running
    assert not (tmp_path / "pred").exists() and "t0 prediction" not in viewer.layers
    assert len(errors) == 7 and all(e.count(". ") == 0 and e.endswith(".") for e in errors), errors
