"""Intensity augmentation of the raw (never of the label or target): Gaussian and median blur (Y-X plane), gamma,
brightness, contrast, Gaussian and Poisson noise, dropout, cutout (optionally on the label too) and, in 3D, damaged
sections. Each is drawn per sample with its probability and applied to the chosen samples of the batch at once.
x is (B, C, *spatial) float; every function returns a new tensor."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .augment_geometry import chosen, device_generator, uniform

MEDIAN_CHUNK = 1 << 25  # elements of the unfolded neighbourhoods per median pass (128 MB of float32)


def _column(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-sample values (n,) shaped to broadcast over a (n, C, *spatial) tensor."""
    return v.to(like.device, like.dtype).view(-1, *([1] * (like.ndim - 1)))


def _extent(x: torch.Tensor):
    """Per sample and channel minimum and maximum, shaped (n, C, 1, ...)."""
    flat = x.flatten(2)
    shape = (*x.shape[:2], *([1] * (x.ndim - 2)))
    return flat.amin(-1).view(shape), flat.amax(-1).view(shape)


def raw_transforms(x: torch.Tensor, cfg, g: torch.Generator) -> torch.Tensor:
    ndim, batch = x.ndim - 2, x.shape[0]
    steps = (
        (cfg.g_blur_prob, _gaussian_blur),
        (cfg.median_blur_prob, _median_blur),
        (cfg.gamma_contrast_prob, _gamma),
        (cfg.brightness_prob, _brightness),
        (cfg.contrast_prob, _contrast),
        (cfg.gaussian_noise_prob, _gaussian_noise),
        (cfg.poisson_noise_prob, _poisson_noise),
        (cfg.dropout_prob, _dropout),
        (cfg.missing_sections_prob if ndim == 3 else 0.0, _missing_sections),
    )
    for p, transform in steps:
        on = chosen(p, batch, g)
        if bool(on.any()):
            idx = on.nonzero().flatten()
            x = x.clone()
            x[idx.to(x.device)] = transform(x[idx.to(x.device)], cfg, g)
    return x


def _gaussian_blur(x, cfg, g):
    n, C = x.shape[:2]
    H, W = x.shape[-2:]
    sigma = uniform(*cfg.g_sigma, n, g).float().clamp_min(1e-3)
    r = max(1, min(math.ceil(3 * float(sigma.max())), H - 1, W - 1))
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    kernels = torch.exp(-0.5 * (t[None] / sigma[:, None]) ** 2)
    kernels = (kernels / kernels.sum(1, keepdim=True)).to(x.device, x.dtype)  # (n, 2r+1)
    planes = x.reshape(n, -1, H, W)  # every channel and Z section of a sample with its kernel
    m = planes.shape[1]
    weight = kernels.repeat_interleave(m, 0)
    out = F.pad(planes.reshape(1, n * m, H, W), (r, r, r, r), mode="reflect")
    out = F.conv2d(out, weight.view(n * m, 1, 1, -1), groups=n * m)
    out = F.conv2d(out, weight.view(n * m, 1, -1, 1), groups=n * m)
    return out.view(x.shape)


