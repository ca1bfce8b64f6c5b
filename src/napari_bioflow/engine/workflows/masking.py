"""Self-supervised pretext `masking`: a masked autoencoder (a model registered with the "masked_autoencoder" tag,
e.g. mae) learns to fill in hidden tokens of raw images. Prediction writes the MAE checks (original, masked input,
reconstruction, reconstruction with the visible tokens) chunk by chunk."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..errors import InputError
from .base import register_workflow
from .self_supervised import SelfSupervised, _channels_first, _column, _link
from .spec import Output

MAE_TILE_PATCHES = 4  # tiles of up to 4 training patches per axis at prediction (see Masking.tiling)


class MaskedAutoencoder(Protocol):
    """What this workflow needs of a model (the registry's "masked_autoencoder" tag promises it)."""

    def forward_mae(self, x, mask=None):
        """(prediction (B, C, *spatial), hidden mask (B, 1, *spatial)) of a batch."""


def _masked_mse(pred, x, mask):
    return ((pred - x) ** 2 * mask).sum() / mask.sum().clamp_min(1) / x.shape[1]


@register_workflow
class Masking(SelfSupervised):
    variant = ("self_supervised.pretext", "masking")
    variant_title = "masking (masked autoencoder)"
    losses = ("auto",)  # the MSE on the hidden tokens
    default_model = "mae"  # the reference page's default architecture
    default_variant = True  # the page's default pretext
    default_patch_size = {2: [64, 64]}  # the page: "The default value is 64 in 2D"
    excluded_model_tags = ()
    required_model_tags = ("masked_autoencoder",)
    prediction_options = ()  # the masks, not flips, decide what it sees: no TTA
    outputs = (
        Output("mae_original", "MAE original", contrast="source"),
        Output("mae_masked", "MAE masked input", contrast="source"),
        Output("reconstruction", "MAE reconstruction", contrast="source", live=True),
        Output("mae_reconstruction_and_visible", "MAE reconstruction and visible", contrast="source"),
    )
    metric_keys = ("psnr_masked_patches",)
    init_notes = (
        "Self-supervised pretraining, masking: a masked autoencoder learns to fill in hidden tokens of raw images",
        "(data.train_raw only). model mae is sized for a CPU; mae_vit_base is BiaPy's ViT-B (111 M parameters, a GPU).",
        "The token size model.options.patch_size must divide data.patch_size on every axis; mask_type: grid|random.",
        "Results: MAE_checks/ (original, masked, reconstruction, reconstruction_and_visible), per_image/, metrics.csv.",
        "The other pretext: napari-bioflow init self_supervised --pretext crappify",
    )

    @classmethod
    def init_values(cls, ndim: int) -> dict:
        from ..models import model_info

        options = {k: v for k, v in model_info("mae").items() if k not in ("img_size", "pos_embed", "mlp_ratio")}
        return {
            "name": f"my_self_supervised_masking_{ndim}d",
            "self_supervised": {"pretext": "masking"},
            "data": {"patch_size": [32, 64, 64] if ndim == 3 else [64, 64]},
            "model": {"name": "mae", "options": options},
        }

    def prediction_channels(self, cfg) -> int:
        # the reconstruction and the mask that was hidden, blended together for the MAE checks
        return cfg.data.in_channels + 1

    def prepare(self, dataset, cfg, normalizer) -> None:
        if not self.fits_model(cfg.model.name):
            raise InputError(f"The masking pretext needs a masked autoencoder (model: mae), not '{cfg.model.name}'.")
        token = _token_size(cfg)
        if any(p % token for p in cfg.data.patch_size):
            raise InputError(
                f"The MAE token size {token} does not divide the patch size {'x'.join(map(str, cfg.data.patch_size))}."
            )
        self.state = {"normalization": normalizer.to_dict()}

    def read_target(self, sample, sl, x) -> np.ndarray:
        return x

    def make_pair(self, x, y, generator, cfg):
        return x, x

    def training_loss(self, model: MaskedAutoencoder, x, y, loss_fn):
        pred, mask = model.forward_mae(x)
        return _masked_mse(pred, x, mask)

    def validation_step(self, model: MaskedAutoencoder, x, y, loss_fn):
        import torch

        pred, mask = model.forward_mae(x)
        # the mask rides along as one more channel so the PSNR scores the hidden tokens only
        return _masked_mse(pred, x, mask), torch.cat([pred, mask], dim=1)

    # --- prediction ---------------------------------------------------------------------------------
    def tiling(self, cfg, spatial, divisor):
        # The MAE sees patches of its training size, side by side from the tile's origin (masks stay whole). The
        # tiles handed to the sliding window are up to MAE_TILE_PATCHES patches wide per axis (within the 2D/3D
        # tile cap), and prediction_forward cuts them into patches: per tile the pipeline (zarr accumulator,
        # finalize) costs about the same as per patch, and the CPU-sized MAE is fast enough for that cost to show
        # (64 zarr tiles of 256x256 on a 2048x2048 image took longer than the model; 4 patches per axis beat 8 by
        # ~9% there, the arrays staying smaller; benchmarks/bench_predict.py).
        from ..predict.inference import TILE_CAP

        patch = [int(p) for p in cfg.data.patch_size]
        caps = [max(p, min(TILE_CAP[cfg.ndim], MAE_TILE_PATCHES * p) // p * p) for p in patch]
        tile = [min(-(-int(s) // p) * p, cap) for s, p, cap in zip(spatial, patch, caps)]
        return tile, 0.0

    def prediction_forward(self, model: MaskedAutoencoder, cfg=None):
        import torch

        if cfg is None:
            return lambda x: torch.cat(model.forward_mae(x), dim=1)
        from ..predict.inference import tile_batch

        patch = tuple(int(p) for p in cfg.data.patch_size)
        batch = tile_batch(cfg, list(patch))
        return lambda x: _forward_patches(model, x, patch, batch)

    def prediction_input(self, image, cfg, out_dir: Path, stem: str):
        # the image itself, kept as it is (lazy) for the checks to read chunk by chunk
        return image, {"clean": image}

    def write_outputs(
        self, prediction, store: Path, out_dir: Path, stem: str, cfg, target=None, inputs=None
    ) -> dict[str, Any]:
        from ..data.normalize import Normalizer
        from ..predict.writer import writer_of

        writer = writer_of(inputs, cfg, out_dir, stem)  # the MAE checks are written here, their paths recorded
        norm = Normalizer.from_dict(self.state["normalization"])
        axes = "C" + ("ZYX" if cfg.ndim == 3 else "YX")
        per_image = writer.file("reconstruction", "image") if cfg.predict.save_tiff else None
        folder = writer.folder("MAE_checks")
        for name in MAE_CHECK_NAMES:
            writer.record(f"mae_{name}", folder / f"{stem}_{name}.tif")
        return _mae_outputs(
            prediction,
            (inputs or {})["clean"],
            norm,
            cfg.data.in_channels,
            folder,
            stem,
            axes,
            per_image,
        )


MAE_CHECK_NAMES = ("original", "masked", "reconstruction", "reconstruction_and_visible")


def _mae_outputs(
    prediction, clean, norm, c: int, folder: Path, stem: str, axes: str, per_image: Path | None
) -> dict[str, Any]:
    """The MAE checks of one image, chunk by chunk: the prediction zarr (reconstruction and hidden mask, normalized)
    and the clean channel-last image are read one chunk at a time, and each check is written into its own
    memory-mapped TIFF in `folder`, so memory stays a few chunks whatever the image size. Chunks go through two
    threads (numpy releases the GIL): writing the ~64 MB of float TIFFs of a 4 MP image cost the CPU-sized MAE a
    fifth of its prediction time done serially (benchmarks/bench_predict.py). `per_image`: the reconstruction there
    too, as a hard link. Returns the checks (read-only maps of the TIFFs) and the PSNR of the hidden pixels."""
    from concurrent.futures import ThreadPoolExecutor

    import tifffile

    from ..data.io import TIFF_SLAB_BYTES, TiffMemmap
    from ..predict.accumulator import chunk_regions

    shape = (c, *prediction.shape[1:])
    scale, offset = _column(norm.scale, len(shape) - 1), _column(norm.offset, len(shape) - 1)
    files = {name: TiffMemmap(folder / f"{stem}_{name}.tif", shape, axes) for name in MAE_CHECK_NAMES}

    def one(region):
        p = np.asarray(prediction[(slice(None), *region)], np.float32)
        original = _channels_first(clean, region)
        reconstruction = p[:c] * scale + offset
        mask = p[c : c + 1] > 0.5
        hidden = np.broadcast_to(mask, original.shape)
        visible = np.where(hidden, reconstruction, original)
        key = (slice(None), *region)
        files["original"][key] = original
        files["masked"][key] = np.where(hidden, np.float32(0), original)
        files["reconstruction"][key] = reconstruction
        files["reconstruction_and_visible"][key] = visible
        # reconstruction_and_visible equals the original on the visible pixels: its error is the hidden ones'
        d = visible - original
        return (
            float(np.square(d, out=d).sum(dtype=np.float64)),
            int(mask.sum()) * c,
            float(original.min()),
            float(original.max()),
        )

    regions = list(chunk_regions(prediction.shape[1:], prediction.chunks[1:]))
    chunk_bytes = 4 * c * int(np.prod(prediction.chunks[1:]))
    group = max(2, TIFF_SLAB_BYTES // max(1, 4 * chunk_bytes))  # chunks between two releases of the mapped pages
    parts: list[tuple] = []
    try:
        with ThreadPoolExecutor(2) as pool:
            for k in range(0, len(regions), group):
                parts.extend(pool.map(one, regions[k : k + group]))
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
    metrics = {"psnr_masked_patches": float("inf") if mse == 0 else float(10 * np.log10(rng**2 / mse))}
    checks = {name: tifffile.memmap(str(path), mode="r") for name, path in paths.items()}
    return {
        "reconstruction": checks.pop("reconstruction"),
        **{f"mae_{k}": v for k, v in checks.items()},
        "metrics": metrics,
    }


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
    out = torch.cat([torch.cat(model.forward_mae(cut[k : k + batch]), dim=1) for k in range(0, len(cut), batch)])
    co = out.shape[1]
    out = out.reshape(b, *grid, co, *patch)
    out = out.permute(0, n + 1, *[v for i in range(n) for v in (1 + i, n + 2 + i)])
    out = out.reshape(b, co, *[g * p for g, p in zip(grid, patch)])
    return out[(slice(None), slice(None), *[slice(0, s) for s in spatial])]


def _token_size(cfg) -> int:
    from ..models import model_info

    options = {**model_info(cfg.model.name), **cfg.model.options}
    return int(options.get("patch_size", 16))
