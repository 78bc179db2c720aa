"""Learning-rate schedules as GPT-NeoX's AnnealingLR: linear warmup, then decay to min_lr.

The schedule is a pure function of the iteration, so resuming from a checkpoint needs no saved state.
"""

import math

from megatron_lite.config import OptimConfig


class LRSchedule:
    """lr(iteration) for cosine | linear | constant | inverse_square_root decay with warmup."""

    def __init__(self, cfg: OptimConfig, length_scale: float = 1.0):
        """length_scale < 1 compresses warmup and decay alike, for a run planned shorter (train-time-budget)."""
        self.max_lr, self.min_lr, self.style = cfg.lr, cfg.min_lr, cfg.lr_decay_style
        self.decay_iters = max(1, round(cfg.lr_decay_iters * length_scale))
        self.warmup_iters = (round(cfg.warmup_iters * length_scale) if cfg.warmup_iters is not None
                             else int(cfg.warmup * self.decay_iters))

    def __call__(self, iteration: int) -> float:
        if self.warmup_iters > 0 and iteration <= self.warmup_iters:
            return self.max_lr * iteration / self.warmup_iters
        if self.style == "constant":
            return self.max_lr
        if self.style == "inverse_square_root":
            return max(self.min_lr, self.max_lr * math.sqrt(max(self.warmup_iters, 1)) / math.sqrt(iteration))
        # NeoX decays over the steps after warmup, reaching min_lr at decay_iters and staying there.
        span = max(self.decay_iters - self.warmup_iters, 1)
        progress = min(max(iteration - self.warmup_iters, 0) / span, 1.0)
        if self.style == "linear":
            factor = 1.0 - progress
        else:  # cosine
            factor = 0.5 * (math.cos(math.pi * progress) + 1.0)
        return self.min_lr + (self.max_lr - self.min_lr) * factor
