"""UNETR (Hatamizadeh et al. 2022): a ViT encoder with a convolutional U-Net decoder, 2D and 3D:
``unetr`` (encoder as ``mae``'s default) and the presets of BiaPy's model menu on 16-pixel tokens, named after
the standard ViT sizes (embedding width / blocks / heads):
    unetr_mini    ViT-Ti/16   192 / 12 / 3     UNETR-Mini
    unetr_small   ViT-S/16    384 / 12 / 6     UNETR-Small
    unetr_base    ViT-B/16    768 / 12 / 12    UNETR-Base (BiaPy's VIT_* defaults)
``unetr_vit_base`` is the same network as ``unetr_base`` (same defaults, same parameter names, so checkpoints of
either load into the other), registered earlier under the name of its encoder (``mae_vit_base``'s); both stay.
Every preset keeps all options: a preset is only a different set of defaults.

The encoder is ``vit.ViTEncoder``, the very class the masked autoencoder uses, under the same name
``encoder``: for the same encoder options (patch_size, embed_dim, depth, num_heads, mlp_ratio, img_size,
pos_embed) every ``encoder.*`` tensor of an MAE checkpoint has a same-named, same-shaped tensor here, so
pretrained weights load by name. The decoder is new (randomly initialised).

``patch_size`` must be a power of two, 2**n. The decoder has n levels below the token grid: level k
(k = 0 the input resolution, k = n the token grid) has ``feature_size * 2**k`` channels. Skips:
    level 0          ``stem``: a residual conv block on the input itself
    level 1..n-1     ``skips.{k-1}``: the output of encoder block round(depth * k / n) (depth/4, depth/2,
                     3 depth/4 for 16-pixel tokens), reshaped to the token grid and brought up by n - k
                     (2x transposed conv, conv, norm, act) steps
    level n          the encoder's final (normed) tokens
``decoder.{j}`` (j = 0 deepest) upsamples level n-j to n-j-1 by a 2x transposed conv, concatenates that
level's skip and applies a residual conv block (``unet.UpBlock``); ``head`` is a 1x1 conv to out_channels
(raw logits). ``size_divisor`` is ``patch_size``.
"""

from __future__ import annotations

import math

from torch import nn

from .blocks import activation, conv, conv_transpose, norm_layer
from .registry import register_model
from .unet import ConvBlock, UpBlock
from .vit import ViTEncoder, check_positive_int


class UpProject(nn.Module):
    """2x transposed conv, 3x3 conv, norm, act: one step of bringing ViT features towards the input size."""

    def __init__(self, ndim, in_ch, out_ch, *, norm, act):
        super().__init__()
        self.up = conv_transpose(ndim)(in_ch, out_ch, 2, stride=2)
        self.conv = conv(ndim)(out_ch, out_ch, 3, padding=1)
        self.norm = norm_layer(norm, ndim, out_ch)
        self.act = activation(act)

    def forward(self, x):
        return self.act(self.norm(self.conv(self.up(x))))


class UNETR(nn.Module):
    def __init__(
        self,
        ndim,
        in_channels,
        out_channels,
        *,
        patch_size,
        embed_dim,
        depth,
        num_heads,
        mlp_ratio,
        img_size,
        pos_embed,
        feature_size,
        norm,
        act,
    ):
        super().__init__()
        check_positive_int(patch_size, "patch_size")
        check_positive_int(feature_size, "feature_size")
        n = int(math.log2(patch_size)) if patch_size > 1 else 0
        if patch_size < 2 or 2**n != patch_size:
            raise ValueError(f"UNETR needs a power-of-two token size (patch_size) of at least 2, got {patch_size!r}")
        self.ndim, self.size_divisor = ndim, patch_size
        self.encoder = ViTEncoder(
            ndim,
            in_channels,
            patch_size=patch_size,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            img_size=img_size,
            pos_embed=pos_embed,
        )
        # 1-based encoder blocks feeding levels 1..n-1
        self.skip_blocks = [min(max(math.floor(depth * k / n + 0.5), 1), depth) for k in range(1, n)]
        ch = [feature_size * 2**k for k in range(n)] + [embed_dim]
        block = {"kernel_size": 3, "norm": norm, "act": act, "drop": 0.0, "residual": True}
        self.stem = ConvBlock(ndim, in_channels, ch[0], **block)
        self.skips = nn.ModuleList(
            nn.Sequential(
                *[
                    UpProject(ndim, embed_dim if step == 0 else ch[k], ch[k], norm=norm, act=act)
                    for step in range(n - k)
                ]
            )
            for k in range(1, n)
        )
        self.decoder = nn.ModuleList(
            UpBlock(ndim, ch[k + 1], ch[k], scale=2, upsample="transpose", attention=False, **block)
            for k in reversed(range(n))
        )
        self.head = conv(ndim)(ch[0], out_channels, 1)

    def _to_grid(self, tokens, grid):
        return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *grid)

    def forward(self, x):
        tokens, collected, grid = self.encoder(x, collect=set(self.skip_blocks))
        by_block = dict(zip(sorted(set(self.skip_blocks)), collected))
        skips = [self.stem(x)] + [
            proj(self._to_grid(by_block[b], grid)) for proj, b in zip(self.skips, self.skip_blocks)
        ]
        y = self._to_grid(tokens[:, 1:], grid)
        for up, skip in zip(self.decoder, reversed(skips)):
            y = up(y, skip)
        return self.head(y)


def _build(ndim, in_channels, out_channels, *, activation, **options):
    return UNETR(ndim, in_channels, out_channels, act=activation, **options)


def _preset(name: str, doc: str, *, embed_dim: int, depth: int, num_heads: int):
    """Register a UNETR builder whose keyword-only options (the registry's schema) default to this encoder size."""
    import inspect

    defaults = {
        "patch_size": 16,
        "embed_dim": embed_dim,
        "depth": depth,
        "num_heads": num_heads,
        "mlp_ratio": 4.0,
        "img_size": 256,
        "pos_embed": "sincos",
        "feature_size": 16,
        "norm": "instance",
        "activation": "relu",
    }

    def builder(*, ndim, in_channels, out_channels, **options):
        return _build(ndim, in_channels, out_channels, **{**defaults, **options})

    kw = inspect.Parameter.KEYWORD_ONLY
    builder.__signature__ = inspect.Signature(
        [inspect.Parameter(n, kw) for n in ("ndim", "in_channels", "out_channels")]
        + [inspect.Parameter(k, kw, default=v) for k, v in defaults.items()]
    )
    builder.__name__ = builder.__qualname__ = name
    builder.__doc__ = doc
    return register_model(name, ndims=(2, 3))(builder)


unetr = _preset(
    "unetr",
    "UNETR whose encoder matches ``mae``'s default, so a default MAE checkpoint starts it.",
    embed_dim=256,
    depth=6,
    num_heads=4,
)
unetr_vit_base = _preset(
    "unetr_vit_base",
    "UNETR on a ViT-B/16 encoder (BiaPy's UNETR-Base), matching ``mae_vit_base``'s encoder.",
    embed_dim=768,
    depth=12,
    num_heads=12,
)
register_model("unetr_base", ndims=(2, 3))(unetr_vit_base)  # BiaPy's name for the same network
unetr_mini = _preset("unetr_mini", "UNETR-Mini: UNETR on a ViT-Ti/16 encoder.", embed_dim=192, depth=12, num_heads=3)
unetr_small = _preset("unetr_small", "UNETR-Small: UNETR on a ViT-S/16 encoder.", embed_dim=384, depth=12, num_heads=6)
