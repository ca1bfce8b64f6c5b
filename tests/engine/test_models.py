import json

import pytest
import torch

from napari_bioflow.engine.models import (
    UnknownModelError,
    create_model,
    list_models,
    model_info,
    register_model,
    registry,
)

SHAPES = {2: (2, 64, 64), 3: (1, 16, 32, 32)}  # (N, spatial...) of the test inputs


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # tensors this small gain nothing from threads, and on a busy 2-core machine the thread handoffs cost
    # seconds per test (measured: 3D U-Net forward+backward 5 s with 2 threads, 1 s with 1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_default_unet_matches_biapy_parameter_count():
    assert n_params(create_model("unet", ndim=2, in_channels=1, out_channels=1)) == 1_944_241


@pytest.mark.parametrize(
    "name, ndim, count",
    [
        ("unet", 3, 5_648_337),
        ("resunet", 2, 2_032_033),
        ("resunet", 3, 5_736_129),
        ("attention_unet", 2, 1_966_845),
        ("attention_unet", 3, 5_670_941),
    ],
)
def test_parameter_counts_are_pinned(name, ndim, count):
    # a changed count means old checkpoints no longer load
    assert n_params(create_model(name, ndim=ndim, in_channels=1, out_channels=1)) == count


def test_builtin_models_are_registered():
    assert {"unet", "resunet", "attention_unet"} <= set(list_models())
    assert {"unet", "resunet", "attention_unet"} <= set(list_models(ndim=3))


# (1, 2) and (3, 3) cover both input and both output channel counts at half the cost of all four pairs
@pytest.mark.parametrize("in_channels, out_channels", [(1, 2), (3, 3)])
@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("name", list_models())
def test_forward_and_backward(name, ndim, in_channels, out_channels):
    if name not in list_models(ndim):
        pytest.skip(f"{name} does not support {ndim}D")
    torch.manual_seed(0)
    model = create_model(name, ndim=ndim, in_channels=in_channels, out_channels=out_channels)
    n, *spatial = SHAPES[ndim]
    x = torch.randn(n, in_channels, *spatial)
    y = model(x)
    assert y.shape == (n, out_channels, *spatial)
    y.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())
    assert isinstance(model.size_divisor, int) and all(s % model.size_divisor == 0 for s in spatial)


def test_state_dict_names_are_stable():
    keys = create_model("attention_unet", ndim=2, in_channels=1, out_channels=1).state_dict().keys()
    for key in [
        "encoder.0.conv1.weight",
        "encoder.0.norm1.weight",
        "encoder.4.conv2.bias",
        "decoder.0.up.weight",
        "decoder.0.up_norm.weight",
        "decoder.0.gate.psi.weight",
        "decoder.3.conv1.weight",
        "head.weight",
    ]:
        assert key in keys
    assert "encoder.0.shortcut.weight" in create_model("resunet", ndim=2, in_channels=1, out_channels=1).state_dict()


@pytest.mark.parametrize(
    "options",
    [
        {"norm": "batch", "activation": "relu"},
        {"norm": "group", "activation": "gelu", "dropout": [0.0, 0.1, 0.1, 0.2, 0.3]},
        {"norm": "none", "activation": "silu", "upsample": "bilinear", "feature_maps": [8, 16, 32]},
        {"activation": "leaky_relu", "kernel_size": 5, "feature_maps": [4, 8]},
    ],
)
def test_options_2d(options):
    model = create_model("resunet", ndim=2, in_channels=1, out_channels=2, **options)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 2, 32, 32)
    assert model.size_divisor == 2 ** (len(options.get("feature_maps", [0] * 5)) - 1)


