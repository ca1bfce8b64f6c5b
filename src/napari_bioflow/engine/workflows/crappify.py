"""Self-supervised pretext `crappify`: the model learns to restore raw images degraded by noise and down/up-sampling
(BiaPy's defaults: Gaussian noise of sigma = noise x the image maximum, clipped to [0, max], then bilinear
down-sampling by sqrt(downsample_area) per axis, Z included in 3D, and back up). Degraded copies are made on the fly
in training (or once per image, kept in results/<run>/crappified/, with self_supervised.cache_degraded); at
prediction they are written to the run's results folder, never next to the user's data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .base import register_workflow
from .self_supervised import SelfSupervised, _channels_first, _column, crappify, psnr
from .spec import Output


@register_workflow
class Crappify(SelfSupervised):
    variant = ("self_supervised.pretext", "crappify")
    variant_title = "crappify (restore degraded images)"
    losses = ("auto", "l1", "mse")
    section_options = (
        "self_supervised.noise",
        "self_supervised.downsample_area",
        "self_supervised.degrade_at_prediction",
        "self_supervised.cache_degraded",
    )
    predict_section_options = ("self_supervised.degrade_at_prediction",)
    outputs = (
        Output("degraded", "degraded", contrast="source"),
        Output("reconstruction", "restored", contrast="source", live=True),
    )
    metric_keys = ("psnr", "ssim", "mae", "mse", "psnr_degraded_input")
    init_notes = (
        "Self-supervised pretraining, crappify: the model learns to restore raw images (data.train_raw only) degraded",
        "by Gaussian noise (self_supervised.noise x the image maximum) and down/up-sampling (downsample_area).",
        "Results: degraded/ (the degraded test inputs), per_image/ (restorations), metrics.csv (PSNR of both).",
        "Start a segmentation or image-to-image U-Net from its checkpoint with model.start_from.",
        "The other pretext: napari-bioflow init self_supervised --pretext masking",
    )

    @classmethod
    def init_values(cls, ndim: int) -> dict:
        return {
            "name": f"my_self_supervised_crappify_{ndim}d",
            "self_supervised": {"pretext": "crappify"},
            "train": {"loss": "l1"},
        }

    def prepare(self, dataset, cfg, normalizer) -> None:
        self.state = {"normalization": normalizer.to_dict()}
        self._norm = normalizer
        # a patch gets the noise of its whole image (sigma = noise x the image maximum), as a predicted image does;
        # a patch's own maximum would leave dark patches almost noise-free in training only
        self._image_max = {id(s): _image_max(s.raw, normalizer) for s in [*dataset.train, *dataset.val]}

    def prepare_run(self, results: Path, dataset, cfg) -> None:
        """self_supervised.cache_degraded: each image degraded once, kept in results/<run>/crappified/<key>/."""
        if not cfg.self_supervised.cache_degraded:
            return
        from .crappify_cache import cached_degraded

        self._degraded = cached_degraded(self, results, dataset, cfg)

    def read_target(self, sample, sl, x) -> np.ndarray:
        # the clean patch, with the image maximum riding along as one more (constant) channel: make_pair takes it off;
        # with cached degraded copies, the degraded patch (normalized) rides between them
        top = getattr(self, "_image_max", {}).get(id(sample))
        if top is None:
            return x
        parts = [x]
        cached = getattr(self, "_degraded", {}).get(id(sample))
        if cached is not None:
            parts.append(np.ascontiguousarray(np.moveaxis(self._norm(np.asarray(cached[sl], np.float32)), -1, 0)))
        return np.concatenate([*parts, np.full((1, *x.shape[1:]), top, x.dtype)])

    def augment(self, x, y, cfg, generator):
        """With cached degraded copies, the clean and the degraded patch are augmented as one raw (the same flips,
        geometry and per-patch intensity jitter), so the input still is the degraded target."""
        c = x.shape[1]
        if y.shape[1] != 2 * c + 1:
            return super().augment(x, y, cfg, generator)
        import torch

        both, top = super().augment(y[:, : 2 * c], y[:, 2 * c :], cfg, generator)
        return both[:, :c], torch.cat([both, top], dim=1)

    def make_pair(self, x, y, generator, cfg):
        ssl, c = cfg.self_supervised, x.shape[1]
        if y.shape[1] == 2 * c + 1:  # a cached degraded copy: the input as it was written, the clean patch the target
            return y[:, c : 2 * c], x
        top = y[:, -1:].amax(dim=tuple(range(1, y.ndim)), keepdim=True) if y.shape[1] > x.shape[1] else None
        return crappify(x, ssl.noise, ssl.downsample_area, generator, top), x

    def degrade(self, image: np.ndarray, cfg, norm=None) -> np.ndarray:
        """A channel-last image degraded as in training (on the normalized scale, back in intensities), channel
        first: what prediction scores the restoration against, and what the Train dock's preview shows."""
        import torch

        from ..data.normalize import Normalizer

        norm = norm or Normalizer.from_dict(self.state["normalization"])
        gen = torch.Generator().manual_seed(cfg.seed)
        x = torch.from_numpy(np.moveaxis(norm(np.asarray(image, np.float32)), -1, 0)[None].copy())
        d = crappify(x, cfg.self_supervised.noise, cfg.self_supervised.downsample_area, gen)[0].numpy()
        return d * _column(norm.scale, cfg.ndim) + _column(norm.offset, cfg.ndim)

    def preview_input(self, crop: np.ndarray, cfg, normalizer) -> np.ndarray:
        return np.moveaxis(self.degrade(np.asarray(crop, np.float32), cfg, normalizer), 0, -1)

    def prediction_input(self, image, cfg, out_dir: Path, stem: str, writer=None):
        """The degraded image (written to the results folder) so the restoration can be scored, or the image itself
        when degrade_at_prediction is off. The down/up-sampling spans the whole image, so the degrading path holds
        the image in RAM (the others do not)."""
        if not cfg.self_supervised.degrade_at_prediction:
            return image, {"clean": image, "degraded": None}
        from ..data.io import write_tiff
        from ..predict.writer import writer_of

        clean = np.asarray(image.compute() if hasattr(image, "compute") else image, np.float32)
        degraded = self.degrade(clean, cfg)  # channel first
        path = writer_of({"writer": writer}, cfg, out_dir, stem).file("degraded", "degraded")
        write_tiff(path, degraded, "C" + ("ZYX" if cfg.ndim == 3 else "YX"))
        return np.moveaxis(degraded, 0, -1), {"clean": clean, "degraded": degraded}

    def write_outputs(
        self, prediction, store: Path, out_dir: Path, stem: str, cfg, target=None, inputs=None
    ) -> dict[str, Any]:
        """The restoration in intensities (zarr, TIFF) and PSNR/SSIM against the clean image, by chunks."""
        import dask.array as da

        from ..data.normalize import Normalizer
        from .image_to_image import write_image_outputs

        norm = Normalizer.from_dict(self.state["normalization"])
        clean, degraded = (inputs or {}).get("clean"), (inputs or {}).get("degraded")
        written = write_image_outputs(
            prediction,
            norm,
            store,
            out_dir,
            stem,
            cfg,
            lambda region: _channels_first(clean, region),
            inputs,
            key="reconstruction",
        )
        out: dict[str, Any] = {"reconstruction": da.from_zarr(written["image"]), "metrics": written["metrics"]}
        if degraded is not None:
            out["metrics"]["psnr_degraded_input"] = psnr(degraded, np.moveaxis(clean, -1, 0))
            out["degraded"] = degraded
        return out


def _image_max(raw, normalizer) -> float:
    """The maximum of a channel-last image on the normalized scale, read chunk by chunk for dask arrays."""
    top = raw.max(axis=tuple(range(raw.ndim - 1)))
    top = np.asarray(top.compute() if hasattr(top, "compute") else top, np.float32)
    return float(normalizer(top[None]).max())
