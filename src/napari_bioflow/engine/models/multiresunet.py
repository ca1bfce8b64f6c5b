"""MultiResUNet (Ibtehaz & Rahman 2020) for 2D and 3D: ``multiresunet``.

A U-Net whose levels are MultiRes blocks and whose skips go through Res paths:
    MultiRes block (width W, ``alpha`` = 1.67): three chained 3x3 convs (each conv, norm, act) of
        int(0.167 aW), int(0.333 aW) and int(0.5 aW) maps, so the 2nd and 3rd see 5x5 and 7x7 neighbourhoods;
        their outputs are concatenated and normed, a 1x1 conv + norm shortcut of the input is added, then norm
        and activation.
    Res path of level i (of n levels): n - 1 - i steps, each a 3x3 conv (norm, act) plus a 1x1 conv + norm
        shortcut, summed, then norm and activation; it brings the encoder's features to W maps before the skip.
Down: 2x max-pooling; up: 2x transposed conv to W maps, concatenated with the Res path, then a MultiRes block;
``head`` a 1x1 conv (raw logits). The level widths W are ``feature_maps``; the defaults are the paper's (and
BiaPy's) 32-64-128-256-512 with batch norm and ReLU: 7,251,074 parameters in 2D for 1 input and 1 output channel.
``size_divisor`` 2**(levels - 1) (Z: as ``z_down`` says).

Parameter names: ``encoder.{i}.shortcut / conv3 / conv5 / conv7 (.conv, .norm) / norm_cat / norm_out``,
``res_paths.{i}.{s}.conv / shortcut``, ``ups.{j}``, ``decoder.{j}.*`` (j = 0 deepest), ``head``.
"""

from __future__ import annotations

import torch
from torch import nn

from .blocks import activation, check_input_size, conv, conv_transpose, level_scales, max_pool, norm_layer
from .registry import register_model


class ConvNorm(nn.Module):
    """A conv (padding keeps the size), its norm and, unless ``act`` is None, an activation."""

    def __init__(self, ndim, in_ch, out_ch, kernel_size, *, norm, act):
        super().__init__()
        self.conv = conv(ndim)(in_ch, out_ch, kernel_size, padding=kernel_size // 2)
        self.norm = norm_layer(norm, ndim, out_ch)
        self.act = activation(act) if act is not None else nn.Identity()

    def forward(self, x):
        return self.act(self.norm(self.conv(x)))


def block_width(width: int, alpha: float) -> tuple[int, int, int]:
    w = width * alpha
    return int(w * 0.167), int(w * 0.333), int(w * 0.5)


class MultiResBlock(nn.Module):
    def __init__(self, ndim, in_ch, width, *, alpha, norm, act):
        super().__init__()
        c3, c5, c7 = block_width(width, alpha)
        if min(c3, c5, c7) < 1:
            raise ValueError(f"feature map {width} x alpha {alpha} leaves a MultiRes block without maps")
        self.out_channels = c3 + c5 + c7
        self.shortcut = ConvNorm(ndim, in_ch, self.out_channels, 1, norm=norm, act=None)
        self.conv3 = ConvNorm(ndim, in_ch, c3, 3, norm=norm, act=act)
        self.conv5 = ConvNorm(ndim, c3, c5, 3, norm=norm, act=act)
        self.conv7 = ConvNorm(ndim, c5, c7, 3, norm=norm, act=act)
        self.norm_cat = norm_layer(norm, ndim, self.out_channels)
        self.norm_out = norm_layer(norm, ndim, self.out_channels)
        self.act = activation(act)

    def forward(self, x):
        a = self.conv3(x)
        b = self.conv5(a)
        c = self.conv7(b)
        y = self.norm_cat(torch.cat([a, b, c], dim=1)) + self.shortcut(x)
        return self.act(self.norm_out(y))


class ResPathStep(nn.Module):
    def __init__(self, ndim, in_ch, out_ch, *, norm, act):
        super().__init__()
        self.conv = ConvNorm(ndim, in_ch, out_ch, 3, norm=norm, act=act)
        self.shortcut = ConvNorm(ndim, in_ch, out_ch, 1, norm=norm, act=None)
        self.norm = norm_layer(norm, ndim, out_ch)
        self.act = activation(act)

    def forward(self, x):
        return self.act(self.norm(self.conv(x) + self.shortcut(x)))


class MultiResUNet(nn.Module):
    def __init__(self, ndim, in_channels, out_channels, *, feature_maps, alpha, norm, act, z_down):
        super().__init__()
        if not feature_maps or any(isinstance(f, bool) or not isinstance(f, int) or f < 1 for f in feature_maps):
            raise ValueError(f"feature_maps must be a non-empty list of positive integers, got {feature_maps!r}")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha <= 0:
            raise ValueError(f"alpha must be a positive number, got {alpha!r}")
        n = len(feature_maps)
        scales, self.divisors = level_scales(ndim, z_down, n - 1)
        self.ndim, self.size_divisor = ndim, max(self.divisors)
        kw = {"alpha": alpha, "norm": norm, "act": act}
        self.encoder = nn.ModuleList()
        channels = in_channels
        for width in feature_maps:
            self.encoder.append(MultiResBlock(ndim, channels, width, **kw))
            channels = self.encoder[-1].out_channels
        self.pools = nn.ModuleList(max_pool(ndim)(s) for s in scales)
        self.res_paths = nn.ModuleList(
            nn.Sequential(
                *[
                    ResPathStep(
                        ndim,
                        self.encoder[i].out_channels if step == 0 else feature_maps[i],
                        feature_maps[i],
                        norm=norm,
                        act=act,
                    )
                    for step in range(n - 1 - i)
                ]
            )
            for i in range(n - 1)
        )
        self.ups, self.decoder = nn.ModuleList(), nn.ModuleList()
        for i in reversed(range(n - 1)):
            self.ups.append(conv_transpose(ndim)(channels, feature_maps[i], scales[i], stride=scales[i]))
            self.decoder.append(MultiResBlock(ndim, 2 * feature_maps[i], feature_maps[i], **kw))
            channels = self.decoder[-1].out_channels
        self.head = conv(ndim)(channels, out_channels, 1)

    def forward(self, x):
        check_input_size(x, self.ndim, self.divisors)
        skips = []
        x = self.encoder[0](x)
        for pool, block, path in zip(self.pools, self.encoder[1:], self.res_paths):
            skips.append(path(x))
            x = block(pool(x))
        for up, block, skip in zip(self.ups, self.decoder, reversed(skips)):
            x = block(torch.cat([up(x), skip], dim=1))
        return self.head(x)


@register_model("multiresunet")
def multiresunet(
    *,
    ndim,
    in_channels,
    out_channels,
    feature_maps=(32, 64, 128, 256, 512),
    alpha=1.67,
    norm="batch",
    activation="relu",
    z_down=True,
):
    """MultiResUNet (Ibtehaz & Rahman 2020): MultiRes blocks and Res-path skips; the paper's sizes."""
    return MultiResUNet(
        ndim,
        in_channels,
        out_channels,
        feature_maps=feature_maps,
        alpha=alpha,
        norm=norm,
        act=activation,
        z_down=z_down,
    )
