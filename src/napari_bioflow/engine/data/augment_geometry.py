"""Geometric augmentation in one resampling per sample: rotation by any angle, zoom and shear (one affine matrix),
elastic deformation (a smooth random displacement field drawn at low resolution) and, in 3D, misaligned sections
(a shift or rotation of the Y-X plane from one Z section on, or of that section alone) are composed into one
sampling grid and applied with F.grid_sample on the batch's device: bilinear (trilinear in 3D) for the raw and
image targets, nearest for labels, so raw and label stay aligned and labels keep their values.

Coordinates are in pixels from the patch centre (pixel i at i + 0.5 - n / 2), the convention of
grid_sample(align_corners=False); the grid is normalized at the end.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

PADDING = {"reflect": "reflection", "constant": "zeros", "edge": "border"}


def chosen(p: float, n: int, g: torch.Generator) -> torch.Tensor:
    """Which of n samples a transform of probability p applies to (draws nothing when p is 0)."""
    if p <= 0:
        return torch.zeros(n, dtype=torch.bool)
    return torch.rand(n, generator=g) < p


def uniform(lo: float, hi: float, n: int, g: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)


def device_generator(g: torch.Generator, device) -> torch.Generator:
    """A generator on `device` for draws as large as the batch (noise, dropout): `g` itself on the CPU, else one
    seeded from `g`, so the pixels' random numbers are drawn where the pixels are."""
    device = torch.device(device)
    if device.type == "cpu":
        return g
    return torch.Generator(device=device).manual_seed(int(torch.randint(0, 2**62, (), generator=g)))