def test_anisotropic_z_down_3d():
    model = create_model(
        "unet",
        ndim=3,
        in_channels=1,
        out_channels=1,
        feature_maps=[4, 8, 16],
        z_down=[False, True],
        upsample="trilinear",
    )
    assert model.size_divisor == 4
    assert model(torch.randn(1, 1, 2, 16, 16)).shape == (1, 1, 2, 16, 16)  # Z needs only a multiple of 2
    with pytest.raises(ValueError, match=r"input size \(3, 16, 16\) is not a multiple of \(2, 4, 4\)"):
        model(torch.randn(1, 1, 3, 16, 16))


def test_size_not_multiple_of_divisor_raises():
    model = create_model("unet", ndim=2, in_channels=1, out_channels=1)
    assert model.size_divisor == 16
    with pytest.raises(ValueError, match=r"input size \(63, 64\) is not a multiple of 16"):
        model(torch.randn(1, 1, 63, 64))


def test_unknown_model():
    with pytest.raises(UnknownModelError, match=r"unknown model 'nope'; available: .*attention_unet.*unet") as info:
        create_model("nope", ndim=2, in_channels=1, out_channels=1)
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)
    with pytest.raises(KeyError):
        model_info("nope")


def test_unknown_option_names_option_and_model():
    with pytest.raises(ValueError, match=r"'feature_map'.*'unet'"):
        create_model("unet", ndim=2, in_channels=1, out_channels=1, feature_map=[8, 16])


def test_bad_option_values():
    with pytest.raises(ValueError, match="norm"):
        create_model("unet", ndim=2, in_channels=1, out_channels=1, norm="layer")
    with pytest.raises(ValueError, match="dropout"):
        create_model("unet", ndim=2, in_channels=1, out_channels=1, dropout=[0.1, 0.1])
    with pytest.raises(ValueError, match="z_down"):
        create_model("unet", ndim=3, in_channels=1, out_channels=1, z_down=[1, 2, 2, 2])
    with pytest.raises(ValueError, match="in_channels"):
        create_model("unet", ndim=2, in_channels=0, out_channels=1)


def test_ndim_restriction(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @register_model("tiny2d", ndims=(2,))
    def tiny2d(*, ndim, in_channels, out_channels, width=4):
        return torch.nn.Conv2d(in_channels, out_channels, 1)

    assert "tiny2d" in list_models(ndim=2) and "tiny2d" not in list_models(ndim=3)
    assert create_model("tiny2d", ndim=2, in_channels=1, out_channels=1).size_divisor == 1
    with pytest.raises(ValueError, match="model 'tiny2d' supports 2D only"):
        create_model("tiny2d", ndim=3, in_channels=1, out_channels=1)
    with pytest.raises(ValueError, match="already registered"):
        register_model("tiny2d")(tiny2d)


def test_model_info_lists_defaults():
    assert model_info("unet") == {
        "feature_maps": [16, 32, 64, 128, 256],
        "norm": "instance",
        "activation": "elu",
        "dropout": 0.0,
        "kernel_size": 3,
        "upsample": "transpose",
        "z_down": True,
    }


@pytest.mark.parametrize("name", list_models())
def test_default_options_round_trip(name):
    ndim = 2 if name in list_models(2) else 3
    model = create_model(name, ndim=ndim, in_channels=1, out_channels=2)
    assert model.model_options == model_info(name)
    rebuilt = create_model(model.model_name, ndim=ndim, in_channels=1, out_channels=2, **model.model_options)
    rebuilt.load_state_dict(model.state_dict(), strict=True)


@pytest.mark.parametrize("name", ["unet", "resunet", "attention_unet"])
def test_options_round_trip_through_json(name):
    model = create_model(name, ndim=3, in_channels=2, out_channels=3, feature_maps=(4, 8, 16), z_down=(False, True))
    assert model.model_name == name
    options = json.loads(json.dumps(model.model_options))  # as a checkpoint stores them
    assert options["feature_maps"] == [4, 8, 16] and options["norm"] == "instance"
    rebuilt = create_model(model.model_name, ndim=3, in_channels=2, out_channels=3, **options)
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    assert rebuilt.model_options == model.model_options
