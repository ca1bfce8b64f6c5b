"""Self-supervised pretraining on raw images alone: what its two pretexts share (config `workflow: self_supervised`
with `self_supervised.pretext`: crappify.py restores degraded images, masking.py is a masked autoencoder).

crappify follows BiaPy's defaults: Gaussian noise of sigma = noise x the image maximum, clipped to [0, max], then
bilinear down-sampling by sqrt(downsample_area) per axis (Z included in 3D) and back up. Degraded copies are made
on the fly in training; at prediction they are cached in the run's results folder, never next to the user's data.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from .base import Workflow
from .image_to_image import PSNRMetrics, l1_or_mse, psnr, restoration_defaults


def crappify(x, noise: float, downsample_area: float, generator=None, top=None):
    """Degrade a (B, C, *spatial) tensor: noise, then down- and up-sampling. `top`: each sample's image maximum,
    (B, 1, ..., 1); by default the maximum of each sample of `x` (right when `x` holds whole images, as BiaPy's)."""
    import torch
    import torch.nn.functional as F

    dims = tuple(range(1, x.ndim))
    top = x.amax(dim=dims, keepdim=True) if top is None else top.to(x.device, x.dtype)
    noisy = x + noise * top * torch.randn(x.shape, generator=generator).to(x.device)
    noisy = torch.minimum(noisy.clamp_min(0), top)
    factor = math.sqrt(downsample_area)
    if factor <= 1:
        return noisy
    spatial = x.shape[2:]
    small = [max(1, int(round(s / factor))) for s in spatial]
    mode = "bilinear" if x.ndim == 4 else "trilinear"
    down = F.interpolate(noisy, size=small, mode=mode, align_corners=False)
    return F.interpolate(down, size=spatial, mode=mode, align_corners=False)


class HiddenPSNRMetrics(PSNRMetrics):
    """Mean PSNR over validation patches on the normalized scale (peak 1), as PSNRMetrics. When the prediction
    carries one channel more than the image (the MAE's validation_step appends the mask it drew, 1 = hidden), only
    the hidden pixels are scored: the visible ones are the input itself and would inflate the score."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels

    def update(self, prediction: np.ndarray, target: np.ndarray) -> None:
        if prediction.shape[1] == self.channels:
            return super().update(prediction, target)
        for p, t in zip(prediction, target):
            hidden = np.broadcast_to(p[self.channels :] > 0.5, t.shape)
            self.values.append(psnr(p[: self.channels][hidden], t[hidden], data_range=1.0))


class SelfSupervised(Workflow):
    """What both pretexts share: trained on raw images alone, the target is the (clean) image itself."""

    name = "self_supervised"
    order = 2
    title = "self-supervised"
    trains_from = "none"
    target_is_image = True
    needs_target = False
    chart_metric = "psnr"
    chart_title = "validation PSNR (dB)"

    default_patch_size: dict[int, list[int]] = {}  # data.patch_size per ndim when a config gives none

    @classmethod
    def complete_config(cls, data: dict) -> None:
        """The reference page's defaults where a config leaves them out: pretext masking, with model mae and
        64x64 patches in 2D. A config that names no pretext but a model that is not a masked autoencoder (its
        name, or options of another model) or crappify's own settings keeps meaning crappify, as it did before."""
        from ..models import model_info
        from .base import workflow_class

        ssl, model, section = data.get("self_supervised"), data.get("model"), data.get("data")
        if not all(isinstance(v, dict) or v is None for v in (ssl, model, section)):
            return  # sections given as objects: already complete
        ssl, model, section = dict(ssl or {}), dict(model or {}), dict(section or {})
        if not ssl.get("pretext"):
            mae = workflow_class(cls.name, "masking")
            name, options = model.get("name"), model.get("options") or {}
            other_model = (name and not mae.fits_model(name)) or (
                not name and not set(options) <= set(model_info(mae.default_model))
            )
            own = {"noise", "downsample_area", "degrade_at_prediction"} & set(ssl)
            ssl["pretext"] = "crappify" if other_model or own else "masking"
        try:
            chosen = workflow_class(cls.name, ssl["pretext"])
        except KeyError:
            return  # an unknown pretext: said after validation
        if "name" not in model and set(model.get("options") or {}) <= set(model_info(chosen.default_model)):
            model["name"] = chosen.default_model  # (another model's options: the model field's own default)
        patch = chosen.default_patch_size.get(data.get("ndim", 2))
        if patch and "patch_size" not in section:
            section["patch_size"] = list(patch)
        data.update(self_supervised=ssl, model=model, data=section)
        chosen.complete_defaults(data)

    def out_channels(self, cfg) -> int:
        return cfg.data.in_channels

    def model_defaults(self, cfg) -> dict[str, Any]:
        return restoration_defaults(cfg)

    def check_target(self, target, name, spatial_shape, cfg, notes) -> dict[str, Any]:
        return {}

    def loss(self, cfg):
        return l1_or_mse(cfg)

    def activation(self, logits):
        return logits

    def metrics(self, cfg):
        return HiddenPSNRMetrics(cfg.data.in_channels)


def _channels_first(image, region) -> np.ndarray:
    """float32 (C, ...) of a channel-last (lazy) image's spatial `region`."""
    block = image[region]
    return np.moveaxis(np.asarray(block.compute() if hasattr(block, "compute") else block, np.float32), -1, 0)


def _link(existing: Path, path: Path) -> bool:
    """The same file under a second name (a hard link: no second write of the same bytes); False where the file
    system has no hard links."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.link(existing, path)
        return True
    except OSError:
        return False


def _column(values, ndim: int) -> np.ndarray:
    """Per-channel values shaped to broadcast over a channel-first image."""
    return np.asarray(values, np.float32).reshape(-1, *([1] * ndim))