def sampling_grid(
    cfg, batch: int, spatial: tuple[int, ...], g: torch.Generator, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(indices of the samples that move, their normalized grid (n, *spatial, ndim)), both on `device`, or None
    when none moves. The random draws come from the CPU generator `g`; the grid is computed on `device`."""
    ndim = len(spatial)
    H, W = spatial[-2:]
    rot, zoom, shear = (chosen(p, batch, g) for p in (cfg.random_rot_prob, cfg.zoom_prob, cfg.shear_prob))
    elastic = chosen(cfg.elastic_prob, batch, g)
    misalign = chosen(cfg.misalignment_prob, batch, g) if ndim == 3 else torch.zeros(batch, dtype=torch.bool)
    moving = rot | zoom | shear | elastic | misalign
    if not bool(moving.any()):
        return None
    angle = torch.where(rot, uniform(*cfg.random_rot_range, batch, g), 0.0) * math.pi / 180
    scale = torch.where(zoom, uniform(*cfg.zoom_range, batch, g), 1.0)
    shear_x = torch.where(shear, uniform(*cfg.shear_range, batch, g), 0.0) * math.pi / 180
    shear_y = torch.where(shear, uniform(*cfg.shear_range, batch, g), 0.0) * math.pi / 180
    # forward map of (x, y): rotation @ shear along Y @ shear along X @ zoom; the grid needs its inverse
    c, s = torch.cos(angle), torch.sin(angle)
    rotation = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)
    one, zero = torch.ones(batch, dtype=torch.float64), torch.zeros(batch, dtype=torch.float64)
    sx = torch.stack([torch.stack([one, torch.tan(shear_x)], -1), torch.stack([zero, one], -1)], -2)
    sy = torch.stack([torch.stack([one, zero], -1), torch.stack([torch.tan(shear_y), one], -1)], -2)
    forward = rotation @ sy @ sx @ torch.diag_embed(torch.stack([scale, scale], -1))
    inverse = torch.linalg.inv(forward).float()
    z_scale = scale if (ndim == 3 and cfg.zoom_in_z) else torch.ones(batch, dtype=torch.float64)
    alpha = uniform(*cfg.e_alpha, batch, g) if bool(elastic.any()) else None
    mis = _misalignment(cfg, batch, spatial, g) if ndim == 3 and bool(misalign.any()) else None

    idx = moving.nonzero().flatten()
    n = len(idx)
    ys = torch.arange(H, dtype=torch.float32, device=device) + 0.5 - H / 2
    xs = torch.arange(W, dtype=torch.float32, device=device) + 0.5 - W / 2
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    shape = (n, *spatial)
    px, py = xx.expand(shape).clone(), yy.expand(shape).clone()
    if mis is not None:  # per Z section of the output: shift or rotate its Y-X plane first
        m = misalign[idx]
        cos, sin, tx, ty = (v[idx][m].float()[:, :, None, None].to(device) for v in mis)  # (k, Z, 1, 1)
        m = m.to(device)
        px0, py0 = px[m], py[m]
        px[m] = cos * px0 - sin * py0 + tx
        py[m] = sin * px0 + cos * py0 + ty
    a = inverse[idx].to(device).view(n, *([1] * ndim), 2, 2)
    qx = a[..., 0, 0] * px + a[..., 0, 1] * py
    qy = a[..., 1, 0] * px + a[..., 1, 1] * py
    if alpha is not None:
        e = elastic[idx]
        if bool(e.any()):
            dx, dy = _elastic_field(alpha[idx][e], cfg.e_sigma, H, W, g, device)  # (k, H, W)
            e = e.to(device)
            if ndim == 3:  # the same field in every Z section, as BiaPy
                dx, dy = dx[:, None], dy[:, None]
            qx[e] = qx[e] + dx
            qy[e] = qy[e] + dy
    parts = [qx / (W / 2), qy / (H / 2)]
    if ndim == 3:
        Z = spatial[0]
        zs = torch.arange(Z, dtype=torch.float32, device=device) + 0.5 - Z / 2
        qz = zs.view(1, Z, 1, 1) / z_scale[idx].float().to(device).view(n, 1, 1, 1)
        parts.append((qz / (Z / 2)).expand(shape))
    return idx.to(device), torch.stack(parts, -1)


def _misalignment(cfg, batch: int, spatial: tuple[int, ...], g: torch.Generator):
    """Per sample and Z section: (cos, sin, tx, ty) of the Y-X motion of misaligned sections, identity elsewhere.
    A section index is drawn in [1, Z-1); either that section alone moves ("slip") or every section from it on
    ("translation"), by a shift of up to ms_displacement pixels per axis or a rotation whose corners move at most
    ms_displacement pixels (a fraction ms_rotate_ratio of the cases), as BiaPy's MISALIGNMENT."""
    Z, H, W = spatial
    d = float(cfg.ms_displacement)
    start = torch.randint(1, max(Z - 1, 2), (batch,), generator=g) if Z >= 3 else torch.zeros(batch, dtype=torch.long)
    slip = torch.rand(batch, generator=g) < 0.5
    rotate = torch.rand(batch, generator=g) < cfg.ms_rotate_ratio
    corner = math.hypot(H / 2, W / 2)
    max_angle = 2 * math.asin(min(1.0, d / (2 * corner)))
    angle = torch.where(rotate, uniform(-max_angle, max_angle, batch, g), 0.0)
    tx = torch.where(rotate, 0.0, uniform(-d, d, batch, g))
    ty = torch.where(rotate, 0.0, uniform(-d, d, batch, g))
    z = torch.arange(Z)
    moved = torch.where(slip[:, None], z[None] == start[:, None], z[None] >= start[:, None])  # (B, Z)
    cos = torch.where(moved, torch.cos(angle)[:, None], 1.0)
    sin = torch.where(moved, torch.sin(angle)[:, None], 0.0)
    return cos, sin, torch.where(moved, tx[:, None], 0.0), torch.where(moved, ty[:, None], 0.0)


def _elastic_field(alpha: torch.Tensor, sigma: float, H: int, W: int, g: torch.Generator, device):
    """(dx, dy) displacement fields (k, H, W) in pixels. BiaPy (imgaug) smooths uniform noise in [-1, 1] with a
    Gaussian of `sigma` and multiplies it by alpha: a field of standard deviation alpha / (sqrt(3) * 2 sqrt(pi)
    sigma) per component, correlated over about 2 sigma. Here: Gaussian noise on a grid of one node per 2 sigma,
    upsampled bicubically, scaled to that standard deviation: the same field statistics at a fraction of the cost."""
    k = len(alpha)
    nodes = (max(2, round(H / (2 * sigma)) + 1), max(2, round(W / (2 * sigma)) + 1))
    coarse = torch.randn(k, 2, *nodes, generator=g).to(device)
    field = F.interpolate(coarse, size=(H, W), mode="bicubic", align_corners=True)
    field = field / field.flatten(1).std(dim=1).clamp_min(1e-6).view(k, 1, 1, 1)
    std = alpha.float().to(device) / (math.sqrt(3) * 2 * math.sqrt(math.pi) * sigma)
    field = field * std.view(k, 1, 1, 1)
    return field[:, 0], field[:, 1]


def warp(t: torch.Tensor, grid: torch.Tensor, mode: str, padding: str) -> torch.Tensor:
    """Resample t (n, C, *spatial) float at grid (on t's device)."""
    return F.grid_sample(t, grid, mode=mode, padding_mode=PADDING[padding], align_corners=False)
