"""Self-supervised pretraining on raw images alone: `crappify` (restore degraded images) or `masking` (MAE).

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

from ..errors import InputError
from .base import Workflow, register_workflow
from .image_to_image import PSNRMetrics, l1_or_mse, psnr, restoration_defaults


MAE_TILE_PATCHES = 4  # masking: tiles of up to 4 training patches per axis at prediction (see SelfSupervised.tiling)


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


def _masked_mse(pred, x, mask):
    return ((pred - x) ** 2 * mask).sum() / mask.sum().clamp_min(1) / x.shape[1]


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
            hidden = np.broadcast_to(p[self.channels:] > 0.5, t.shape)
            self.values.append(psnr(p[:self.channels][hidden], t[hidden], data_range=1.0))


@register_workflow
class SelfSupervised(Workflow):
    name = "self_supervised"
    target_is_image = True
    needs_target = False
    chart_metric = "psnr"

    def __init__(self):
        super().__init__()
        self._inputs: dict[str, tuple] = {}  # stem -> (clean, degraded) of the image being predicted

    @staticmethod
    def _masking(cfg) -> bool:
        return cfg.self_supervised.pretext == "masking"

    def out_channels(self, cfg) -> int:
        return cfg.data.in_channels

    def model_defaults(self, cfg) -> dict[str, Any]:
        return restoration_defaults(cfg)

    def prediction_channels(self, cfg) -> int:
        # masking blends the reconstruction and the mask that was hidden, for the MAE checks
        return cfg.data.in_channels + (1 if self._masking(cfg) else 0)

    def check_target(self, target, name, spatial_shape, cfg, notes) -> dict[str, Any]:
        return {}

    def prepare(self, dataset, cfg, normalizer) -> None:
        if self._masking(cfg) and cfg.model.name not in ("mae", "mae_vit_base"):
            raise InputError(f"The masking pretext needs a masked autoencoder (model: mae), not '{cfg.model.name}'.")
        if self._masking(cfg):
            token = _token_size(cfg)
            if any(p % token for p in cfg.data.patch_size):
                raise InputError(f"The MAE token size {token} does not divide the patch size "
                                 f"{'x'.join(map(str, cfg.data.patch_size))}.")
        self.state = {"normalization": normalizer.to_dict()}
        # crappify: a patch gets the noise of its whole image (sigma = noise x the image maximum), as a predicted image
        # does; a patch's own maximum would leave dark patches almost noise-free in training only
        self._image_max = {} if self._masking(cfg) else {
            id(s): _image_max(s.raw, normalizer) for s in [*dataset.train, *dataset.val]}

    def read_target(self, sample, sl, x) -> np.ndarray:
        # the clean patch: make_pair degrades or masks the input. crappify: the image maximum rides along as one
        # more (constant) channel, which make_pair takes off again
        top = getattr(self, "_image_max", {}).get(id(sample))
        return x if top is None else np.concatenate([x, np.full((1, *x.shape[1:]), top, x.dtype)])

    def make_pair(self, x, y, generator, cfg):
        if self._masking(cfg):
            return x, x
        ssl = cfg.self_supervised
        top = y[:, -1:].amax(dim=tuple(range(1, y.ndim)), keepdim=True) if y.shape[1] > x.shape[1] else None
        return crappify(x, ssl.noise, ssl.downsample_area, generator, top), x

    def loss(self, cfg):
        return l1_or_mse(cfg)

    def training_loss(self, model, x, y, loss_fn):
        if hasattr(model, "forward_mae"):
            pred, mask = model.forward_mae(x)
            return _masked_mse(pred, x, mask)
        return loss_fn(model(x), y)

    def validation_step(self, model, x, y, loss_fn):
        import torch

        if hasattr(model, "forward_mae"):
            pred, mask = model.forward_mae(x)
            # the mask rides along as one more channel so the PSNR scores the hidden tokens only
            return _masked_mse(pred, x, mask), torch.cat([pred, mask], dim=1)
        out = model(x)
        return loss_fn(out, y), out

    def activation(self, logits):
        return logits

    def metrics(self, cfg):
        return HiddenPSNRMetrics(cfg.data.in_channels)

    # --- prediction ---------------------------------------------------------------------------------
    def tiling(self, cfg, spatial, divisor):
        if not self._masking(cfg):
            return super().tiling(cfg, spatial, divisor)
        # The MAE sees patches of its training size, side by side from the tile's origin (masks stay whole). The
        # tiles handed to the sliding window are up to MAE_TILE_PATCHES patches wide per axis (within the 2D/3D
        # tile cap), and prediction_forward cuts them into patches: per tile the pipeline (zarr accumulator,
        # finalize) costs about the same as per patch, and the CPU-sized MAE is fast enough for that cost to show
        # (64 zarr tiles of 256x256 on a 2048x2048 image took longer than the model; 4 patches per axis beat 8 by
        # ~9% there, the arrays staying smaller; benchmarks/bench_predict.py).
        from ..inference import TILE_CAP, tile_batch

        patch = [int(p) for p in cfg.data.patch_size]
        caps = [max(p, min(TILE_CAP[cfg.ndim], MAE_TILE_PATCHES * p) // p * p) for p in patch]
        tile = [min(-(-int(s) // p) * p, cap) for s, p, cap in zip(spatial, patch, caps)]
        self._mae_patches = (tuple(patch), tile_batch(cfg, patch))
        return tile, 0.0

    def prediction_forward(self, model):
        import torch

        if not hasattr(model, "forward_mae"):
            return model
        patch, batch = getattr(self, "_mae_patches", (None, None))
        if patch is None:
            return lambda x: torch.cat(model.forward_mae(x), dim=1)
        return lambda x: _forward_patches(model, x, patch, batch)

    def prediction_input(self, image, cfg, out_dir: Path, stem: str):
        """crappify: the degraded image (cached in the results folder) so the restoration can be scored. Otherwise
        the image itself, kept as it is (lazy) for the outputs to read chunk by chunk."""
        if self._masking(cfg) or not cfg.self_supervised.degrade_at_prediction:
            self._inputs[stem] = (image, None)
            return image
        import torch

        from ..io import write_tiff
        from ..normalize import Normalizer

        # degrade on the normalized scale, as in training, then return to intensities (the predictor normalizes).
        # The down/up-sampling spans the whole image, so this path holds the image in RAM (the others do not)
        clean = np.asarray(image.compute() if hasattr(image, "compute") else image, np.float32)
        norm = Normalizer.from_dict(self.state["normalization"])
        gen = torch.Generator().manual_seed(cfg.seed)
        x = torch.from_numpy(np.moveaxis(norm(clean), -1, 0)[None].copy())
        d = crappify(x, cfg.self_supervised.noise, cfg.self_supervised.downsample_area, gen)[0].numpy()
        degraded = d * _column(norm.scale, cfg.ndim) + _column(norm.offset, cfg.ndim)  # channel first
        write_tiff(out_dir / "degraded" / f"{stem}.tif", degraded, "C" + ("ZYX" if cfg.ndim == 3 else "YX"))
        self._inputs[stem] = (clean, degraded)
        return np.moveaxis(degraded, 0, -1)

    def write_outputs(self, prediction, store: Path, out_dir: Path, stem: str, cfg, target=None) -> dict[str, Any]:
        import dask.array as da

        from ..normalize import Normalizer
        from .image_to_image import write_image_outputs

        norm = Normalizer.from_dict(self.state["normalization"])
        clean, degraded = self._inputs.pop(stem, (None, None))
        axes = "C" + ("ZYX" if cfg.ndim == 3 else "YX")
        per_image = out_dir / "per_image" / f"{stem}.tif" if cfg.predict.save_tiff else None
        if self._masking(cfg):
            return _mae_outputs(prediction, clean, norm, cfg.data.in_channels, out_dir / "MAE_checks", stem, axes,
                                per_image)
        # crappify: the restoration in intensities (zarr, TIFF) and PSNR/SSIM against the clean image, by chunks
        written = write_image_outputs(prediction, norm, store, out_dir, stem, cfg, lambda region: _channels_first(clean, region))
        out: dict[str, Any] = {"reconstruction": da.from_zarr(written["image"]), "metrics": written["metrics"]}
        if degraded is not None:
            out["metrics"]["psnr_degraded_input"] = psnr(degraded, np.moveaxis(clean, -1, 0))
            out["degraded"] = degraded
        return out


MAE_CHECK_NAMES = ("original", "masked", "reconstruction", "reconstruction_and_visible")


def _channels_first(image, region) -> np.ndarray:
    """float32 (C, ...) of a channel-last (lazy) image's spatial `region`."""
    block = image[region]
    return np.moveaxis(np.asarray(block.compute() if hasattr(block, "compute") else block, np.float32), -1, 0)


