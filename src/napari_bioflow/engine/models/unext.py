"""U-NeXt V1 for 2D and 3D: a U-Net of ConvNeXt (Liu et al. 2022) blocks, BiaPy's ``unext_v1``.

    stem            a conv with kernel = stride = ``stem_size`` (patchify; along Z too unless the first ``z_down``
                    is false) and a LayerNorm over channels, to feature_maps[0]
    encoder.{i}     level i: ``cn_layers[i]`` ConvNeXt blocks (depthwise ``kernel_size`` conv, LayerNorm, linear to
                    4x the maps, GELU, linear back, a learned per-channel scale starting at ``layer_scale``,
                    stochastic depth, added to the input)
    downs.{i}       LayerNorm, then a 2x2 conv with stride 2 to the next level's maps (Z as ``z_down`` says)
    bottleneck      ConvNeXt blocks at the deepest level
    ups.{j}         j = 0 deepest: LayerNorm, a 2x transposed conv to level i's maps; concatenated with level i,
    merges.{j}      a 1x1 conv back to level i's maps, then
    decoder.{j}     that level's ConvNeXt blocks
    unstem          a transposed conv undoing the stem, LayerNorm; ``head`` a 1x1 conv (raw logits)
The stochastic depth rate grows linearly from 0 (first encoder block) to ``drop_path`` (last bottleneck block);
each decoder level reuses its encoder level's rates. The defaults are BiaPy's U_NeXt_V1 defaults (feature maps
32-64-128-256, 2 blocks per level, 7x7 kernels, layer scale 1e-6, stochastic depth 0.1, stem 2): 2,212,129
parameters in 2D for 1 input and 1 output channel; ``size_divisor`` stem_size * 2**(levels - 1) = 16.
"""

from __future__ import annotations

import torch
from torch import nn

from .blocks import check_input_size, conv, conv_transpose, level_scales
from .registry import register_model
from .vit import check_positive_int


class ChannelNorm(nn.LayerNorm):
    """LayerNorm over the channels of a (N, C, ...) tensor."""

    def __init__(self, channels):
        super().__init__(channels, eps=1e-6)

    def forward(self, x):
        return super().forward(x.movedim(1, -1)).movedim(-1, 1)


class ConvNeXtBlock(nn.Module):
    def __init__(self, ndim, dim, *, kernel_size, layer_scale, drop_path):
        super().__init__()
        self.dwconv = conv(ndim)(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), float(layer_scale))) if layer_scale > 0 else None
        self.drop_path = drop_path

    def forward(self, x):
        y = self.fc2(self.act(self.fc1(self.norm(self.dwconv(x).movedim(1, -1)))))
        if self.gamma is not None:
            y = y * self.gamma
        y = y.movedim(-1, 1)
        if self.training and self.drop_path > 0:  # stochastic depth: drop the whole branch per sample
            keep = 1 - self.drop_path
            y = y * torch.empty(y.shape[0], *[1] * (y.ndim - 1), device=y.device, dtype=y.dtype).bernoulli_(keep) / keep
        return x + y


