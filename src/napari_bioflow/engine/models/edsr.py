"""EDSR (Lim et al. 2017) at scale x1 for image-to-image, 2D: ``edsr``.

A 3x3 conv head to ``n_feats`` maps, ``n_resblocks`` residual blocks without batch norm (conv, ReLU, conv,
scaled by ``res_scale`` and added), a 3x3 conv closing the body, a global skip from the head, and a 3x3 conv
tail to ``out_channels`` (linear output). No upsampling: output size = input size, ``size_divisor`` 1.
With the defaults (EDSR-baseline's 64 maps x 16 blocks; residual scaling 0.1 as in EDSR's large model, for
stable training) that is 1,219,841 parameters for 1 input and 1 output channel.

Parameter names: ``head``, ``body.{i}.conv1 / conv2``, ``body_conv``, ``tail``.
"""

from __future__ import annotations

from torch import nn

from .registry import register_model
from .vit import check_positive_int


class ResBlock(nn.Module):
    def __init__(self, n_feats, res_scale):
        super().__init__()
        self.conv1 = nn.Conv2d(n_feats, n_feats, 3, padding=1)
        self.act = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(n_feats, n_feats, 3, padding=1)
        self.res_scale = res_scale

    def forward(self, x):
        return x + self.conv2(self.act(self.conv1(x))) * self.res_scale


class EDSR(nn.Module):
    def __init__(self, in_channels, out_channels, *, n_feats, n_resblocks, res_scale):
        super().__init__()
        check_positive_int(n_feats, "n_feats")
        check_positive_int(n_resblocks, "n_resblocks")
        if isinstance(res_scale, bool) or not isinstance(res_scale, (int, float)) or res_scale <= 0:
            raise ValueError(f"res_scale must be a positive number, got {res_scale!r}")
        self.head = nn.Conv2d(in_channels, n_feats, 3, padding=1)
        self.body = nn.Sequential(*[ResBlock(n_feats, float(res_scale)) for _ in range(n_resblocks)])
        self.body_conv = nn.Conv2d(n_feats, n_feats, 3, padding=1)
        self.tail = nn.Conv2d(n_feats, out_channels, 3, padding=1)

    def forward(self, x):
        if x.ndim != 4:
            raise ValueError(f"expected input (N, C, Y, X), got {tuple(x.shape)}")
        x = self.head(x)
        return self.tail(x + self.body_conv(self.body(x)))


@register_model("edsr", ndims=(2,), tags=("restoration",))
def edsr(*, ndim, in_channels, out_channels, n_feats=64, n_resblocks=16, res_scale=0.1):
    """EDSR (Lim et al. 2017), scale x1: residual blocks without batch norm, residual scaling, global skip."""
    return EDSR(in_channels, out_channels, n_feats=n_feats, n_resblocks=n_resblocks, res_scale=res_scale)
