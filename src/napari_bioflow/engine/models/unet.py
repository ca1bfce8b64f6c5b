"""U-Net family for 2D and 3D from one code path: ``unet``, ``resunet`` and ``attention_unet``.

The default ``unet`` is BiaPy's default U-Net: feature maps 16-32-64-128-256, two 3x3 convs per level
each followed by affine InstanceNorm and ELU, 2x2 max-pooling, 2x2 transposed conv up (followed by norm
and ELU, as in BiaPy's UpBlock), skip concatenation and a 1x1 head giving raw logits. All convs have
biases. That is 1,944,241 parameters in 2D with 1 input and 1 output channel.

Parameter names are part of the checkpoint format (weights move between workflows by matching names
and shapes), so keep them stable:
    encoder.{i}.conv1 / norm1 / conv2 / norm2 [/ shortcut]   level i; 0 = full resolution, last = bottleneck
    decoder.{j}.up / up_norm [/ gate.*] / conv1 / ...         j = 0 is the deepest decoder level
    head                                                      1x1 conv to out_channels
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import SqueezeExcite, activation, conv, conv_transpose, dropout, max_pool, norm_layer
from .registry import register_model

FEATURE_MAPS = (16, 32, 64, 128, 256)
UPSAMPLE_MODES = ("transpose", "bilinear", "trilinear")


class ConvBlock(nn.Module):
    """Two convs, each followed by norm and activation, dropout between them. With ``residual`` the
    input is added (through a 1x1 projection when the channel count changes) before the last activation.
    With ``se`` (a reduction ratio; 0 = none) squeeze-and-excitation recalibrates the channels: after each
    activation (``se1``, ``se2``), or, in a residual block, once on the residual branch before the sum (``se2``)."""

    def __init__(self, ndim, in_ch, out_ch, *, kernel_size, norm, act, drop, residual, se=0):
        super().__init__()
        Conv = conv(ndim)
        self.conv1 = Conv(in_ch, out_ch, kernel_size, padding=kernel_size // 2)
        self.norm1 = norm_layer(norm, ndim, out_ch)
        self.act1 = activation(act)
        self.drop = dropout(ndim, drop)
        self.conv2 = Conv(out_ch, out_ch, kernel_size, padding=kernel_size // 2)
        self.norm2 = norm_layer(norm, ndim, out_ch)
        self.act2 = activation(act)
        self.shortcut = None
        if residual:
            self.shortcut = Conv(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        self.se1 = SqueezeExcite(out_ch, se) if se and not residual else None
        self.se2 = SqueezeExcite(out_ch, se) if se else None

    def forward(self, x):
        y = self.act1(self.norm1(self.conv1(x)))
        if self.se1 is not None:
            y = self.se1(y)
        y = self.norm2(self.conv2(self.drop(y)))
        if self.shortcut is not None:
            if self.se2 is not None:
                y = self.se2(y)
            return self.act2(y + self.shortcut(x))
        y = self.act2(y)
        return y if self.se2 is None else self.se2(y)


class AttentionGate(nn.Module):
    """Additive attention gate (Oktay et al. 2018): the decoder signal ``g`` decides, per pixel, how much
    of the skip connection ``x`` passes. ``g`` is taken after upsampling, so both share one grid."""

    def __init__(self, ndim, channels, *, norm):
        super().__init__()
        Conv = conv(ndim)
        inter = max(channels // 2, 1)
        self.w_g = Conv(channels, inter, 1)
        self.norm_g = norm_layer(norm, ndim, inter)
        self.w_x = Conv(channels, inter, 1)
        self.norm_x = norm_layer(norm, ndim, inter)
        # no norm on the 1-channel map: instance norm would force about half of every image to be gated off
        self.psi = Conv(inter, 1, 1)

    def forward(self, g, x):
        a = torch.relu(self.norm_g(self.w_g(g)) + self.norm_x(self.w_x(x)))
        return x * torch.sigmoid(self.psi(a))


class UpBlock(ConvBlock):
    """Upsample the deeper features, (gate and) concatenate the skip, then this level's ConvBlock."""

    def __init__(
        self, ndim, in_ch, out_ch, *, scale, upsample, attention, kernel_size, norm, act, drop, residual, se=0
    ):
        super().__init__(
            ndim, 2 * out_ch, out_ch, kernel_size=kernel_size, norm=norm, act=act, drop=drop, residual=residual, se=se
        )
        self.scale = scale
        if upsample == "transpose":
            self.up = conv_transpose(ndim)(in_ch, out_ch, scale, stride=scale)
            self.interpolate = None
        else:
            # 1x1 conv, then linear interpolation: the two commute, and this order runs at the coarse size
            self.up = conv(ndim)(in_ch, out_ch, 1)
            self.interpolate = "bilinear" if ndim == 2 else "trilinear"
        self.up_norm = norm_layer(norm, ndim, out_ch)
        self.up_act = activation(act)
        self.gate = AttentionGate(ndim, out_ch, norm=norm) if attention else None

    def forward(self, x, skip):
        x = self.up(x)
        if self.interpolate is not None:
            x = F.interpolate(x, scale_factor=self.scale, mode=self.interpolate, align_corners=False)
        x = self.up_act(self.up_norm(x))
        if self.gate is not None:
            skip = self.gate(x, skip)
        return super().forward(torch.cat([x, skip], dim=1))


