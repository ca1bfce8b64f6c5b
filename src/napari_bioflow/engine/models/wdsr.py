"""WDSR (Yu et al. 2018, "Wide activation for efficient and accurate image super-resolution") at scale x1 for
image-to-image, 2D: ``wdsr``.

Every conv is weight-normalised (``torch.nn.utils.parametrizations.weight_norm``: a direction and a per-filter
length). A 3x3 conv head to ``n_feats`` maps; ``n_resblocks`` wide-activation residual blocks (3x3 conv widening
to ``n_feats * expansion`` maps, ReLU, 3x3 conv back to ``n_feats``, added to the block input); a 3x3 conv tail to
``out_channels`` (linear). The input is added to the output (a global skip; through a weight-normalised 5x5 conv
when the channel counts differ). As in WDSR, the lengths start at 1 (head, tail, skip), 2 (widening convs) and
1/sqrt(n_resblocks) (closing convs, so the residual sum starts small), biases at 0. No upsampling (x1): output
size = input size, ``size_divisor`` 1. The defaults are what BiaPy builds (32 maps, 8 blocks, 6x wide): 888,962
parameters for 1 input and 1 output channel.

Parameter names: ``head``, ``body.{i}.conv1 / conv2``, ``tail``, ``skip``; each conv's ``weight`` is stored as
``parametrizations.weight.original0`` (length) and ``original1`` (direction).
"""

from __future__ import annotations

import math

from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from .registry import register_model
from .vit import check_positive_int


def _wn_conv(in_ch, out_ch, kernel_size, length):
    conv = weight_norm(nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2))
    nn.init.constant_(conv.parametrizations.weight.original0, length)
    nn.init.zeros_(conv.bias)
    return conv


class WideBlock(nn.Module):
    def __init__(self, n_feats, expansion, res_scale):
        super().__init__()
        wide = round(n_feats * expansion)
        self.conv1 = _wn_conv(n_feats, wide, 3, 2.0)
        self.act = nn.ReLU(inplace=True)
        self.conv2 = _wn_conv(wide, n_feats, 3, res_scale)

    def forward(self, x):
        return x + self.conv2(self.act(self.conv1(x)))


class WDSR(nn.Module):
    def __init__(self, in_channels, out_channels, *, n_feats, n_resblocks, expansion):
        super().__init__()
        check_positive_int(n_feats, "n_feats")
        check_positive_int(n_resblocks, "n_resblocks")
        if isinstance(expansion, bool) or not isinstance(expansion, (int, float)) or round(n_feats * expansion) < 1:
            raise ValueError(f"expansion must be a positive number, got {expansion!r}")
        self.head = _wn_conv(in_channels, n_feats, 3, 1.0)
        self.body = nn.Sequential(
            *[WideBlock(n_feats, expansion, 1 / math.sqrt(n_resblocks)) for _ in range(n_resblocks)]
        )
        self.tail = _wn_conv(n_feats, out_channels, 3, 1.0)
        self.skip = _wn_conv(in_channels, out_channels, 5, 1.0) if in_channels != out_channels else None

    def forward(self, x):
        if x.ndim != 4:
            raise ValueError(f"expected input (N, C, Y, X), got {tuple(x.shape)}")
        y = self.tail(self.body(self.head(x)))
        return y + (x if self.skip is None else self.skip(x))


@register_model("wdsr", ndims=(2,), tags=("restoration",))
def wdsr(*, ndim, in_channels, out_channels, n_feats=32, n_resblocks=8, expansion=6):
    """WDSR (Yu et al. 2018), scale x1: weight-normalised residual blocks with wide activation, global skip."""
    return WDSR(in_channels, out_channels, n_feats=n_feats, n_resblocks=n_resblocks, expansion=expansion)
