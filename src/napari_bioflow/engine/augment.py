"""Batched augmentation on tensors: the same spatial transform for raw and target, drawn per sample."""
from __future__ import annotations

import torch


def augment_batch(x: torch.Tensor, y, *, flips: bool, rotate90: bool, intensity: float,
                  generator: torch.Generator, target_is_image: bool = False):
    """x: (B, C, *spatial) float; y: (B, *spatial) labels, (B, C', *spatial) images, or None (a target that is not
    spatial, e.g. a class: returned unchanged). Returns new tensors."""
    if y is None:
        return augment_batch(x, x[:, :1], flips=flips, rotate90=rotate90, intensity=intensity, generator=generator,
                             target_is_image=True)[0], None
    ndim = x.ndim - 2
    y_off = 1 if target_is_image else 0  # labels have no channel axis
    xs, ys = [], []
    for i in range(x.shape[0]):
        xi, yi = x[i], y[i]
        if flips:
            for ax in range(ndim):
                if torch.rand((), generator=generator) < 0.5:
                    xi, yi = xi.flip(ax + 1), yi.flip(ax + y_off)
        if rotate90 and x.shape[-1] == x.shape[-2]:
            k = int(torch.randint(0, 4, (), generator=generator))
            if k:
                xi = torch.rot90(xi, k, dims=(-2, -1))
                yi = torch.rot90(yi, k, dims=(-2, -1))
        xs.append(xi)
        ys.append(yi)
    x, y = torch.stack(xs), torch.stack(ys)
    if intensity > 0:
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        gain = 1 + intensity * (2 * torch.rand(shape, generator=generator) - 1)
        bias = intensity * (2 * torch.rand(shape, generator=generator) - 1)
        x = x * gain.to(x.device) + bias.to(x.device)
    return x, y
