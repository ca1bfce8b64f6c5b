"""RCAN (Zhang et al. 2018) at scale x1 for image-to-image, 2D: ``rcan``.

A 3x3 conv head, ``n_resgroups`` residual groups, each of ``n_resblocks`` residual channel-attention blocks
(conv, ReLU, conv, channel attention: global average pool, 1x1 conv down by ``reduction``, ReLU, 1x1 conv
up, sigmoid, rescaling the maps; added to the block input) and a closing 3x3 conv with the group's own
skip, a 3x3 conv closing the body, a global skip and a 3x3 conv tail to ``out_channels`` (linear).
No upsampling: output size = input size, ``size_divisor`` 1. The paper's 10 groups x 20 blocks are too
slow for a CPU; the defaults are 4 x 4 at 64 maps (about as heavy as EDSR-baseline).

Parameter names: ``head``, ``body.{g}.blocks.{b}.conv1 / conv2 / attention.down / attention.up``,
``body.{g}.conv``, ``body_conv``, ``tail``.
"""

from __future__ import annotations

from torch import nn

from .registry import register_model
from .vit import check_positive_int


class ChannelAttention(nn.Module):
    def __init__(self, channels, reduction):
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.down = nn.Conv2d(channels, hidden, 1)
        self.act = nn.ReLU(inplace=True)
        self.up = nn.Conv2d(hidden, channels, 1)

    def forward(self, x):
        return x * self.up(self.act(self.down(self.pool(x)))).sigmoid()


class RCAB(nn.Module):
    def __init__(self, n_feats, reduction):
        super().__init__()
        self.conv1 = nn.Conv2d(n_feats, n_feats, 3, padding=1)
        self.act = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(n_feats, n_feats, 3, padding=1)
        self.attention = ChannelAttention(n_feats, reduction)

    def forward(self, x):
        return x + self.attention(self.conv2(self.act(self.conv1(x))))


class ResidualGroup(nn.Module):
    def __init__(self, n_feats, n_resblocks, reduction):
        super().__init__()
        self.blocks = nn.Sequential(*[RCAB(n_feats, reduction) for _ in range(n_resblocks)])
        self.conv = nn.Conv2d(n_feats, n_feats, 3, padding=1)

    def forward(self, x):
        return x + self.conv(self.blocks(x))


class RCAN(nn.Module):
    def __init__(self, in_channels, out_channels, *, n_resgroups, n_resblocks, n_feats, reduction):
        super().__init__()
        for value, name in (
            (n_resgroups, "n_resgroups"),
            (n_resblocks, "n_resblocks"),
            (n_feats, "n_feats"),
            (reduction, "reduction"),
        ):
            check_positive_int(value, name)
        self.head = nn.Conv2d(in_channels, n_feats, 3, padding=1)
        self.body = nn.Sequential(*[ResidualGroup(n_feats, n_resblocks, reduction) for _ in range(n_resgroups)])
        self.body_conv = nn.Conv2d(n_feats, n_feats, 3, padding=1)
        self.tail = nn.Conv2d(n_feats, out_channels, 3, padding=1)

    def forward(self, x):
        if x.ndim != 4:
            raise ValueError(f"expected input (N, C, Y, X), got {tuple(x.shape)}")
        x = self.head(x)
        return self.tail(x + self.body_conv(self.body(x)))


@register_model("rcan", ndims=(2,), tags=("restoration",))
def rcan(*, ndim, in_channels, out_channels, n_resgroups=4, n_resblocks=4, n_feats=64, reduction=16):
    """RCAN (Zhang et al. 2018), scale x1: residual-in-residual groups of channel-attention blocks."""
    return RCAN(
        in_channels,
        out_channels,
        n_resgroups=n_resgroups,
        n_resblocks=n_resblocks,
        n_feats=n_feats,
        reduction=reduction,
    )
