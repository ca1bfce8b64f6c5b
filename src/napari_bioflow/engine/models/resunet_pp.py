"""ResUNet++ (Jha et al. 2019) for 2D and 3D: ``resunet++``.

With L = len(feature_maps) there are L - 2 down-sampling levels (``size_divisor`` 2**(L - 2); Z as ``z_down``
says):
    stem            a residual block at full resolution to feature_maps[0]
    encoder.{k-1}   level k = 1 .. L-2: squeeze-and-excitation of the level above (``se.{k-1}``), then a
                    residual block whose first conv has stride 2 (feature_maps[k])
    bridge          ASPP to feature_maps[-1]: dilated 3x3 convs (``aspp_rates``; each conv, norm, act) summed,
                    then a 1x1 conv
    decoder.{j}     j = 0 deepest; going up to level k-1: an attention unit gates the decoder features with the
                    encoder's level k-1 (norm, act, 3x3 conv and pooling of the encoder features; norm, act, 3x3
                    conv of the decoder's; summed; norm, act, 1x1 conv to one map that multiplies the decoder
                    features: ``attention.{j}``), a 2x up-sampling (``ups.{j}``), concatenation with level k-1 and
                    a residual block to feature_maps[k]
    out_aspp        ASPP from feature_maps[1] to feature_maps[0]; ``head`` a 1x1 conv (raw logits)
Residual blocks are pre-activation (norm, act, conv, norm, act, conv; the stem skips the first norm and act),
with a 3x3 conv + norm shortcut. With BiaPy's default feature maps (16-32-64-128-256), instance norm and ELU,
1 input and 1 output channel: 3,839,908 parameters in 2D.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import (
    SqueezeExcite,
    activation,
    check_input_size,
    conv,
    conv_transpose,
    dropout,
    level_scales,
    max_pool,
    norm_layer,
)
from .registry import register_model
from .unet import FEATURE_MAPS, UPSAMPLE_MODES, _per_level


class PreActBlock(nn.Module):
    def __init__(self, ndim, in_ch, out_ch, *, stride, kernel_size, norm, act, drop, first=False):
        super().__init__()
        Conv, pad = conv(ndim), kernel_size // 2
        self.pre = nn.Identity() if first else nn.Sequential(norm_layer(norm, ndim, in_ch), activation(act))
        self.conv1 = Conv(in_ch, out_ch, kernel_size, stride=stride, padding=pad)
        self.mid = nn.Sequential(norm_layer(norm, ndim, out_ch), activation(act), dropout(ndim, drop))
        self.conv2 = Conv(out_ch, out_ch, kernel_size, padding=pad)
        self.shortcut = nn.Sequential(
            Conv(in_ch, out_ch, kernel_size, stride=stride, padding=pad), norm_layer(norm, ndim, out_ch)
        )

    def forward(self, x):
        return self.conv2(self.mid(self.conv1(self.pre(x)))) + self.shortcut(x)


class ASPP(nn.Module):
    def __init__(self, ndim, in_ch, out_ch, *, rates, norm, act):
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(
                conv(ndim)(in_ch, out_ch, 3, padding=r, dilation=r), norm_layer(norm, ndim, out_ch), activation(act)
            )
            for r in rates
        )
        self.project = conv(ndim)(out_ch, out_ch, 1)

    def forward(self, x):
        return self.project(sum(branch(x) for branch in self.branches))


class SkipAttention(nn.Module):
    def __init__(self, ndim, enc_ch, dec_ch, *, scale, norm, act):
        super().__init__()
        Conv = conv(ndim)
        self.encoder = nn.Sequential(
            norm_layer(norm, ndim, enc_ch), activation(act), Conv(enc_ch, dec_ch, 3, padding=1), max_pool(ndim)(scale)
        )
        self.decoder = nn.Sequential(
            norm_layer(norm, ndim, dec_ch), activation(act), Conv(dec_ch, dec_ch, 3, padding=1)
        )
        self.attend = nn.Sequential(norm_layer(norm, ndim, dec_ch), activation(act), Conv(dec_ch, 1, 1))

    def forward(self, skip, x):
        return x * self.attend(self.encoder(skip) + self.decoder(x))


class ResUNetPlusPlus(nn.Module):
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
        aspp_rates,
        se_reduction,
    ):
        super().__init__()
        fm = list(feature_maps)
        if len(fm) < 3 or any(isinstance(f, bool) or not isinstance(f, int) or f < 1 for f in fm):
            raise ValueError(f"feature_maps must be at least 3 positive integers for ResUNet++, got {feature_maps!r}")
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size!r}")
        if upsample not in UPSAMPLE_MODES:
            raise ValueError(f"upsample must be one of {', '.join(UPSAMPLE_MODES)}, got {upsample!r}")
        if not aspp_rates or any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in aspp_rates):
            raise ValueError(f"aspp_rates must be a non-empty list of positive integers, got {aspp_rates!r}")
        depth = len(fm) - 2
        drops = _per_level(drop, len(fm), "dropout")
        scales, self.divisors = level_scales(ndim, z_down, depth)
        self.ndim, self.size_divisor, self.interpolate = ndim, max(self.divisors), upsample != "transpose"
        block = {"kernel_size": kernel_size, "norm": norm, "act": act}
        self.stem = PreActBlock(ndim, in_channels, fm[0], stride=1, drop=drops[0], first=True, **block)
        self.se = nn.ModuleList(SqueezeExcite(fm[k], se_reduction) for k in range(depth))
        self.encoder = nn.ModuleList(
            PreActBlock(ndim, fm[k - 1], fm[k], stride=scales[k - 1], drop=drops[k], **block)
            for k in range(1, depth + 1)
        )
        self.bridge = ASPP(ndim, fm[depth], fm[-1], rates=aspp_rates, norm=norm, act=act)
        self.attention, self.ups, self.decoder = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        channels = fm[-1]
        for k in reversed(range(1, depth + 1)):
            self.attention.append(SkipAttention(ndim, fm[k - 1], channels, scale=scales[k - 1], norm=norm, act=act))
            self.ups.append(
                nn.Identity()
                if self.interpolate
                else conv_transpose(ndim)(channels, channels, scales[k - 1], stride=scales[k - 1])
            )
            self.decoder.append(PreActBlock(ndim, channels + fm[k - 1], fm[k], stride=1, drop=drops[k], **block))
            channels = fm[k]
        self.out_aspp = ASPP(ndim, fm[1], fm[0], rates=aspp_rates, norm=norm, act=act)
        self.head = conv(ndim)(fm[0], out_channels, 1)

    def forward(self, x):
        check_input_size(x, self.ndim, self.divisors)
        x = self.stem(x)
        skips = []
        for se, block in zip(self.se, self.encoder):
            x = se(x)
            skips.append(x)
            x = block(x)
        x = self.bridge(x)
        for k, (attend, up, block) in enumerate(zip(self.attention, self.ups, self.decoder)):
            skip = skips[-1 - k]
            x = attend(skip, x)
            if self.interpolate:
                x = F.interpolate(
                    x, size=skip.shape[2:], mode="bilinear" if self.ndim == 2 else "trilinear", align_corners=False
                )
            else:
                x = up(x)
            x = block(torch.cat([x, skip], dim=1))
        return self.head(self.out_aspp(x))


@register_model("resunet++")
def resunet_plus_plus(
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
    aspp_rates=(6, 12, 18),
    se_reduction=16,
):
    """ResUNet++ (Jha et al. 2019): residual levels, squeeze-and-excitation, ASPP and attention on the skips."""
    return ResUNetPlusPlus(
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
        aspp_rates=aspp_rates,
        se_reduction=se_reduction,
    )