class UNeXt(nn.Module):
    def __init__(
        self,
        ndim,
        in_channels,
        out_channels,
        *,
        feature_maps,
        cn_layers,
        kernel_size,
        layer_scale,
        drop_path,
        stem_size,
        z_down,
    ):
        super().__init__()
        fm, n = list(feature_maps), len(feature_maps)
        if not fm or any(isinstance(f, bool) or not isinstance(f, int) or f < 1 for f in fm):
            raise ValueError(f"feature_maps must be a non-empty list of positive integers, got {feature_maps!r}")
        layers = list(cn_layers) if isinstance(cn_layers, (list, tuple)) else [cn_layers] * n
        if len(layers) != n or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in layers):
            raise ValueError(f"cn_layers needs one positive integer per level ({n}), got {cn_layers!r}")
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size!r}")
        if not isinstance(drop_path, (int, float)) or isinstance(drop_path, bool) or not 0 <= drop_path < 1:
            raise ValueError(f"drop_path must be in [0, 1), got {drop_path!r}")
        if not isinstance(layer_scale, (int, float)) or isinstance(layer_scale, bool) or layer_scale < 0:
            raise ValueError(f"layer_scale must be a number >= 0, got {layer_scale!r}")
        check_positive_int(stem_size, "stem_size")
        scales, divisors = level_scales(ndim, z_down, n - 1)
        z_stem = stem_size if ndim == 2 or scales == [] or scales[0][0] == 2 else 1
        stem = (stem_size,) * ndim if ndim == 2 else (z_stem, stem_size, stem_size)
        self.ndim, self.divisors = ndim, tuple(d * s for d, s in zip(divisors, stem))
        self.size_divisor = max(self.divisors)
        total = sum(layers)
        rates = [drop_path * i / max(total - 1, 1) for i in range(total)]
        per_level = [rates[sum(layers[:i]) : sum(layers[: i + 1])] for i in range(n)]

        def stage(i):
            return nn.Sequential(
                *[
                    ConvNeXtBlock(ndim, fm[i], kernel_size=kernel_size, layer_scale=layer_scale, drop_path=p)
                    for p in per_level[i]
                ]
            )

        Conv, Up = conv(ndim), conv_transpose(ndim)
        self.stem = nn.Sequential(Conv(in_channels, fm[0], stem, stride=stem), ChannelNorm(fm[0]))
        self.encoder = nn.ModuleList(stage(i) for i in range(n - 1))
        self.downs = nn.ModuleList(
            nn.Sequential(ChannelNorm(fm[i]), Conv(fm[i], fm[i + 1], scales[i], stride=scales[i])) for i in range(n - 1)
        )
        self.bottleneck = stage(n - 1)
        levels = list(reversed(range(n - 1)))
        self.ups = nn.ModuleList(
            nn.Sequential(ChannelNorm(fm[i + 1]), Up(fm[i + 1], fm[i], scales[i], stride=scales[i])) for i in levels
        )
        self.merges = nn.ModuleList(Conv(2 * fm[i], fm[i], 1) for i in levels)
        self.decoder = nn.ModuleList(stage(i) for i in levels)
        self.unstem = nn.Sequential(Up(fm[0], fm[0], stem, stride=stem), ChannelNorm(fm[0]))
        self.head = Conv(fm[0], out_channels, 1)
        self.apply(_init)

    def forward(self, x):
        check_input_size(x, self.ndim, self.divisors)
        x = self.stem(x)
        skips = []
        for stage, down in zip(self.encoder, self.downs):
            x = stage(x)
            skips.append(x)
            x = down(x)
        x = self.bottleneck(x)
        for up, merge, stage, skip in zip(self.ups, self.merges, self.decoder, reversed(skips)):
            x = stage(merge(torch.cat([up(x), skip], dim=1)))
        return self.head(self.unstem(x))


def _init(m):
    # as BiaPy's U-NeXt: Xavier-uniform weights and zero biases for convs and linears
    if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear)):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


@register_model("unext_v1")
def unext_v1(
    *,
    ndim,
    in_channels,
    out_channels,
    feature_maps=(32, 64, 128, 256),
    cn_layers=(2, 2, 2, 2),
    kernel_size=7,
    layer_scale=1e-6,
    drop_path=0.1,
    stem_size=2,
    z_down=True,
):
    """U-NeXt V1: a U-Net of ConvNeXt blocks with a patchifying stem (BiaPy's unext_v1 defaults)."""
    return UNeXt(
        ndim,
        in_channels,
        out_channels,
        feature_maps=feature_maps,
        cn_layers=cn_layers,
        kernel_size=kernel_size,
        layer_scale=layer_scale,
        drop_path=drop_path,
        stem_size=stem_size,
        z_down=z_down,
    )