def _mae_outputs(prediction, clean, norm, c: int, folder: Path, stem: str, axes: str, per_image: Path | None) -> dict[str, Any]:
    """The MAE checks of one image, chunk by chunk: the prediction zarr (reconstruction and hidden mask, normalized)
    and the clean channel-last image are read one chunk at a time, and each check is written into its own
    memory-mapped TIFF in `folder`, so memory stays a few chunks whatever the image size. Chunks go through two
    threads (numpy releases the GIL): writing the ~64 MB of float TIFFs of a 4 MP image cost the CPU-sized MAE a
    fifth of its prediction time done serially (benchmarks/bench_predict.py). `per_image`: the reconstruction there
    too, as a hard link. Returns the checks (read-only maps of the TIFFs) and the PSNR of the hidden pixels."""
    from concurrent.futures import ThreadPoolExecutor

    import tifffile

    from ..io import TIFF_SLAB_BYTES, TiffMemmap
    from ..accumulator import chunk_regions

    shape = (c, *prediction.shape[1:])
    scale, offset = _column(norm.scale, len(shape) - 1), _column(norm.offset, len(shape) - 1)
    files = {name: TiffMemmap(folder / f"{stem}_{name}.tif", shape, axes) for name in MAE_CHECK_NAMES}

    def one(region):
        p = np.asarray(prediction[(slice(None), *region)], np.float32)
        original = _channels_first(clean, region)
        reconstruction = p[:c] * scale + offset
        mask = p[c:c + 1] > 0.5
        hidden = np.broadcast_to(mask, original.shape)
        visible = np.where(hidden, reconstruction, original)
        key = (slice(None), *region)
        files["original"][key] = original
        files["masked"][key] = np.where(hidden, np.float32(0), original)
        files["reconstruction"][key] = reconstruction
        files["reconstruction_and_visible"][key] = visible
        # reconstruction_and_visible equals the original on the visible pixels: its error is the hidden ones'
        d = visible - original
        return (float(np.square(d, out=d).sum(dtype=np.float64)), int(mask.sum()) * c,
                float(original.min()), float(original.max()))

    regions = list(chunk_regions(prediction.shape[1:], prediction.chunks[1:]))
    chunk_bytes = 4 * c * int(np.prod(prediction.chunks[1:]))
    group = max(2, TIFF_SLAB_BYTES // max(1, 4 * chunk_bytes))  # chunks between two releases of the mapped pages
    parts: list[tuple] = []
    try:
        with ThreadPoolExecutor(2) as pool:
            for k in range(0, len(regions), group):
                parts.extend(pool.map(one, regions[k:k + group]))
                if k + group < len(regions):  # written pages stay in the page cache, not in this process
                    for f in files.values():
                        f.drop_pages()
    except BaseException:
        for f in files.values():
            f.close()
            f.path.unlink(missing_ok=True)
        raise
    paths = {name: f.close() for name, f in files.items()}
    if per_image is not None and not _link(paths["reconstruction"], per_image):
        import shutil

        shutil.copyfile(paths["reconstruction"], per_image)
    sse, hidden_count = sum(p[0] for p in parts), sum(p[1] for p in parts)
    rng = (max(p[3] for p in parts) - min(p[2] for p in parts)) or 1.0
    mse = sse / max(1, hidden_count)
    # the hidden pixels alone, with the image's range as the peak (the visible ones would count as exact)
    metrics = {"psnr_masked_patches": float("inf") if mse == 0 else float(10 * np.log10(rng ** 2 / mse))}
    checks = {name: tifffile.memmap(str(path), mode="r") for name, path in paths.items()}
    return {"reconstruction": checks.pop("reconstruction"), **{f"mae_{k}": v for k, v in checks.items()},
            "metrics": metrics}


def _link(existing: Path, path: Path) -> bool:
    """The same file under a second name (a hard link: no second write of the same bytes); False where the file
    system has no hard links."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.link(existing, path)
        return True
    except OSError:
        return False


def _forward_patches(model, x, patch: tuple[int, ...], batch: int):
    """The MAE's (reconstruction, mask) of a (B, C, *spatial) tile, channels concatenated, computed on patches of
    `patch` side by side from the tile's origin, `batch` patches per pass. A tile that is not a multiple of the
    patch is padded (reflect, as the tiler pads) and the padding cropped off again."""
    import torch
    import torch.nn.functional as F

    b, c, *spatial = x.shape
    if tuple(spatial) == tuple(patch):
        return torch.cat(model.forward_mae(x), dim=1)
    pad = [(-s) % p for s, p in zip(spatial, patch)]
    if any(pad):
        mode = "reflect" if all(q < s for q, s in zip(pad, spatial)) else "replicate"
        x = F.pad(x, [v for q in reversed(pad) for v in (0, q)], mode=mode)
    n = len(patch)
    grid = [(s + q) // p for s, q, p in zip(spatial, pad, patch)]
    # (B, C, g0, p0, g1, p1, ...) -> (B * g0 * g1 ..., C, p0, p1, ...)
    cut = x.reshape(b, c, *[v for g, p in zip(grid, patch) for v in (g, p)])
    cut = cut.permute(0, *[2 + 2 * i for i in range(n)], 1, *[3 + 2 * i for i in range(n)]).reshape(-1, c, *patch)
    out = torch.cat([torch.cat(model.forward_mae(cut[k:k + batch]), dim=1) for k in range(0, len(cut), batch)])
    co = out.shape[1]
    out = out.reshape(b, *grid, co, *patch)
    out = out.permute(0, n + 1, *[v for i in range(n) for v in (1 + i, n + 2 + i)])
    out = out.reshape(b, co, *[g * p for g, p in zip(grid, patch)])
    return out[(slice(None), slice(None), *[slice(0, s) for s in spatial])]


def _image_max(raw, normalizer) -> float:
    """The maximum of a channel-last image on the normalized scale, read chunk by chunk for dask arrays."""
    top = raw.max(axis=tuple(range(raw.ndim - 1)))
    top = np.asarray(top.compute() if hasattr(top, "compute") else top, np.float32)
    return float(normalizer(top[None]).max())


def _column(values, ndim: int) -> np.ndarray:
    """Per-channel values shaped to broadcast over a channel-first image."""
    return np.asarray(values, np.float32).reshape(-1, *([1] * ndim))


def _token_size(cfg) -> int:
    from ..models import model_info

    options = {**model_info(cfg.model.name), **cfg.model.options}
    return int(options.get("patch_size", 16))
