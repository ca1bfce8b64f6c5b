"""Image to image: raw -> target (virtual staining, denoising, inpainting, x1 super-resolution); PSNR and SSIM.

Targets are normalized with their own statistics (fitted on the training targets, kept in the checkpoint), so the
model works on comparable scales; predictions are mapped back to the target's intensities when written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .base import Workflow, register_workflow
from .spec import Output


def psnr(
    prediction: np.ndarray, target: np.ndarray, data_range: float | None = None, count: int | None = None
) -> float:
    """Peak signal-to-noise ratio in dB; the data range defaults to the target's. `count`: the number of pixels the
    error is averaged over, when the arrays hold zero error elsewhere (the MAE's hidden tokens alone)."""
    prediction, target = np.asarray(prediction), np.asarray(target)
    rng = float(target.max() - target.min()) if data_range is None else data_range
    # one float32 difference squared in place, summed in float64: no float64 copies of whole images
    d = np.subtract(
        prediction, target, dtype=np.float32 if prediction.dtype == target.dtype == np.float32 else np.float64
    )
    np.square(d, out=d)
    mse = float(d.sum(dtype=np.float64)) / max(1, d.size if count is None else count)
    if mse == 0:
        return float("inf")
    return 10 * np.log10((rng if rng > 0 else 1.0) ** 2 / mse)


class PSNRMetrics:
    """Mean PSNR over validation patches on the normalized scale, where the target's percentile range is 0 to 1."""

    def __init__(self):
        self.values: list[float] = []

    def update(self, prediction: np.ndarray, target: np.ndarray) -> None:
        for p, t in zip(prediction, target):
            self.values.append(psnr(p, t, data_range=1.0))

    def compute(self) -> dict[str, float]:
        finite = [v for v in self.values if np.isfinite(v)]
        return {"psnr": float(np.mean(finite)) if finite else float("nan")}


def restoration_defaults(cfg) -> dict[str, Any]:
    """Instance norm erases each patch's brightness, which a restoration must keep: models that default to it (the
    U-Net family) go without it here (measured on real time-lapse pairs: 25.0 dB without vs 20.2 dB with, identity
    18.2 dB)."""
    from ..models import model_info

    try:
        return {"norm": "none"} if model_info(cfg.model.name).get("norm") == "instance" else {}
    except KeyError:
        return {}


def l1_or_mse(cfg):
    import torch.nn.functional as F

    return F.mse_loss if cfg.train.loss == "mse" else F.l1_loss


def image_metrics(prediction: np.ndarray, target: np.ndarray, channel_axis: int = 0) -> dict[str, float]:
    """PSNR, SSIM, MAE and MSE of a whole reconstructed image against its target (both channel first; MAE and MSE
    in the target's intensities)."""
    from skimage.metrics import structural_similarity

    rng = float(target.max() - target.min()) or 1.0
    ssim = np.mean([structural_similarity(p, t, data_range=rng) for p, t in zip(prediction, target)])
    d = np.asarray(prediction, np.float64) - np.asarray(target, np.float64)
    return {
        "psnr": psnr(prediction, target),
        "ssim": float(ssim),
        "mae": float(np.abs(d).mean()),
        "mse": float(np.square(d).mean()),
    }


@register_workflow
class ImageToImage(Workflow):
    name = "image_to_image"
    order = 1
    title = "image to image"
    trains_from = "image"
    losses = ("auto", "l1", "mse")
    target_layer = "image"
    outputs = (Output("image", "prediction", contrast="target", live=True),)
    metric_keys = ("psnr", "ssim", "mae", "mse")
    target_is_image = True
    chart_metric = "psnr"
    chart_title = "validation PSNR (dB)"
    # mean/std (raw and target), and no brightness/contrast jitter of the raw alone (the raw-to-target intensities
    # are what the model learns): issue 14's restoration set, 3 to 8 seeds, benchmarks/README.md "Issue 14"
    config_defaults = {"data.normalization": "meanstd", "augment.intensity": 0.0}
    init_notes = (
        "Pairs: each raw image in data.train_raw has its target (same size) in data.train_label, paired by file",
        "name; set data.target_channels for multi-channel targets. Test targets (data.test_label) give PSNR, SSIM,",
        "MAE and MSE (metrics.csv: per image and their mean over the set).",
        "Models: unet, resunet, attention_unet (2D and 3D); edsr, rcan, dfcan (2D). Loss: l1 or mse.",
        "Results: per_image/ (TIFF and zarr per test image) and metrics.csv.",
    )

    @classmethod
    def init_values(cls, ndim: int) -> dict:
        return {"data": {"train_label": "path/to/train/target"}, "train": {"loss": "l1"}}

    def out_channels(self, cfg) -> int:
        return cfg.data.target_channels

    def model_defaults(self, cfg) -> dict[str, Any]:
        return restoration_defaults(cfg)

    def check_target(self, target, name, spatial_shape, cfg, notes) -> dict[str, Any]:
        from ..data.sources import check_finite, to_channels_last

        target = to_channels_last(target, cfg.ndim, cfg.data.target_channels, name, source="data.target_channels")
        if tuple(target.shape[:-1]) != tuple(spatial_shape):
            raise InputError(
                f"{name} has shape {'x'.join(map(str, target.shape[:-1]))} but its raw image has "
                f"{'x'.join(map(str, spatial_shape))}."
            )
        check_finite(target, name)
        return {"label": target}

    def prepare(self, dataset, cfg, normalizer) -> None:
        from ..data.normalize import fit_normalizer

        norm = fit_normalizer(
            [s.label for s in dataset.train], cfg.data.normalization, cfg.data.percentile_low, cfg.data.percentile_high
        )
        self.state = {"target_normalization": norm.to_dict()}

    def _target_normalizer(self):
        from ..data.normalize import Normalizer

        return Normalizer.from_dict(self.state["target_normalization"])

    def read_target(self, sample, sl, x) -> np.ndarray:
        t = sample.label[sl]
        t = t.compute() if hasattr(t, "compute") else np.asarray(t)
        return np.ascontiguousarray(np.moveaxis(self._target_normalizer()(t), -1, 0))

    def full_target(self, target, region, flags) -> np.ndarray:
        t = target[region]
        return np.moveaxis(np.asarray(t.compute() if hasattr(t, "compute") else t, np.float32), -1, 0)

    def loss(self, cfg):
        return l1_or_mse(cfg)

    def activation(self, logits):
        return logits

    def metrics(self, cfg):
        return PSNRMetrics()

    def write_outputs(
        self, prediction, store: Path, out_dir: Path, stem: str, cfg, target=None, inputs=None
    ) -> dict[str, Any]:
        return write_image_outputs(prediction, self._target_normalizer(), store, out_dir, stem, cfg, target, inputs)


def write_image_outputs(
    prediction, normalizer, store: Path, out_dir: Path, stem: str, cfg, target=None, inputs=None, key: str = "image"
) -> dict[str, Any]:
    """Map a normalized (C, ...) prediction back to intensities chunk by chunk into output `key` through the run's
    writer (the zarr store's `image` array, or an OME-Zarr image), a TIFF when it fits, and PSNR/SSIM against
    `target(region)` (channel first) when given."""
    from ..predict.accumulator import chunk_regions
    from ..predict.writer import writer_of

    writer = writer_of(inputs, cfg, out_dir, stem)
    scale = np.asarray(normalizer.scale, np.float32).reshape(-1, *([1] * cfg.ndim))
    offset = np.asarray(normalizer.offset, np.float32).reshape(-1, *([1] * cfg.ndim))
    image = writer.create(key, "image", prediction.shape, prediction.chunks, "float32", store_name="image")
    for region in chunk_regions(prediction.shape[1:], prediction.chunks[1:]):
        full = (slice(None), *region)
        image[full] = np.asarray(prediction[full]) * scale + offset
    out: dict[str, Any] = {"image": image}
    writer.tiff(key, "image", image)  # streamed from the zarr array
    if target is not None:
        out["metrics"] = chunked_image_metrics(image, target, cfg.ndim)
    return out


def chunked_image_metrics(image, target, ndim: int) -> dict[str, float]:
    """PSNR, SSIM, MAE and MSE of a zarr image (C, ...) against `target(region)`, read chunk by chunk (two passes:
    the target's range, then the errors), so any size fits in memory. PSNR, MAE and MSE (in the target's
    intensities) are exact; SSIM is the mean of each chunk's SSIM weighted by its size (exact for an image of one
    chunk, as a 2D image up to 2048 px is)."""
    from skimage.metrics import structural_similarity

    from ..predict.accumulator import chunk_regions

    regions = list(chunk_regions(image.shape[1:], image.chunks[1:]))
    lo, hi = np.inf, -np.inf
    for region in regions:
        t = target(region)
        lo, hi = min(lo, float(t.min())), max(hi, float(t.max()))
    rng = (hi - lo) or 1.0
    sse, sae, ssim_sum, n = 0.0, 0.0, 0.0, 0
    for region in regions:
        p, t = np.asarray(image[(slice(None), *region)], np.float32), np.asarray(target(region), np.float32)
        d = p - t
        sae += float(np.abs(d).sum(dtype=np.float64))
        sse += float(np.square(d, out=d).sum(dtype=np.float64))
        if min(p.shape[1:]) >= 7:  # SSIM's 7-pixel window
            ssim_sum += sum(structural_similarity(a, b, data_range=rng) for a, b in zip(p, t)) / len(p) * p[0].size
            n += p[0].size
    mse = sse / max(1, int(np.prod(image.shape)))
    return {
        "psnr": float("inf") if mse == 0 else float(10 * np.log10(rng**2 / mse)),
        "ssim": ssim_sum / n if n else float("nan"),
        "mae": sae / max(1, int(np.prod(image.shape))),
        "mse": mse,
    }
