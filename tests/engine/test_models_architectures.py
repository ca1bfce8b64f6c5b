"""The architectures added from BiaPy's model menus: WDSR, SE-U-Net, ResUNet-SE, MultiResUNet, ResUNet++, U-NeXt V1
and the UNETR-Mini/Small/Base presets. Each (2D, and 3D where it has 3D) builds, takes one optimizer step with finite
gradients that change its weights, and predicts an image tile by tile; a segmentation model and WDSR train through
the Trainer on real crops and their checkpoints reload and predict; `napari-bioflow models` lists each under the
workflows it serves."""

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from helpers import crop_folders, reports_of, run_all, tiny_config
from scipy.ndimage import gaussian_filter

from napari_bioflow.engine.models import create_model, list_models, model_info, model_tags
from napari_bioflow.engine.predict import sliding_window_predict
from napari_bioflow.engine.predict.inference import predict_array
from napari_bioflow.engine.train import EpochReport, Trainer
from napari_bioflow.engine.train.checkpoint import load_model

TIMELAPSE = Path(__file__).parents[1] / "data" / "timelapse_2d_crops.tif"  # four real 160x160 crops

UNETR_TINY = {"patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2, "img_size": 32, "feature_size": 4}
TINY = {  # small options: the defaults are BiaPy's sizes, for real use
    "wdsr": {"n_feats": 8, "n_resblocks": 2, "expansion": 2},
    "seunet": {"feature_maps": [8, 16], "se_reduction": 4},
    "resunet_se": {"feature_maps": [8, 16], "se_reduction": 4},
    "multiresunet": {"feature_maps": [8, 16, 32]},
    "resunet++": {"feature_maps": [8, 16, 32], "aspp_rates": [1, 2], "se_reduction": 4},
    "unext_v1": {"feature_maps": [8, 16], "cn_layers": [1, 1], "kernel_size": 3, "drop_path": 0.0},
    "unetr_mini": UNETR_TINY,
    "unetr_small": UNETR_TINY,
    "unetr_base": UNETR_TINY,
}
U_NET_FAMILY = [
    "seunet",
    "resunet_se",
    "multiresunet",
    "resunet++",
    "unext_v1",
    "unetr_mini",
    "unetr_small",
    "unetr_base",
]
CASES = [(name, ndim) for name in TINY for ndim in (2, 3) if name != "wdsr" or ndim == 2]
# (Z,)Y,X image sizes that are not multiples of the tile, and tiles that are multiples of every tiny model's divisor
IMAGE = {2: (50, 45), 3: (10, 21, 19)}
TILE = {2: (32, 32), 3: (8, 16, 16)}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_registered_for_the_dimensions_biapy_gives():
    assert set(TINY) <= set(list_models(2))
    assert set(TINY) - {"wdsr"} <= set(list_models(3)) and "wdsr" not in list_models(3)
    assert model_tags("wdsr") == ("restoration",)
    assert all(model_tags(name) == () for name in U_NET_FAMILY)


@pytest.mark.parametrize("name, ndim", CASES)
def test_one_step_then_a_tiled_prediction(name, ndim):
    torch.manual_seed(0)
    model = create_model(name, ndim=ndim, in_channels=2, out_channels=3, **TINY[name])
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.rand(2, 2, *TILE[ndim])
    y = model(x)
    assert y.shape == (2, 3, *TILE[ndim])
    loss = (y - 0.5).square().mean()
    assert torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    optimizer.step()
    unchanged = [k for k, v in model.named_parameters() if torch.equal(v, before[k])]
    assert not unchanged, f"weights that did not change: {unchanged}"

    model.eval()
    image = np.random.default_rng(0).random((*IMAGE[ndim], 2), dtype=np.float32)
    with torch.no_grad():
        prediction = sliding_window_predict(
            image, model, out_channels=3, tile_size=TILE[ndim], overlap=0.25, batch_size=2, divisor=model.size_divisor
        )
    assert prediction.shape == (3, *IMAGE[ndim]) and np.isfinite(prediction).all()


@pytest.mark.parametrize(
    "name, count",
    [
        ("wdsr", 888_962),
        ("seunet", 1_975_985),
        ("resunet_se", 2_047_905),
        ("multiresunet", 7_251_074),
        ("resunet++", 3_839_908),
        ("unext_v1", 2_212_129),
        ("unetr_mini", 6_612_481),
        ("unetr_small", 22_887_937),
    ],
)
def test_default_parameter_counts_are_pinned(name, count):
    # BiaPy's default sizes, 2D, 1 input and 1 output channel; a changed count means old checkpoints no longer load
    assert n_params(create_model(name, ndim=2, in_channels=1, out_channels=1)) == count


def test_unetr_presets_are_the_vit_sizes_and_base_is_unetr_vit_base():
    for name, (dim, depth, heads) in {
        "unetr_mini": (192, 12, 3),
        "unetr_small": (384, 12, 6),
        "unetr_base": (768, 12, 12),
    }.items():
        info = model_info(name)
        assert (info["embed_dim"], info["depth"], info["num_heads"], info["patch_size"]) == (dim, depth, heads, 16)
    assert model_info("unetr_base") == model_info("unetr_vit_base")
    base, vit_base = (create_model(n, ndim=3, in_channels=1, out_channels=2) for n in ("unetr_base", "unetr_vit_base"))
    assert {k: v.shape for k, v in base.state_dict().items()} == {k: v.shape for k, v in vit_base.state_dict().items()}
    assert base.model_name == "unetr_base" and vit_base.model_name == "unetr_vit_base"
    # a preset is only defaults: every option stays open
    small = create_model("unetr_small", ndim=2, in_channels=1, out_channels=1, **UNETR_TINY)
    assert small.model_options == {**model_info("unetr_small"), **UNETR_TINY}


@pytest.mark.parametrize("se_name, plain", [("seunet", "unet"), ("resunet_se", "resunet")])
def test_a_plain_unet_checkpoint_starts_its_se_variant(se_name, plain):
    options = {"feature_maps": [8, 16, 32]}
    se = create_model(se_name, ndim=3, in_channels=1, out_channels=2, **options).state_dict()
    base = create_model(plain, ndim=3, in_channels=1, out_channels=2, **options).state_dict()
    assert all(se[k].shape == v.shape for k, v in base.items())
    extra = set(se) - set(base)
    assert extra and all(".se1." in k or ".se2." in k for k in extra)
    assert (any(".se1." in k for k in extra)) == (se_name == "seunet")  # residual: one SE per block


def test_wdsr_is_weight_normalised_with_a_global_skip():
    model = create_model("wdsr", ndim=2, in_channels=1, out_channels=1, **TINY["wdsr"])
    keys = model.state_dict().keys()
    assert "body.0.conv1.parametrizations.weight.original0" in keys and model.skip is None
    assert torch.allclose(model.body[1].conv2.parametrizations.weight.original0, torch.tensor(2**-0.5))
    x = torch.rand(1, 1, 20, 24)
    with torch.no_grad():
        torch.nn.init.zeros_(model.tail.parametrizations.weight.original0)  # residual branch off: the identity
        assert torch.allclose(model(x), x)
    assert create_model("wdsr", ndim=2, in_channels=2, out_channels=1, **TINY["wdsr"]).skip is not None
    with pytest.raises(ValueError, match="expected input"):
        model(torch.rand(1, 1, 4, 8, 8))


def test_anisotropic_stacks_and_size_checks():
    # z_down false keeps Z: U-NeXt's stem then patchifies Y and X only
    model = create_model("unext_v1", ndim=3, in_channels=1, out_channels=1, **TINY["unext_v1"], z_down=False)
    assert model.divisors == (1, 4, 4) and model(torch.rand(1, 1, 3, 8, 8)).shape == (1, 1, 3, 8, 8)
    model = create_model("resunet++", ndim=3, in_channels=1, out_channels=1, **TINY["resunet++"], z_down=[False])
    assert model(torch.rand(1, 1, 3, 8, 8)).shape == (1, 1, 3, 8, 8)
    with pytest.raises(ValueError, match=r"input size \(30, 32\) is not a multiple of 4"):
        create_model("multiresunet", ndim=2, in_channels=1, out_channels=1, **TINY["multiresunet"])(
            torch.rand(1, 1, 30, 32)
        )
    with pytest.raises(ValueError, match="z_down"):
        create_model("multiresunet", ndim=3, in_channels=1, out_channels=1, feature_maps=[8, 16], z_down=[1])
    with pytest.raises(ValueError, match="cn_layers"):
        create_model("unext_v1", ndim=2, in_channels=1, out_channels=1, feature_maps=[8, 16], cn_layers=[1])
    with pytest.raises(ValueError, match="at least 3"):
        create_model("resunet++", ndim=2, in_channels=1, out_channels=1, feature_maps=[8, 16])


def test_unext_stochastic_depth_only_while_training():
    torch.manual_seed(0)
    model = create_model(
        "unext_v1", ndim=2, in_channels=1, out_channels=1, **{**TINY["unext_v1"], "drop_path": 0.5, "layer_scale": 1.0}
    )
    rates = [block.drop_path for stage in [*model.encoder, model.bottleneck] for block in stage]
    assert rates == [0.0, 0.5]  # linear from the first encoder block to the last bottleneck block
    x = torch.rand(4, 1, 16, 16)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    outputs = [model(x) for _ in range(4)]
    assert not all(torch.equal(outputs[0], o) for o in outputs[1:])


# ----------------------------------------------------------------------------------------------------------------
# real training through the Trainer


def test_resunet_pp_trains_on_real_crops_and_its_checkpoint_predicts(tmp_path):
    raw_dir, label_dir = crop_folders(tmp_path / "data", n=2, size=96)
    cfg = tiny_config(
        tmp_path / "out",
        raw_dir,
        label_dir,
        data={"patch_size": [32, 32], "val_split": 0.5},
        model={"name": "resunet++", "options": TINY["resunet++"]},
        train={"epochs": 1, "steps_per_epoch": 3},
    )
    trainer = Trainer(cfg)
    reports = run_all(trainer)
    (epoch,) = reports_of(reports, EpochReport)  # one epoch: the checkpoint is the model just trained
    assert np.isfinite([epoch.train_loss, epoch.val_loss, epoch.metrics["iou_foreground"]]).all()
    loaded = load_model(reports[-1].checkpoint, expect_workflow="semantic_segmentation")
    assert loaded.model.model_name == "resunet++" and loaded.model.model_options["aspp_rates"] == [1, 2]
    image = tifffile.imread(sorted(raw_dir.glob("*.tif"))[0])[:70, :61]
    prediction = predict_array(loaded, image)
    assert prediction.shape == (2, 70, 61) and np.isfinite(prediction).all()
    np.testing.assert_allclose(prediction.sum(0), 1, atol=1e-5)  # class probabilities
    np.testing.assert_array_equal(prediction, predict_array(trainer.loaded_model(), image))


def test_wdsr_trains_image_to_image_and_its_checkpoint_predicts(tmp_path):
    frames = tifffile.imread(TIMELAPSE)[:2, :96, :96]
    rng = np.random.default_rng(0)
    for folder in ("raw", "target"):
        (tmp_path / folder).mkdir()
    for i, frame in enumerate(frames):  # raw: a blurred, noisy copy of the real crop
        noisy = gaussian_filter(frame.astype(np.float32), 1.0) + rng.normal(0, 0.1 * frame.max(), frame.shape)
        noisy = np.clip(noisy, 0, np.iinfo(frame.dtype).max).astype(frame.dtype)
        tifffile.imwrite(tmp_path / "raw" / f"crop{i}.tif", noisy)
        tifffile.imwrite(tmp_path / "target" / f"crop{i}.tif", frame)
    cfg = tiny_config(
        tmp_path / "out",
        tmp_path / "raw",
        tmp_path / "target",
        workflow="image_to_image",
        data={"patch_size": [32, 32], "val_split": 0.5},
        model={"name": "wdsr", "options": TINY["wdsr"]},
        train={"epochs": 1, "steps_per_epoch": 3},
    )
    trainer = Trainer(cfg)
    reports = run_all(trainer)
    (epoch,) = reports_of(reports, EpochReport)  # one epoch: the checkpoint is the model just trained
    assert np.isfinite([epoch.train_loss, epoch.val_loss, epoch.metrics["psnr"]]).all()
    loaded = load_model(reports[-1].checkpoint, expect_workflow="image_to_image")
    assert loaded.model.model_name == "wdsr"
    image = tifffile.imread(tmp_path / "raw" / "crop0.tif")[:50, :45]  # any size: WDSR keeps it
    prediction = predict_array(loaded, image)
    assert prediction.shape == (1, 50, 45) and np.isfinite(prediction).all()
    np.testing.assert_array_equal(prediction, predict_array(trainer.loaded_model(), image))


# ----------------------------------------------------------------------------------------------------------------
# `napari-bioflow models` groups them by the workflows they serve


def test_cli_lists_each_model_under_the_workflows_it_serves(capsys):
    from napari_bioflow.cli import main
    from napari_bioflow.engine.workflows.base import workflow_classes

    assert main(["models"]) == 0
    groups, current = {}, None
    for line in capsys.readouterr().out.splitlines():
        if line.startswith("# "):
            current = groups.setdefault(line[2:], set())
        elif line.strip():
            current.add(line.split(": ", 1)[0])
    titles = {cls.__name__: cls.full_title() for cls in workflow_classes()}
    expected = {
        "SemanticSegmentation": set(U_NET_FAMILY),
        "ImageToImage": set(TINY),
        "Crappify": set(TINY),
        "Masking": set(),
        "Classification": set(),
    }
    for cls_name, names in expected.items():
        assert groups[titles[cls_name]] & set(TINY) == names, cls_name
