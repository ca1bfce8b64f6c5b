"""DFCAN (Qiao et al. 2021, Nature Methods) at scale x1 for image-to-image, 2D: ``dfcan``.

Fourier channel attention: each block (FCAB) applies conv-GELU-conv-GELU, then takes the 2D FFT of those
maps, its amplitude to the power 0.8 (the power spectrum, compressed) with zero frequency centred,
a conv-ReLU over the spectrum, a global average pool and a squeeze-excite pair (1x1 conv down by
``reduction``, ReLU, 1x1 conv up, sigmoid) that rescales the maps; the block adds its input. ``n_groups``
residual groups of ``n_blocks`` FCABs sit between a conv-GELU head and a conv-GELU + conv tail, as in the
paper's 4 x 4 at 64 maps (the defaults). At scale x1 there is no pixel shuffle; the final conv is linear
(the paper's sigmoid would clip normalised intensities above 1). ``size_divisor`` 1. The FFT runs in
float32 under autocast.

Parameter names: ``head``, ``body.{g}.blocks.{b}.conv1 / conv2 / attention.spectrum_conv / attention.down /
attention.up``, ``body_conv``, ``tail``.
"""

from __future__ import annotations

import torch
from torch import nn

from .registry import register_model
from .vit import check_positive_int

GAMMA = 0.8  # exponent on the FFT amplitude


class FourierChannelAttention(nn.Module):
    def __init__(self, channels, reduction):
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.spectrum_conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.down = nn.Conv2d(channels, hidden, 1)
        self.up = nn.Conv2d(hidden, channels, 1)

    def forward(self, x):
        dims = (-2, -1)
        with torch.autocast(device_type="cuda" if x.is_cuda else "cpu", enabled=False):  # also on "meta" (memory.py)
            spectrum = torch.fft.fftshift(torch.fft.fft2(x.float(), dim=dims), dim=dims)
            spectrum = (spectrum.abs() + 1e-8).pow(GAMMA)
        weights = torch.relu(self.spectrum_conv(spectrum.to(x.dtype)))
        weights = self.up(torch.relu(self.down(self.pool(weights)))).sigmoid()
        return x * weights


class FCAB(nn.Module):
    def __init__(self, n_feats, reduction):
        super().__init__()
        self.conv1 = nn.Conv2d(n_feats, n_feats, 3, padding=1)
        self.conv2 = nn.Conv2d(n_feats, n_feats, 3, padding=1)
        self.act = nn.GELU()
        self.attention = FourierChannelAttention(n_feats, reduction)

    def forward(self, x):
        return x + self.attention(self.act(self.conv2(self.act(self.conv1(x)))))


class ResidualGroup(nn.Module):
    def __init__(self, n_feats, n_blocks, reduction):
        super().__init__()
        self.blocks = nn.Sequential(*[FCAB(n_feats, reduction) for _ in range(n_blocks)])

    def forward(self, x):
        return x + self.blocks(x)


class DFCAN(nn.Module):
    def __init__(self, in_channels, out_channels, *, n_feats, n_groups, n_blocks, reduction):
        super().__init__()
        for value, name in (
            (n_feats, "n_feats"),
            (n_groups, "n_groups"),
            (n_blocks, "n_blocks"),
            (reduction, "reduction"),
        ):
            check_positive_int(value, name)
        self.head = nn.Conv2d(in_channels, n_feats, 3, padding=1)
        self.body = nn.Sequential(*[ResidualGroup(n_feats, n_blocks, reduction) for _ in range(n_groups)])
        self.body_conv = nn.Conv2d(n_feats, n_feats, 3, padding=1)
        self.tail = nn.Conv2d(n_feats, out_channels, 3, padding=1)
        self.act = nn.GELU()

    def forward(self, x):
        if x.ndim != 4:
            raise ValueError(f"expected input (N, C, Y, X), got {tuple(x.shape)}")
        x = self.body(self.act(self.head(x)))
        return self.tail(self.act(self.body_conv(x)))


@register_model("dfcan", ndims=(2,), tags=("restoration",))
def dfcan(*, ndim, in_channels, out_channels, n_feats=64, n_groups=4, n_blocks=4, reduction=16):
    """DFCAN (Qiao et al. 2021), scale x1: residual groups of Fourier channel-attention blocks."""
    return DFCAN(in_channels, out_channels, n_feats=n_feats, n_groups=n_groups, n_blocks=n_blocks, reduction=reduction)
