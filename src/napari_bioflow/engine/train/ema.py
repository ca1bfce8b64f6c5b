"""Weight averaging: an exponential moving average of the model's weights, updated after every optimizer step and
used for validation and the saved checkpoints (its weights are smoother than the last step's, which matters most
early in a short run). The decay ramps up as (1 + n) / (10 + n) over the first steps, so the average does not keep
the random initial weights."""

from __future__ import annotations

import copy


class WeightAverage:
    def __init__(self, model, decay: float):
        import torch

        self.decay = float(decay)
        self.updates = 0
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self._pairs = [
            (a, p) for a, p in zip(self.model.parameters(), model.parameters()) if torch.is_floating_point(p)
        ]
        self._buffers = list(zip(self.model.buffers(), model.buffers()))

    def update(self, model) -> None:
        """Move the average towards the model's current weights; buffers (batch-norm statistics) are copied."""
        import torch

        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        with torch.no_grad():
            if self._pairs:
                torch._foreach_lerp_([a for a, _ in self._pairs], [p.detach() for _, p in self._pairs], 1.0 - decay)
            for a, b in self._buffers:
                a.copy_(b)

    def state_dict(self) -> dict:
        return self.model.state_dict()

    def load(self, state: dict, updates: int) -> None:
        self.model.load_state_dict(state)
        self.updates = int(updates)


def weight_average(model, cfg) -> WeightAverage | None:
    """The run's average (train.ema), or None when it is off."""
    decay = getattr(cfg.train, "ema", 0.0)
    return WeightAverage(model, decay) if decay > 0 else None
