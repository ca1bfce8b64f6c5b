"""Vision-transformer encoder over 2D or 3D tokens, shared by ``mae`` and ``unetr`` (registers no model).

One class, so an MAE checkpoint's ``encoder.*`` tensors load by name into a UNETR built with the same
encoder options. Its parameter names are part of the checkpoint format; keep them stable:
    patch_embed.proj.weight / .bias    conv with kernel = stride = patch_size (2D or 3D)
    cls_token                          (1, 1, embed_dim)
    pos_embed                          (1, n_tokens, embed_dim) for the grid of img_size; only with
                                       pos_embed="learned" (fixed sin-cos is computed for the input's token
                                       grid, so it is not stored)
    blocks.{i}.norm1 / attn.qkv / attn.proj / norm2 / mlp.fc1 / mlp.fc2    timm ``Block``
    norm                               final LayerNorm
"""

from __future__ import annotations

import math
from functools import lru_cache, partial

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import conv

POS_EMBEDS = ("sincos", "learned")
LayerNorm = partial(nn.LayerNorm, eps=1e-6)


def check_positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def spatial_size(img_size, ndim: int, patch_size: int) -> tuple[int, ...]:
    """``img_size`` (an int or one int per axis) as a tuple; every axis must be a multiple of the token size."""
    sizes = list(img_size) if isinstance(img_size, (list, tuple)) else [img_size] * ndim
    if len(sizes) != ndim or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes):
        raise ValueError(f"img_size must be a positive integer or {ndim} of them, got {img_size!r}")
    if any(s % patch_size for s in sizes):
        raise ValueError(f"img_size {tuple(sizes)} is not a multiple of the token size (patch_size) {patch_size}")
    return tuple(sizes)


