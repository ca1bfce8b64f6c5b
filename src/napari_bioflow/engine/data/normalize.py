"""Intensity normalization whose statistics come from the training data (or, `custom`, from the user: numbers or
.npy files) and travel in the checkpoint; custom values are also written to the run's results folder as
normalization_mean_value.npy and normalization_std_value.npy, the names the reference pages give."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

SAMPLE_VALUES = 2_000_000  # values per image used for the statistics: plenty for percentiles, cheap on huge volumes


@dataclass
class Normalizer:
    mode: str  # percentile | meanstd | custom | none
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
    """Statistics of `raws` (channel last) for `mode`; `custom` without values (an image-to-image target, whose
    values the user does not give) is fitted as meanstd."""
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


MEAN_FILE, STD_FILE = "normalization_mean_value.npy", "normalization_std_value.npy"


def _custom_values(value, key: str, channels: int) -> list[float]:
    """A custom statistic (a number, a list or a .npy file holding either) as one float per channel."""
    from pathlib import Path

    from ..errors import InputError

    if isinstance(value, (str, Path)):
        path = Path(value)
        if not path.is_file():
            raise InputError(f"{key} names {path}, which does not exist.")
        try:
            value = np.load(path, allow_pickle=False)
        except Exception:
            raise InputError(f"{key}: {path} cannot be read as a .npy file of numbers.") from None
    values = np.asarray(value, dtype=np.float64).ravel() if np.asarray(value).dtype.kind in "biuf" else None
    if values is None or values.size not in (1, channels) or not np.isfinite(values).all():
        raise InputError(
            f"{key} must hold one finite number or one per channel ({channels}), not {np.asarray(value).tolist()}."
        )
    return (values.tolist() * channels) if values.size == 1 else values.tolist()


def normalizer_for(raws: Sequence, data) -> Normalizer:
    """The normalizer the data config (`data.normalization` and its options) asks for, fitted on `raws`."""
    from ..errors import InputError

    if data.normalization != "custom":
        return fit_normalizer(raws, data.normalization, data.percentile_low, data.percentile_high)
    channels = raws[0].shape[-1]
    mean = _custom_values(data.custom_mean, "data.custom_mean", channels)
    std = _custom_values(data.custom_std, "data.custom_std", channels)
    if any(v <= 0 for v in std):
        raise InputError(f"data.custom_std must be positive, not {std}.")
    return Normalizer("custom", mean, std)


def save_normalization(normalizer: Normalizer, folder) -> list:
    """Write a custom normalizer's mean and std (one value per channel) into `folder`; nothing for other modes."""
    from pathlib import Path

    if normalizer.mode != "custom":
        return []
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name, values in ((MEAN_FILE, normalizer.offset), (STD_FILE, normalizer.scale)):
        np.save(folder / name, np.asarray(values, np.float32))
        out.append(folder / name)
    return out
