"""Augmentation samples (augment.samples: N): N training patches as the model is shown them, augmented, written
at the start of training to results/<run>/aug/ as PNGs, raw and label/target side by side (3D: the middle slice),
so a user can see what the augmentation does."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _gray(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.float32)
    lo, hi = float(a.min()), float(a.max())
    return ((a - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(a)).astype(np.uint8)


def _plane(a: np.ndarray, ndim: int) -> np.ndarray:
    return a[a.shape[0] // 2] if ndim == 3 else a


def write_aug_samples(folder: Path, data, workflow, cfg, device) -> list[Path]:
    """The PNGs written (none when augment.samples is 0)."""
    n = cfg.augment.samples
    if not n:
        return []
    import torch
    from skimage.io import imsave

    gen = torch.Generator().manual_seed(cfg.seed + 12)
    xb, yb = data.batch(n)
    x, y = torch.from_numpy(xb).to(device), torch.from_numpy(yb).to(device)
    if cfg.augment.enable:
        x, y = workflow.augment(x, y, cfg, gen)
    x, y = x.float().cpu().numpy(), y.cpu().numpy()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(len(x)):
        raw = _gray(_plane(x[i, 0], cfg.ndim))
        parts = [raw]
        if y.ndim >= 1 + cfg.ndim:  # a label or target image (channel first when it has channels)
            target = y[i, 0] if y.ndim == 2 + cfg.ndim else y[i]
            parts += [np.full((raw.shape[0], 4), 255, np.uint8), _gray(_plane(target, cfg.ndim))]
        path = folder / f"aug_{i + 1:03d}.png"
        imsave(str(path), np.concatenate(parts, axis=1), check_contrast=False)
        paths.append(path)
    return paths
