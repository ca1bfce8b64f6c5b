"""Layer factories that pick the 2D or 3D variant, so one model definition serves both."""

from __future__ import annotations

import math

import torch
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


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al. 2018): each channel's mean over the image, a bottleneck of two bias-free
    linear layers (ReLU, then sigmoid) and the maps rescaled per channel. The bottleneck is ``channels // reduction``
    wide but at least min(channels, 8): after a norm the channel means start nearly equal, so each ReLU unit starts
    on or off for all of them, and one or two units (16 maps at BiaPy's ratio 16) are often all off, for good."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        if isinstance(reduction, bool) or not isinstance(reduction, int) or reduction < 1:
            raise ValueError(f"se_reduction must be a positive integer, got {reduction!r}")
        hidden = max(channels // reduction, min(channels, 8))
        self.fc1 = nn.Linear(channels, hidden, bias=False)
        self.fc2 = nn.Linear(hidden, channels, bias=False)

    def forward(self, x):
        weights = torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean(dim=tuple(range(2, x.ndim)))))))
        return x * weights.reshape(*weights.shape, *[1] * (x.ndim - 2))


def level_scales(ndim: int, z_down, n: int) -> tuple[list[tuple[int, ...]], tuple[int, ...]]:
    """The pooling factor of each of ``n`` 2x down-sampling steps and, per axis, their product (what input sizes
    must be multiples of). ``z_down`` (true/false, or one per step): False keeps Z at full resolution for that
    step (anisotropic stacks); 2D ignores it."""
    values = list(z_down) if isinstance(z_down, (list, tuple)) else [z_down] * n
    if len(values) != n:
        raise ValueError(f"z_down needs one value per level ({n}), got {len(values)}")
    if not all(isinstance(z, bool) for z in values):
        raise ValueError(f"z_down must be true/false (per level), got {z_down!r}")
    scales = [((2 if z else 1), 2, 2) if ndim == 3 else (2, 2) for z in values]
    divisors = tuple(math.prod(axis) for axis in zip(*scales)) if scales else (1,) * ndim
    return scales, divisors


def check_input_size(x, ndim: int, divisors: tuple[int, ...]) -> None:
    """Refuse an input of the wrong rank, or whose size is not a multiple of ``divisors`` (one per axis)."""
    size = tuple(x.shape[2:])
    if len(size) != ndim:
        raise ValueError(f"expected input (N, C, {'Z, ' if ndim == 3 else ''}Y, X), got {tuple(x.shape)}")
    if any(s % d for s, d in zip(size, divisors)):
        divisor = divisors[0] if len(set(divisors)) == 1 else divisors
        raise ValueError(f"input size {size} is not a multiple of {divisor}")
