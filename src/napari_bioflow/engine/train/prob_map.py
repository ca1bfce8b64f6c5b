"""Patch-sampling probability maps (data.save_prob_map): per training image, the chance that a training patch is
centred on each pixel (PatchSampler.probability_map), written at the start of training to results/<run>/prob_map/
as float32 TIFFs of the image's (Z,)Y,X shape (the reference pages' PATHS.PROB_MAP_DIR)."""

from __future__ import annotations

from pathlib import Path


def write_prob_maps(folder: Path, data, notes: list[str]) -> list[Path]:
    """The TIFFs written, one per training image named after it; a note when the data is not drawn as patches."""
    sampler = getattr(data, "sampler", None)
    if sampler is None or not hasattr(sampler, "probability_map"):
        notes.append("data.save_prob_map: this workflow's training data is not drawn as patches; no map written.")
        return []
    from ..data.io import write_tiff

    folder.mkdir(parents=True, exist_ok=True)
    written, used = [], set()
    for i, sample in enumerate(sampler.samples):
        stem = Path(str(sample.name)).stem or f"image_{i}"
        name = stem if stem not in used else f"{stem}_{i}"
        used.add(name)
        prob = sampler.probability_map(i)
        path = folder / f"{name}.tif"
        write_tiff(path, prob, "ZYX"[-prob.ndim :])
        written.append(path)
    return written
