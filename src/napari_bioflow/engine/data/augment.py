"""Batched augmentation on tensors (`augment`), with BiaPy's range of transforms (config `augment.*`, named after
BiaPy's AUGMENTOR options), each drawn per sample with its own probability:

  geometry, raw and target together   flips, 90-degree rotations (square Y-X planes), then in one resampling
                                      (augment_geometry.py) rotation by any angle, zoom, shear, elastic deformation
                                      and, in 3D, misaligned sections; labels by nearest neighbour
  cutout                              boxes of the raw (and, with cout_apply_to_mask, of the label or target)
  intensity, raw only                 Gaussian and median blur, gamma, brightness, contrast, Gaussian and Poisson
                                      noise, dropout, 3D damaged sections (augment_intensity.py), then the
                                      brightness/contrast jitter `intensity`

A transform whose probability is 0 draws no random numbers, so the defaults (flips, rotate90, intensity) give the
same batches as before the other transforms existed. The trainer augments each batch in its training loop, on the
training device, the whole batch at once: the random draws come from the trainer's CPU generator (the same stream
as before), the pixels stay where the batch is (a GPU resamples them). On the CPU, rotation, zoom, elastic, gamma
and noise at probability 0.5 cost about 14 ms per batch of 4 256x256 patches on one thread, against a 1.3 s step
(benchmarks/README.md, issue 14).
"""

from __future__ import annotations

import torch

from .augment_geometry import sampling_grid, warp
from .augment_intensity import cutout, raw_transforms


def augment(x: torch.Tensor, y, cfg, generator: torch.Generator, target_is_image: bool = False):
    """x: (B, C, *spatial) float; y: (B, *spatial) labels, (B, C', *spatial) images, or None (a target that is not
    spatial, e.g. a class: returned unchanged); cfg: the AugmentConfig. Returns new tensors."""
    ndim = x.ndim - 2
    y_off = 1 if target_is_image else 0  # labels have no channel axis
    if cfg.flips or (cfg.rotate90 and x.shape[-1] == x.shape[-2]):
        xs, ys = [], []
        for i in range(x.shape[0]):
            xi, yi = x[i], (y[i] if y is not None else None)
            if cfg.flips:
                for ax in range(ndim):
                    if torch.rand((), generator=generator) < 0.5:
                        xi = xi.flip(ax + 1)
                        yi = yi.flip(ax + y_off) if yi is not None else None
            if cfg.rotate90 and x.shape[-1] == x.shape[-2]:
                k = int(torch.randint(0, 4, (), generator=generator))
                if k:
                    xi = torch.rot90(xi, k, dims=(-2, -1))
                    yi = torch.rot90(yi, k, dims=(-2, -1)) if yi is not None else None
            xs.append(xi)
            ys.append(yi)
        x = torch.stack(xs)
        y = torch.stack(ys) if y is not None else None
    x, y = _geometry(x, y, cfg, generator, target_is_image)
    x, y = cutout(x, y, cfg, generator, target_is_image)
    x = raw_transforms(x, cfg, generator)
    if cfg.intensity > 0:
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        gain = 1 + cfg.intensity * (2 * torch.rand(shape, generator=generator) - 1)
        bias = cfg.intensity * (2 * torch.rand(shape, generator=generator) - 1)
        x = x * gain.to(x.device) + bias.to(x.device)
    return x, y


def _geometry(x, y, cfg, generator, target_is_image):
    plan = sampling_grid(cfg, x.shape[0], tuple(x.shape[2:]), generator, x.device)
    if plan is None:
        return x, y
    idx, grid = plan
    x = x.clone()
    x[idx] = warp(x[idx], grid, "bilinear", cfg.affine_mode).to(x.dtype)
    if y is not None:
        y = y.clone()
        if target_is_image:
            y[idx] = warp(y[idx].float(), grid, "bilinear", cfg.affine_mode).to(y.dtype)
        else:  # labels: nearest neighbour, so only values present before come out
            moved = warp(y[idx][:, None].float(), grid, "nearest", cfg.affine_mode)[:, 0]
            y[idx] = moved.round().to(y.dtype)
    return x, y


def augment_batch(x: torch.Tensor, y, cfg=None, *, generator: torch.Generator, target_is_image: bool = False, **fields):
    """`augment` with an AugmentConfig, or its defaults changed by `fields` (e.g. flips=False, intensity=0.2)."""
    from ...config import AugmentConfig

    cfg = cfg if cfg is not None else AugmentConfig()
    if fields:
        cfg = cfg.model_copy(update=fields)
    return augment(x, y, cfg, generator, target_is_image)
