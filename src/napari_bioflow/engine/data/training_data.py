"""What the trainer draws batches from. A workflow returns one of these from `Workflow.training_data`, so the
trainer never knows whether batches are random patches of big images (dense workflows) or whole images with a
class each (classification)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


class TrainingData:
    """The interface: `batch(n)` -> (x, y) numpy arrays (x channels first); `validation(n)` -> the same fixed
    validation batches every epoch; `has_validation`; `steps_per_epoch(n)` when the config does not fix it."""

    has_validation = False

    def batch(self, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def validation(self, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        return iter(())

    def steps_per_epoch(self, batch_size: int) -> int:
        raise NotImplementedError

    def example(self):
        """A batch of one (x, y) shaped and typed as `batch` returns them, read without drawing from the random
        stream (the memory check runs the training step on its shapes); None when there is none."""
        return None


class PatchData(TrainingData):
    """Random patches of the training images; validation patches tile the validation images."""

    def __init__(self, dataset, cfg, normalizer, read_target):
        from .sampling import PatchSampler, validation_patches

        self.patch = cfg.data.patch_size
        self.train = dataset.train
        self.sampler = PatchSampler(
            dataset.train,
            self.patch,
            normalizer,
            cfg.seed,
            cfg.data.foreground_sampling,
            read_target,
            cover=cfg.train.sampling == "cover",
        )
        self.val_sampler = (
            PatchSampler(dataset.val, self.patch, normalizer, cfg.seed, 0.0, read_target) if dataset.val else None
        )
        self.positions = validation_patches(dataset.val, self.patch) if dataset.val else []
        self.has_validation = bool(self.positions)

    def batch(self, batch_size: int):
        return self.sampler.batch(batch_size)

    def validation(self, batch_size: int):
        for k in range(0, len(self.positions), batch_size):
            pairs = [self.val_sampler.read(i, start) for i, start in self.positions[k : k + batch_size]]
            yield np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])

    def threshold_crops(self, cap: int) -> Iterator[tuple[object, np.ndarray]]:
        """(raw (Z,)Y,X,C, labels) of the validation images, each centre-cropped to at most `cap` per axis (one
        prediction tile, so the model sees them with the context prediction gives it), until about the voxels the
        validation patches cover: what the background threshold is picked on."""
        budget = len(self.positions) * int(np.prod(self.patch))
        for s in self.val_sampler.samples:
            sl = tuple(slice((d - min(d, cap)) // 2, (d - min(d, cap)) // 2 + min(d, cap)) for d in s.spatial_shape)
            raw, _, target = self.val_sampler.read_region(s, sl)  # one tile at most: in memory
            yield raw, target
            budget -= int(np.prod([x.stop - x.start for x in sl]))
            if budget <= 0:
                return

    def example(self):
        x, y = self.sampler.read(0, (0,) * len(self.patch))
        return x[None], y[None]

    def steps_per_epoch(self, batch_size: int) -> int:
        """Enough steps to see the training data's area once."""
        area = sum(np.prod(s.spatial_shape) for s in self.train)
        return max(1, int(round(area / np.prod(self.patch) / batch_size)))
