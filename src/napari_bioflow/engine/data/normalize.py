"""Intensity normalization whose statistics come from the training data and travel in the checkpoint."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

SAMPLE_VALUES = 2_000_000  # values per image used for the statistics: plenty for percentiles, cheap on huge volumes


@dataclass
class Normalizer:
    mode: str  # percentile | meanstd | none
    offset: list[float]  # per channel
    scale: list[float]  # per channel: x -> (x - offset) / scale

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Normalize a channel-last array (..., C) to float32."""
        x = np.asarray(x, dtype=np.float32)
        if self.mode == "none":
            return x
        return (x - np.asarray(self.offset, np.float32)) / np.asarray(self.scale, np.float32)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Normalizer:
        return cls(**d)


def _subsample(raw) -> np.ndarray:
    """A strided subsample of a channel-last array-like, read without loading the whole of it."""
    spatial = raw.shape[:-1]
    total = int(np.prod(spatial))
    step = max(1, int(np.ceil((total / SAMPLE_VALUES) ** (1 / len(spatial)))))
    sub = raw[tuple(slice(None, None, step) for _ in spatial)]
    sub = sub.compute() if hasattr(sub, "compute") else np.asarray(sub)
    return sub.reshape(-1, raw.shape[-1]).astype(np.float32)


def fit_normalizer(raws: Sequence, mode: str, low: float = 1.0, high: float = 99.8) -> Normalizer:
    channels = raws[0].shape[-1]
    if mode == "none":
        return Normalizer("none", [0.0] * channels, [1.0] * channels)
    values = np.concatenate([_subsample(r) for r in raws], axis=0)
    if mode == "percentile":
        lo = np.percentile(values, low, axis=0)
        hi = np.percentile(values, high, axis=0)
        scale = np.where(hi - lo > 0, hi - lo, 1.0)
        return Normalizer("percentile", lo.tolist(), scale.tolist())
    mean, std = values.mean(axis=0), values.std(axis=0)
    return Normalizer("meanstd", mean.tolist(), np.where(std > 0, std, 1.0).tolist())