def _per_level(value, n: int, name: str) -> list:
    values = list(value) if isinstance(value, (list, tuple)) else [value] * n
    if len(values) != n:
        raise ValueError(f"{name} needs one value per level ({n}), got {len(values)}")
    return values


class UNet(nn.Module):
    """U-Net with optional residual levels (``residual``), attention-gated skips (``attention``) and
    squeeze-and-excitation in every level (``se``, a reduction ratio; 0 = none)."""

    def __init__(
        self,
        ndim,
        in_channels,
        out_channels,
        *,
        feature_maps,
        norm,
        act,
        drop,
        kernel_size,
        upsample,
        z_down,
        residual=False,
        attention=False,
        se=0,
    ):
        super().__init__()
        if not feature_maps or any(isinstance(f, bool) or not isinstance(f, int) or f < 1 for f in feature_maps):
            raise ValueError(f"feature_maps must be a non-empty list of positive integers, got {feature_maps!r}")
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size!r}")
        if upsample not in UPSAMPLE_MODES:
            raise ValueError(f"upsample must be one of {', '.join(UPSAMPLE_MODES)}, got {upsample!r}")
        depth = len(feature_maps)
        drops = _per_level(drop, depth, "dropout")
        z_downs = _per_level(z_down, depth - 1, "z_down")
        if not all(isinstance(z, bool) for z in z_downs):
            # not BiaPy's factors (1 = keep Z): a 1 read as True would silently halve Z
            raise ValueError(f"z_down must be true/false (per level), got {z_down!r}")
        # False keeps Z at full resolution for that level (anisotropic stacks); 2D ignores it
        scales = [(2, 2, 2) if ndim == 3 and z else (1, 2, 2) if ndim == 3 else (2, 2) for z in z_downs]
        self.ndim = ndim
        self.divisors = tuple(math.prod(axis) for axis in zip(*scales)) if scales else (1,) * ndim
        self.size_divisor = max(self.divisors)

        block = {"kernel_size": kernel_size, "norm": norm, "act": act, "residual": residual, "se": se}
        self.encoder = nn.ModuleList()
        channels = in_channels
        for fm, p in zip(feature_maps, drops):
            self.encoder.append(ConvBlock(ndim, channels, fm, drop=p, **block))
            channels = fm
        self.pools = nn.ModuleList(max_pool(ndim)(s) for s in scales)
        self.decoder = nn.ModuleList(
            UpBlock(
                ndim,
                feature_maps[i + 1],
                feature_maps[i],
                scale=scales[i],
                upsample=upsample,
                attention=attention,
                drop=drops[i],
                **block,
            )
            for i in reversed(range(depth - 1))
        )
        self.head = conv(ndim)(feature_maps[0], out_channels, 1)

    def forward(self, x):
        size = tuple(x.shape[2:])
        if len(size) != self.ndim:
            raise ValueError(f"expected input (N, C, {'Z, ' if self.ndim == 3 else ''}Y, X), got {tuple(x.shape)}")
        if any(s % d for s, d in zip(size, self.divisors)):
            divisor = self.size_divisor if len(set(self.divisors)) == 1 else self.divisors
            raise ValueError(f"input size {size} is not a multiple of {divisor}")
        x = self.encoder[0](x)
        skips = []
        for pool, stage in zip(self.pools, self.encoder[1:]):
            skips.append(x)
            x = stage(pool(x))
        for up, skip in zip(self.decoder, reversed(skips)):
            x = up(x, skip)
        return self.head(x)


@register_model("unet")
def unet(
    *,
    ndim,
    in_channels,
    out_channels,
    feature_maps=FEATURE_MAPS,
    norm="instance",
    activation="elu",
    dropout=0.0,
    kernel_size=3,
    upsample="transpose",
    z_down=True,
):
    """U-Net (Ronneberger et al. 2015); the defaults are BiaPy's default U-Net."""
    return UNet(
        ndim,
        in_channels,
        out_channels,
        feature_maps=feature_maps,
        norm=norm,
        act=activation,
        drop=dropout,
        kernel_size=kernel_size,
        upsample=upsample,
        z_down=z_down,
    )


@register_model("resunet")
def resunet(
    *,
    ndim,
    in_channels,
    out_channels,
    feature_maps=FEATURE_MAPS,
    norm="instance",
    activation="elu",
    dropout=0.0,
    kernel_size=3,
    upsample="transpose",
    z_down=True,
):
    """Residual U-Net: every level is a residual block (two convs plus a 1x1 projection shortcut)."""
    return UNet(
        ndim,
        in_channels,
        out_channels,
        feature_maps=feature_maps,
        norm=norm,
        act=activation,
        drop=dropout,
        kernel_size=kernel_size,
        upsample=upsample,
        z_down=z_down,
        residual=True,
    )


@register_model("attention_unet")
def attention_unet(
    *,
    ndim,
    in_channels,
    out_channels,
    feature_maps=FEATURE_MAPS,
    norm="instance",
    activation="elu",
    dropout=0.0,
    kernel_size=3,
    upsample="transpose",
    z_down=True,
):
    """Attention U-Net (Oktay et al. 2018): additive attention gates on the skip connections."""
    return UNet(
        ndim,
        in_channels,
        out_channels,
        feature_maps=feature_maps,
        norm=norm,
        act=activation,
        drop=dropout,
        kernel_size=kernel_size,
        upsample=upsample,
        z_down=z_down,
        attention=True,
    )
