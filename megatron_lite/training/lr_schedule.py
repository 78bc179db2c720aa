"""Learning-rate schedules, computed as GPT-NeoX's AnnealingLR computes them.

lr(n) is a pure function of n, the number of optimizer steps applied so far (GPT-NeoX steps its scheduler
after each applied step: the first step runs at lr(0), and a step skipped for an fp16 overflow does not
advance it). So resuming needs no saved state beyond the iteration and skipped-step counts.
"""

import math

from megatron_lite.config import OptimConfig


class LRSchedule:
    """lr(n) for linear | cosine | exponential | constant | inverse_square_root decay after a linear warmup."""

    def __init__(self, cfg: OptimConfig, length_scale: float = 1.0):
        """length_scale < 1 compresses warmup and decay alike, for a run planned shorter (train-time-budget)."""
        self.max_lr, self.min_lr, self.style = cfg.lr, cfg.min_lr, cfg.lr_decay_style
        self.decay_iters = max(1, round(cfg.lr_decay_iters * length_scale))
        # GPT-NeoX: warmup_iter = warmup x decay iterations, a float (not rounded).
        self.warmup_iters = (cfg.warmup_iters * length_scale if cfg.warmup_iters is not None
                             else cfg.warmup * self.decay_iters)

    def __call__(self, n: int) -> float:
        end, warmup = self.decay_iters, self.warmup_iters
        # AnnealingLR's arithmetic, quirks included: the decay progress is counted against the whole
        # decay span (not the span after warmup) and stops at end - warmup, so cosine and linear end
        # above min_lr unless the floor is reached first.
        done = min(n, end - warmup)
        if warmup > 0 and n <= warmup:
            return self.max_lr * done / warmup
        done -= warmup
        if self.style == "linear":
            lr = self.max_lr * (end - done) / end
        elif self.style == "cosine":
            lr = self.max_lr / 2.0 * (math.cos(math.pi * done / end) + 1.0)
        elif self.style == "exponential":
            lr = self.max_lr * math.exp(-0.693 * done / end)  # halves over the decay span
        elif self.style == "inverse_square_root":  # ours (not in GPT-NeoX): 1/sqrt(n) after warmup
            lr = self.max_lr * math.sqrt(max(warmup, 1.0)) / math.sqrt(max(n, 1))
        else:  # constant
            lr = self.max_lr
        return max(lr, self.min_lr)