def _median_blur(x, cfg, g):
    n = x.shape[0]
    H, W = x.shape[-2:]
    lo, hi = cfg.mb_kernel
    sizes = torch.randint(lo, hi + 1, (n,), generator=g)
    sizes = sizes + (sizes % 2 == 0)  # odd, as BiaPy
    out = x.clone()
    for k in sizes.unique().tolist():
        sel = (sizes == k).nonzero().flatten().to(x.device)
        r = min(k // 2, H - 1, W - 1)
        if r < 1:
            continue
        planes = x[sel].reshape(-1, 1, H, W)
        padded = F.pad(planes, (r, r, r, r), mode="reflect")
        per = max(1, MEDIAN_CHUNK // ((2 * r + 1) ** 2 * H * W))
        done = []
        for i in range(0, len(planes), per):  # in chunks: the unfolded neighbourhoods are (2r+1)^2 times the data
            win = padded[i : i + per].unfold(2, 2 * r + 1, 1).unfold(3, 2 * r + 1, 1)
            done.append(win.reshape(*win.shape[:4], -1).median(-1).values)
        out[sel] = torch.cat(done).view(x[sel].shape)
    return out


def _gamma(x, cfg, g):
    lo, hi = _extent(x)
    span = (hi - lo).clamp_min(1e-12)
    gamma = _column(uniform(*cfg.gc_gamma, x.shape[0], g), x)
    return torch.where(hi > lo, lo + span * ((x - lo) / span).clamp(0, 1) ** gamma, x)


def _brightness(x, cfg, g):
    return x + _column(uniform(*cfg.brightness_factor, x.shape[0], g), x)


def _contrast(x, cfg, g):
    return x * (1 + _column(uniform(*cfg.contrast_factor, x.shape[0], g), x))


def _gaussian_noise(x, cfg, g):
    noise = torch.randn(x.shape, generator=device_generator(g, x.device), device=x.device, dtype=x.dtype)
    return x + cfg.gaussian_noise_mean + math.sqrt(cfg.gaussian_noise_var) * noise


def _poisson_noise(x, cfg, g):
    lo, hi = _extent(x)
    span = (hi - lo).clamp_min(1e-12)
    peak = _column(uniform(*cfg.poisson_noise_peak, x.shape[0], g), x)
    counts = ((x - lo) / span).clamp(0, 1) * peak
    noisy = torch.poisson(counts, generator=device_generator(g, x.device)) / peak
    return torch.where(hi > lo, lo + span * noisy, x)


def _dropout(x, cfg, g):
    rate = _column(uniform(*cfg.drop_range, x.shape[0], g), x)
    keep = torch.rand((x.shape[0], 1, *x.shape[2:]), generator=device_generator(g, x.device), device=x.device) >= rate
    # (one draw per pixel: all its channels are dropped together)
    return x * keep


def _missing_sections(x, cfg, g):
    """In some Z sections (each with missp_section_prob), a line across the section, from one side to the other,
    widened to a half-width drawn in missp_iterations, is filled with the section's mean (BiaPy's MISSING_SECTIONS,
    after PyTorch Connectomics' missing parts)."""
    n, C, Z, H, W = x.shape
    dev = x.device
    width = torch.randint(cfg.missp_iterations[0], cfg.missp_iterations[1] + 1, (n, 1), generator=g).float().to(dev)
    hit = (torch.rand(n, Z, generator=g) < cfg.missp_section_prob).to(dev)
    vertical = (torch.rand(n, Z, generator=g) < 0.5).to(dev)  # from the top row to the bottom row, else left to right
    u = torch.rand(4, n, Z, generator=g).to(dev)
    col, row = 1 + u[:2] * max(W - 2, 0), 1 + u[2:] * max(H - 2, 0)  # where the line meets its two sides
    x0, y0 = torch.where(vertical, col[0], 0.0), torch.where(vertical, 0.0, row[0])
    x1, y1 = torch.where(vertical, col[1], float(W - 1)), torch.where(vertical, float(H - 1), row[1])
    dx, dy = (x1 - x0)[..., None, None], (y1 - y0)[..., None, None]
    yy, xx = torch.meshgrid(
        torch.arange(H, dtype=torch.float32, device=dev),
        torch.arange(W, dtype=torch.float32, device=dev),
        indexing="ij",
    )
    cross = dx * (yy - y0[..., None, None]) - dy * (xx - x0[..., None, None])
    dist = cross.abs() / torch.hypot(dx, dy).clamp_min(1e-6)  # from the line
    mask = (dist <= width[..., None, None]) & hit[..., None, None]  # (n, Z, H, W)
    mask = mask[:, None]
    mean = x.mean(dim=(-2, -1), keepdim=True)  # per sample, channel and section
    return torch.where(mask, mean, x)


def cutout(x: torch.Tensor, y, cfg, g: torch.Generator, target_is_image: bool):
    """Fill cout_nb_iterations boxes of cout_size (a fraction of each axis) with cout_cval in the raw, and, with
    cout_apply_to_mask, in the label (background 0) or image target (cout_cval)."""
    batch, spatial = x.shape[0], x.shape[2:]
    on = chosen(cfg.cutout_prob, batch, g)
    if not bool(on.any()):
        return x, y
    lo, hi = cfg.cout_nb_iterations
    count = torch.randint(lo, hi + 1, (batch,), generator=g)
    dev, view = x.device, (batch, *([1] * len(spatial)))
    boxes = torch.zeros((batch, *spatial), dtype=torch.bool, device=dev)
    for i in range(hi):
        frac = uniform(*cfg.cout_size, batch, g)
        inside = (on & (count > i)).view(view).to(dev)
        for ax, n in enumerate(spatial):
            size = (frac * n).round().clamp(1, n).long()
            start = (torch.rand(batch, generator=g) * (n - size + 1)).long()
            coord = torch.arange(n, device=dev).view(*([1] * (ax + 1)), n, *([1] * (len(spatial) - ax - 1)))
            inside = inside & (coord >= start.view(view).to(dev)) & (coord < (start + size).view(view).to(dev))
        boxes |= inside
    x = x.masked_fill(boxes[:, None], cfg.cout_cval)
    if cfg.cout_apply_to_mask and y is not None:
        y = y.masked_fill(boxes[:, None] if target_is_image else boxes, cfg.cout_cval if target_is_image else 0)
    return x, y
