"""Crappify's cached degraded copies (self_supervised.cache_degraded): each training and validation image degraded
once, as a whole (as prediction degrades), written to results/<run>/crappified/<key>/{train,val}/<stem>.tif
(float32, channel last, in intensities) and read back when they are there: never beside the user's data.

<key> is the first 12 hex digits of a SHA-256 over the degradation settings (noise, downsample_area, seed, ndim),
the normalization the degradation runs on, and each source's name and shape per split; a resumed run (same run
folder) with the same settings finds its copies, any change makes a new folder. settings.json records the key's
contents. The copies are reused across runs of the experiment: a run (a resume, or a second run with the same
settings) whose key folder is missing copies it from an earlier run's results/<other run>/crappified/<key>/ instead
of degrading again."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np


def cache_key(workflow, dataset, cfg) -> dict:
    ssl = cfg.self_supervised
    return {
        "noise": ssl.noise,
        "downsample_area": ssl.downsample_area,
        "seed": cfg.seed,
        "ndim": cfg.ndim,
        "normalization": workflow.state["normalization"],
        "sources": {
            split: [[str(s.name), [int(d) for d in s.raw.shape]] for s in getattr(dataset, split)]
            for split in ("train", "val")
        },
    }


def cached_degraded(workflow, results: Path, dataset, cfg) -> dict[int, np.ndarray]:
    """id(sample) -> its degraded copy (channel last), written where missing."""
    import tifffile

    from ..data.io import write_tiff

    settings = cache_key(workflow, dataset, cfg)
    text = json.dumps(settings, sort_keys=True, default=str)
    key = hashlib.sha256(text.encode()).hexdigest()[:12]
    folder = Path(results) / "crappified" / key
    if not folder.is_dir():
        earlier = sorted(Path(results).parent.glob(f"*/crappified/{key}/settings.json"))
        if earlier:
            import shutil

            shutil.copytree(earlier[-1].parent, folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "settings.json").write_text(json.dumps(settings, indent=1, default=str))
    out: dict[int, np.ndarray] = {}
    for split in ("train", "val"):
        used: set[str] = set()
        for i, sample in enumerate(getattr(dataset, split)):
            stem = Path(str(sample.name)).stem or f"image_{i}"
            stem = stem if stem not in used else f"{stem}_{i}"
            used.add(stem)
            path = folder / split / f"{stem}.tif"
            if not path.is_file():
                raw = sample.raw.compute() if hasattr(sample.raw, "compute") else np.asarray(sample.raw)
                degraded = np.moveaxis(workflow.degrade(np.asarray(raw, np.float32), cfg), 0, -1)
                path.parent.mkdir(parents=True, exist_ok=True)
                write_tiff(path, degraded.astype(np.float32), ("ZYX" if cfg.ndim == 3 else "YX") + "C")
            out[id(sample)] = tifffile.imread(path).reshape(sample.raw.shape)
    return out