@lru_cache(maxsize=32)
def _sincos(grid: tuple[int, ...], dim: int) -> torch.Tensor:
    """Fixed sin-cos position embedding (MAE's, extended to 3D): each axis gets an even share of ``dim``
    (half sin, half cos over geometric frequencies); leftover channels, if any, are zero. (L, dim), float32."""
    per_axis = 2 * (dim // (2 * len(grid)))
    coords = torch.meshgrid(*[torch.arange(g, dtype=torch.float64) for g in grid], indexing="ij")
    parts = []
    if per_axis:
        omega = 1.0 / 10000 ** (torch.arange(per_axis // 2, dtype=torch.float64) / (per_axis / 2))
        for c in coords:
            angles = c.reshape(-1, 1) * omega
            parts += [torch.sin(angles), torch.cos(angles)]
    n_tokens = math.prod(grid)
    parts.append(torch.zeros(n_tokens, dim - per_axis * len(grid), dtype=torch.float64))
    return torch.cat(parts, dim=1).float()


def learned_pos_embed(kind: str, dim: int, grid: tuple[int, ...]) -> nn.Parameter | None:
    """The learned position embedding's parameter (initialised to sin-cos), or None for fixed sin-cos."""
    if kind not in POS_EMBEDS:
        raise ValueError(f"pos_embed must be one of {', '.join(POS_EMBEDS)}, got {kind!r}")
    return nn.Parameter(_sincos(tuple(grid), dim).unsqueeze(0).clone()) if kind == "learned" else None


def pos_embedding(
    weight: torch.Tensor | None, base_grid: tuple[int, ...], grid: tuple[int, ...], dim: int, like: torch.Tensor
) -> torch.Tensor:
    """(1, L, dim) position embedding for the token ``grid``, in ``like``'s dtype and device: fixed sin-cos
    when ``weight`` is None, else the learned ``weight`` (made for ``base_grid``), resized bicubic / trilinear
    when the grid differs, so any input whose size is a multiple of the token size runs."""
    grid = tuple(grid)
    if weight is None:
        return _sincos(grid, dim).to(device=like.device, dtype=like.dtype).unsqueeze(0)
    if grid != tuple(base_grid):
        mode = "bicubic" if len(grid) == 2 else "trilinear"
        weight = weight.transpose(1, 2).reshape(1, dim, *base_grid)
        weight = F.interpolate(weight, size=grid, mode=mode, align_corners=False).flatten(2).transpose(1, 2)
    return weight.to(like.dtype)


class PatchEmbed(nn.Module):
    """Non-overlapping tokens: a conv with kernel = stride = patch_size, flattened to (B, L, D)."""

    def __init__(self, ndim: int, in_channels: int, embed_dim: int, patch_size: int):
        super().__init__()
        self.ndim, self.patch_size = ndim, patch_size
        self.proj = conv(ndim)(in_channels, embed_dim, patch_size, stride=patch_size)

    def forward(self, x):
        size = tuple(x.shape[2:])
        if x.ndim != self.ndim + 2:
            raise ValueError(f"expected input (N, C, {'Z, ' if self.ndim == 3 else ''}Y, X), got {tuple(x.shape)}")
        if any(s % self.patch_size for s in size):
            raise ValueError(f"input size {size} is not a multiple of {self.patch_size} (the token size)")
        x = self.proj(x)
        grid = tuple(x.shape[2:])
        return x.flatten(2).transpose(1, 2), grid


class ViTEncoder(nn.Module):
    """ViT over 2D/3D tokens: patch embedding + position embedding, a cls token, timm ``Block``s, LayerNorm."""

    def __init__(self, ndim, in_channels, *, patch_size, embed_dim, depth, num_heads, mlp_ratio, img_size, pos_embed):
        super().__init__()
        for value, name in (
            (patch_size, "patch_size"),
            (embed_dim, "embed_dim"),
            (depth, "depth"),
            (num_heads, "num_heads"),
        ):
            check_positive_int(value, name)
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        if isinstance(mlp_ratio, bool) or not isinstance(mlp_ratio, (int, float)) or mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be a positive number, got {mlp_ratio!r}")
        self.ndim, self.patch_size, self.embed_dim, self.depth = ndim, patch_size, embed_dim, depth
        self.img_size = spatial_size(img_size, ndim, patch_size)
        self.patch_embed = PatchEmbed(ndim, in_channels, embed_dim, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.grid = tuple(s // patch_size for s in self.img_size)
        self.pos_embed = learned_pos_embed(pos_embed, embed_dim, self.grid)
        from timm.models.vision_transformer import Block  # lazy: timm costs seconds and ~200 MB to import

        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=LayerNorm) for _ in range(depth)
        )
        self.norm = LayerNorm(embed_dim)
        init_vit_weights(self)
        nn.init.normal_(self.cls_token, std=0.02)

    def forward(self, x, ids_keep=None, collect=()):
        """Encode ``x`` (B, C, *spatial).

        ``ids_keep`` (B, K): indices of the tokens to keep (MAE masking); all tokens when None.
        ``collect``: 1-based block numbers whose outputs (without the cls token, before the final norm)
        are also returned. Returns ``(tokens (B, 1 + K, D) after the final norm, cls first; [collected];
        token grid)``.
        """
        tokens, grid = self.patch_embed(x)
        tokens = tokens + pos_embedding(self.pos_embed, self.grid, grid, self.embed_dim, tokens)
        if ids_keep is not None:
            tokens = torch.gather(tokens, 1, ids_keep.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
        tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1).to(tokens.dtype), tokens], dim=1)
        collected = []
        for i, block in enumerate(self.blocks, start=1):
            tokens = block(tokens)
            if i in collect:
                collected.append(tokens[:, 1:])
        return self.norm(tokens), collected, grid


def init_vit_weights(module: nn.Module) -> None:
    """MAE's initialisation: xavier-uniform linears (and the token conv, seen as a linear), zero biases,
    unit LayerNorms."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, PatchEmbed):
            w = m.proj.weight.data
            nn.init.xavier_uniform_(w.view(w.shape[0], -1))
            nn.init.zeros_(m.proj.bias)
