"""Image classifiers (one class per image, 2D or 3D): ``vit`` and ``simple_cnn``. EfficientNets: efficientnet.py.

``vit`` reuses the MAE's encoder class (timm ``Block``s over 2D or 3D tokens) under the name ``encoder``, so an
MAE checkpoint's encoder starts a classifier through ``model.start_from``.
"""

from __future__ import annotations

import torch
from torch import nn

from .blocks import activation, conv, max_pool, norm_layer
from .blocks import dropout as channel_dropout
from .registry import register_model
from .vit import ViTEncoder, check_positive_int

POOLS = ("cls", "mean")


def auto_token_size(img_size, ndim: int) -> int:
    """A token size giving about 8 tokens along the shortest axis (4 to 16 pixels) that divides every axis."""
    sizes = list(img_size) if isinstance(img_size, (list, tuple)) else [img_size] * ndim
    for t in range(max(4, min(16, min(sizes) // 8)), 0, -1):
        if all(s % t == 0 for s in sizes):
            return t
    return 1


class ViTClassifier(nn.Module):
    def __init__(
        self,
        ndim,
        in_channels,
        out_channels,
        *,
        img_size,
        patch_size,
        embed_dim,
        depth,
        num_heads,
        mlp_ratio,
        pool,
        drop_rate,
    ):
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {', '.join(POOLS)}, got {pool!r}")
        token = patch_size or auto_token_size(img_size, ndim)
        self.encoder = ViTEncoder(
            ndim,
            in_channels,
            patch_size=token,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            img_size=img_size,
            pos_embed="learned",
        )
        self.pool = pool
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, out_channels)
        nn.init.zeros_(self.head.bias)
        self.size_divisor = token

    def forward(self, x):
        tokens, _, _ = self.encoder(x)
        feat = tokens[:, 0] if self.pool == "cls" else tokens[:, 1:].mean(1)
        return self.head(self.head_drop(feat))


@register_model("vit", ndims=(2, 3), task="classification")
def vit(
    *,
    ndim,
    in_channels,
    out_channels,
    img_size=64,
    patch_size=0,
    embed_dim=192,
    depth=6,
    num_heads=3,
    mlp_ratio=4.0,
    pool="cls",
    drop_rate=0.0,
):
    """ViT classifier. img_size: the training patch size (set by the workflow); patch_size: token size
    (0 = about 8 tokens along the shortest axis); a small ViT-Tiny-like default that trains on a CPU."""
    return ViTClassifier(
        ndim,
        in_channels,
        out_channels,
        img_size=img_size,
        patch_size=patch_size,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        mlp_ratio=mlp_ratio,
        pool=pool,
        drop_rate=drop_rate,
    )


class SimpleCNN(nn.Module):
    """Per level: two 3x3(x3) convs with norm and activation, then 2x max-pooling; global average pool, linear."""

    def __init__(self, ndim, in_channels, out_channels, *, feature_maps, norm, act, dropout):
        super().__init__()
        if not feature_maps:
            raise ValueError("feature_maps must list at least one width")
        layers, c = [], in_channels
        for f in feature_maps:
            check_positive_int(f, "feature_maps entries")
            for _ in range(2):
                layers += [conv(ndim)(c, f, 3, padding=1), norm_layer(norm, ndim, f), activation(act)]
                c = f
            layers += [channel_dropout(ndim, dropout), max_pool(ndim)(2)]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c, out_channels)
        self.size_divisor = 1  # global pooling takes any size (>= 2**levels)

    def forward(self, x):
        return self.head(torch.flatten(self.features(x).mean(dim=tuple(range(2, x.ndim))), 1))


@register_model("simple_cnn", ndims=(2, 3), task="classification")
def simple_cnn(
    *, ndim, in_channels, out_channels, feature_maps=(32, 64, 128), norm="group", activation="relu", dropout=0.1
):
    """A small CNN; group norm by default, since batch norm's running statistics mislead predictions after the
    few steps of a small training set (measured on the 3D test set: all volumes given one class)."""
    return SimpleCNN(
        ndim, in_channels, out_channels, feature_maps=list(feature_maps), norm=norm, act=activation, dropout=dropout
    )
