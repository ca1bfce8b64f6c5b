"""Layer factories that pick the 2D or 3D variant, so one model definition serves both."""

from __future__ import annotations

import math

from torch import nn

NORMS = ("instance", "batch", "group", "none")
ACTIVATIONS = ("elu", "relu", "leaky_relu", "gelu", "silu")


def _pick(ndim: int, layer2d: type, layer3d: type) -> type:
    if ndim == 2:
        return layer2d
    if ndim == 3:
        return layer3d
    raise ValueError(f"ndim must be 2 or 3, got {ndim!r}")


def conv(ndim: int) -> type:
    return _pick(ndim, nn.Conv2d, nn.Conv3d)


def conv_transpose(ndim: int) -> type:
    return _pick(ndim, nn.ConvTranspose2d, nn.ConvTranspose3d)


def max_pool(ndim: int) -> type:
    return _pick(ndim, nn.MaxPool2d, nn.MaxPool3d)


def norm_layer(kind: str, ndim: int, channels: int) -> nn.Module:
    if kind == "instance":
        # affine, unlike PyTorch's default: BiaPy's U-Net learns a scale and shift per channel
        return _pick(ndim, nn.InstanceNorm2d, nn.InstanceNorm3d)(channels, affine=True)
    if kind == "batch":
        return _pick(ndim, nn.BatchNorm2d, nn.BatchNorm3d)(channels)
    if kind == "group":
        # up to 8 groups, but always a divisor of the channel count so any width works
        return nn.GroupNorm(math.gcd(8, channels), channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; choose from {', '.join(NORMS)}")


def activation(kind: str) -> nn.Module:
    layers = {"elu": nn.ELU, "relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "gelu": nn.GELU, "silu": nn.SiLU}
    if kind not in layers:
        raise ValueError(f"unknown activation {kind!r}; choose from {', '.join(ACTIVATIONS)}")
    return layers[kind]()


def dropout(ndim: int, p: float) -> nn.Module:
    """Channel dropout (whole feature maps): neighbouring pixels are too correlated for per-pixel dropout."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {p!r}")
    if p == 0:
        return nn.Identity()
    return _pick(ndim, nn.Dropout2d, nn.Dropout3d)(p)
