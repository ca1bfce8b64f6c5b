"""Masked autoencoder (He et al. 2022) over 2D or 3D tokens: ``mae`` (CPU-sized) and ``mae_vit_base`` (BiaPy's).

The image is cut into non-overlapping tokens of ``patch_size`` pixels per axis; ``mask_ratio`` of them are
hidden, a ViT encoder (timm ``Block``s) sees only the visible ones, and a light decoder (``Block``s again)
gets the encoded visible tokens plus a learned mask token at every hidden position and predicts the pixels
of every token. ``size_divisor`` is ``patch_size``: inputs must be a multiple of it on every axis.

Interface used by the self-supervised workflow:

    forward(x) -> pred                                  (B, out_channels, *spatial), same shape as x when
                                                        out_channels == in_channels (as the workflow builds it)
    forward_mae(x, mask=None) -> (pred, mask)           pred (B, out_channels, *spatial): every token's predicted
                                                        pixels; mask (B, 1, *spatial) in pred's dtype, 1 = hidden
                                                        token, 0 = visible
    make_mask(batch, grid, device=None) -> (B, L) bool  the token mask ``forward_mae`` draws when none is given
    encoder                                             the ViT (``vit.ViTEncoder``) a UNETR loads by name

``forward`` is ``forward_mae(x)[0]`` and masks in eval mode too (as in training): with ``mask_type="grid"``
the mask is fixed, with ``"random"`` it is drawn from torch's global generator, so it repeats under
``torch.manual_seed``. ``forward_mae``'s ``mask`` may be given as token mask (B, L) / (B, *grid), or as a
pixel mask (B, 1, *spatial) constant on tokens such as the one it returns; every sample must hide the same
number of tokens. Loss on hidden pixels only, and the "MAE checks":

    pred, mask = model.forward_mae(x)
    loss = ((pred - x) ** 2 * mask).sum() / mask.sum() / x.shape[1]
    masked_input = x * (1 - mask);  pasted = pred * mask + x * (1 - mask)

Masks: ``"random"`` hides a fresh random ``round(mask_ratio * L)`` tokens per sample (MAE's per-sample
shuffle). ``"grid"`` is deterministic: tokens are ranked by an ordered-dither (Bayer) pattern and the
``round(mask_ratio * L)`` lowest are hidden; at 0.5 on a grid of even sides that is exactly the checkerboard
(BiaPy's grid mask; in 3D the 3D checkerboard), other ratios are spread as evenly as the grid allows.

Position embeddings: fixed sin-cos by default (computed for the input's token grid, so any multiple of the
token size runs and nothing is stored); ``pos_embed="learned"`` learns one for the grid of ``img_size`` and
resizes it (bicubic / trilinear) for other sizes. ``img_size`` (an int or one per axis) must be a multiple of
``patch_size``; it only shapes the learned embedding.

Parameter names (checkpoint format): ``encoder.*`` as documented in ``vit.py`` (``encoder.patch_embed.proj.weight``,
``encoder.cls_token``, ``encoder.blocks.{i}.attn.qkv.weight``, ``encoder.norm.weight``, ...), and
``decoder.embed / mask_token / [pos_embed] / blocks.{i}.* / norm / pred``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .registry import register_model
from .vit import LayerNorm, ViTEncoder, check_positive_int, init_vit_weights, learned_pos_embed, pos_embedding

MASK_TYPES = ("random", "grid")

# rank of each cell of the 2 x 2 (x 2) tile in the ordered-dither pattern, indexed by the cell's bits
# (axis 0 most significant): the even-parity cells come first, so half the ranks give the checkerboard
_DITHER = {2: (0, 2, 3, 1), 3: (0, 7, 6, 1, 5, 2, 3, 4)}


def dither_ranks(grid: tuple[int, ...]) -> torch.Tensor:
    """Ordered-dither rank (distinct ints) of each token of ``grid``, flattened (L,). The finest bit level is the
    most significant digit, so the lowest ranks spread as evenly as possible over the grid."""
    ndim = len(grid)
    coords = torch.meshgrid(*[torch.arange(g) for g in grid], indexing="ij")
    levels = max(max(grid) - 1, 1).bit_length()
    table = torch.tensor(_DITHER[ndim])
    rank = torch.zeros(grid, dtype=torch.long)
    for level in range(levels):
        cell = sum(((c >> level) & 1) << (ndim - 1 - i) for i, c in enumerate(coords))
        rank += table[cell] * (2**ndim) ** (levels - 1 - level)
    return rank.flatten()


def n_masked(n_tokens: int, mask_ratio: float) -> int:
    """Tokens hidden out of ``n_tokens``: round(mask_ratio * L), at least one hidden and one visible."""
    if n_tokens < 2:
        raise ValueError(f"masking needs at least 2 tokens, the input has {n_tokens}")
    return min(max(math.floor(mask_ratio * n_tokens + 0.5), 1), n_tokens - 1)


class MAEDecoder(nn.Module):
    """Light decoder: project the encoded visible tokens, put the mask token at the hidden positions, add
    position embeddings, ``Block``s, LayerNorm and a linear prediction of each token's pixels."""

    def __init__(
        self,
        ndim,
        out_channels,
        *,
        patch_size,
        embed_dim,
        decoder_embed_dim,
        depth,
        num_heads,
        mlp_ratio,
        pos_embed,
        grid,
    ):
        super().__init__()
        for value, name in (
            (decoder_embed_dim, "decoder_embed_dim"),
            (depth, "decoder_depth"),
            (num_heads, "decoder_num_heads"),
        ):
            check_positive_int(value, name)
        if decoder_embed_dim % num_heads:
            raise ValueError(f"decoder_embed_dim {decoder_embed_dim} is not divisible by decoder_num_heads {num_heads}")
        self.dim, self.grid = decoder_embed_dim, tuple(grid)
        self.embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.pos_embed = learned_pos_embed(pos_embed, decoder_embed_dim, self.grid)
        from timm.models.vision_transformer import Block  # lazy: timm costs seconds and ~200 MB to import

        self.blocks = nn.ModuleList(
            Block(decoder_embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=LayerNorm) for _ in range(depth)
        )
        self.norm = LayerNorm(decoder_embed_dim)
        self.pred = nn.Linear(decoder_embed_dim, patch_size**ndim * out_channels)
        init_vit_weights(self)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, latent, ids_restore, grid):
        """latent (B, 1 + K, D) with cls first; ids_restore (B, L) puts [visible..., hidden...] back in token
        order. Returns (B, L, patch_size**ndim * out_channels)."""
        x = self.embed(latent)
        b, n_tokens = ids_restore.shape
        hidden = self.mask_token.to(x.dtype).expand(b, n_tokens + 1 - x.shape[1], -1)
        tokens = torch.cat([x[:, 1:], hidden], dim=1)
        tokens = torch.gather(tokens, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        tokens = tokens + pos_embedding(self.pos_embed, self.grid, grid, self.dim, tokens)
        x = torch.cat([x[:, :1], tokens], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.pred(self.norm(x))[:, 1:]


class MaskedAutoencoder(nn.Module):
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
        decoder_embed_dim,
        decoder_depth,
        decoder_num_heads,
        mlp_ratio,
        mask_ratio,
        mask_type,
        img_size,
        pos_embed,
    ):
        super().__init__()
        if mask_type not in MASK_TYPES:
            raise ValueError(f"mask_type must be one of {', '.join(MASK_TYPES)}, got {mask_type!r}")
        if isinstance(mask_ratio, bool) or not isinstance(mask_ratio, (int, float)) or not 0 < mask_ratio < 1:
            raise ValueError(f"mask_ratio must be a number in (0, 1), got {mask_ratio!r}")
        self.ndim, self.out_channels, self.patch_size = ndim, out_channels, patch_size
        self.mask_ratio, self.mask_type = float(mask_ratio), mask_type
        self.size_divisor = patch_size
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
        self.decoder = MAEDecoder(
            ndim,
            out_channels,
            patch_size=patch_size,
            embed_dim=embed_dim,
            decoder_embed_dim=decoder_embed_dim,
            depth=decoder_depth,
            num_heads=decoder_num_heads,
            mlp_ratio=mlp_ratio,
            pos_embed=pos_embed,
            grid=self.encoder.grid,
        )

    # -- masks ------------------------------------------------------------------------------------------------
    def make_mask(self, batch: int, grid, device=None) -> torch.Tensor:
        """(batch, L) bool token mask, True = hidden, drawn as ``mask_type`` and ``mask_ratio`` say."""
        grid = tuple(grid)
        n_tokens = math.prod(grid)
        k = n_masked(n_tokens, self.mask_ratio)
        if self.mask_type == "grid":
            order = torch.argsort(dither_ranks(grid))
            mask = torch.zeros(n_tokens, dtype=torch.bool)
            mask[order[:k]] = True
            return mask.to(device).expand(batch, -1)
        order = torch.argsort(torch.rand(batch, n_tokens, device=device), dim=1)
        return torch.zeros(batch, n_tokens, dtype=torch.bool, device=device).scatter(1, order[:, :k], True)

    def _token_mask(self, mask, batch, grid, spatial):
        mask = torch.as_tensor(mask)
        if tuple(mask.shape[-self.ndim :]) == tuple(spatial) and tuple(spatial) != tuple(grid):
            # a pixel mask (B, 1, *spatial), e.g. the one forward_mae returns: one value per token
            if mask.ndim == self.ndim + 2:
                mask = mask[:, 0]
            mask = mask.reshape(*mask.shape[: -self.ndim], *[v for g in grid for v in (g, self.patch_size)])
            mask = mask[(...,) + (slice(None), 0) * self.ndim]
        mask = mask.reshape(-1, math.prod(grid)) if mask.ndim != 2 or mask.shape[-1] != math.prod(grid) else mask
        mask = mask.bool().expand(batch, -1)
        counts = mask.sum(1)
        if (counts != counts[0]).any() or counts[0] == 0 or counts[0] == mask.shape[1]:
            raise ValueError("the mask must hide the same number of tokens in every sample, and not none or all")
        return mask

    # -- pixels <-> tokens -------------------------------------------------------------------------------------
    def patchify(self, x):
        """(B, C, *spatial) -> (B, L, patch_size**ndim * C), each token's pixels (pixels first, channel last)."""
        b, c, *spatial = x.shape
        p, n = self.patch_size, self.ndim
        grid = [s // p for s in spatial]
        x = x.reshape(b, c, *[v for g in grid for v in (g, p)])
        x = x.permute(0, *[2 + 2 * i for i in range(n)], *[3 + 2 * i for i in range(n)], 1)
        return x.reshape(b, math.prod(grid), p**n * c)

    def unpatchify(self, tokens, grid):
        """(B, L, patch_size**ndim * C) -> (B, C, *spatial); the inverse of ``patchify``."""
        b = tokens.shape[0]
        p, n = self.patch_size, self.ndim
        x = tokens.reshape(b, *grid, *[p] * n, -1)
        order = [0, 2 * n + 1] + [v for i in range(n) for v in (1 + i, 1 + n + i)]
        return x.permute(*order).reshape(b, -1, *[g * p for g in grid])

    # -- forward ----------------------------------------------------------------------------------------------
    def forward_mae(self, x, mask=None):
        """Returns ``(pred (B, out_channels, *spatial), mask (B, 1, *spatial))``, mask 1 where tokens were hidden."""
        if x.ndim != self.ndim + 2:
            raise ValueError(f"expected input (N, C, {'Z, ' if self.ndim == 3 else ''}Y, X), got {tuple(x.shape)}")
        b, _, *spatial = x.shape
        if any(s % self.patch_size for s in spatial):
            raise ValueError(f"input size {tuple(spatial)} is not a multiple of {self.patch_size} (the token size)")
        grid = tuple(s // self.patch_size for s in spatial)
        if mask is None:
            mask = self.make_mask(b, grid, x.device)
            n_keep = math.prod(grid) - n_masked(math.prod(grid), self.mask_ratio)  # known without reading the mask
        else:
            mask = self._token_mask(mask, b, grid, spatial).to(x.device)
            n_keep = int((~mask[0]).sum())
        order = torch.argsort(mask.to(torch.uint8), dim=1, stable=True)  # visible tokens first, in token order
        ids_restore = torch.argsort(order, dim=1)
        latent, _, grid = self.encoder(x, ids_keep=order[:, :n_keep])
        pred = self.unpatchify(self.decoder(latent, ids_restore, grid), grid)
        mask_image = mask.to(pred.dtype).reshape(b, 1, *grid)
        for axis in range(self.ndim):
            mask_image = mask_image.repeat_interleave(self.patch_size, dim=2 + axis)
        return pred, mask_image

    def forward(self, x):
        return self.forward_mae(x)[0]


def _build(ndim, in_channels, out_channels, **options):
    return MaskedAutoencoder(ndim, in_channels, out_channels, **options)


@register_model("mae", ndims=(2, 3), tags=("masked_autoencoder",))
def mae(
    *,
    ndim,
    in_channels,
    out_channels,
    patch_size=16,
    embed_dim=256,
    depth=6,
    num_heads=4,
    decoder_embed_dim=128,
    decoder_depth=2,
    decoder_num_heads=4,
    mlp_ratio=4.0,
    mask_ratio=0.5,
    mask_type="grid",
    img_size=256,
    pos_embed="sincos",
):
    """Masked autoencoder sized for a CPU: 16-pixel tokens, ViT 256 wide x 6 deep (4 heads), decoder 128 x 2."""
    return _build(
        ndim,
        in_channels,
        out_channels,
        patch_size=patch_size,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        decoder_embed_dim=decoder_embed_dim,
        decoder_depth=decoder_depth,
        decoder_num_heads=decoder_num_heads,
        mlp_ratio=mlp_ratio,
        mask_ratio=mask_ratio,
        mask_type=mask_type,
        img_size=img_size,
        pos_embed=pos_embed,
    )


@register_model("mae_vit_base", ndims=(2, 3), tags=("masked_autoencoder",))
def mae_vit_base(
    *,
    ndim,
    in_channels,
    out_channels,
    patch_size=16,
    embed_dim=768,
    depth=12,
    num_heads=12,
    decoder_embed_dim=512,
    decoder_depth=8,
    decoder_num_heads=16,
    mlp_ratio=4.0,
    mask_ratio=0.5,
    mask_type="grid",
    img_size=256,
    pos_embed="sincos",
):
    """BiaPy's default MAE: ViT-B/16 encoder (768 wide, 12 deep, 12 heads), MAE's decoder (512 x 8, 16 heads)."""
    return _build(
        ndim,
        in_channels,
        out_channels,
        patch_size=patch_size,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        decoder_embed_dim=decoder_embed_dim,
        decoder_depth=decoder_depth,
        decoder_num_heads=decoder_num_heads,
        mlp_ratio=mlp_ratio,
        mask_ratio=mask_ratio,
        mask_type=mask_type,
        img_size=img_size,
        pos_embed=pos_embed,
    )
