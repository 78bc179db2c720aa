"""RNG streams: dropout differs across data-parallel ranks; inside tensor-parallel regions each tp rank draws
from its own stream (its heads are different heads), while replicated activations share one stream per tp group.

The default torch generator is the replicated stream; `tp_region()` swaps in the per-tp-rank one.
"""

import contextlib

import torch

from megatron_lite.parallel import state

TP_REGION_OFFSET = 2718  # Megatron's offset for the model-parallel stream
DP_OFFSET = 1000


def _device_rng_get():
    return torch.cuda.get_rng_state() if torch.cuda.is_available() else torch.get_rng_state()


def _device_rng_set(s):
    (torch.cuda.set_rng_state if torch.cuda.is_available() else torch.set_rng_state)(s)


class RNGTracker:
    """Holds the tp-region generator state and swaps it in for the duration of `fork()`."""

    def __init__(self):
        self.tp_state = None

    def seed(self, seed: int) -> None:
        """Seed both streams from the run's seed (after model init, which must be equal on every rank)."""
        s = state.get()
        base = seed + DP_OFFSET * s.dp_rank
        saved_cpu, saved = torch.get_rng_state(), _device_rng_get()  # manual_seed reseeds CPU and GPU
        torch.manual_seed(base + TP_REGION_OFFSET + s.tp_rank)
        self.tp_state = _device_rng_get()
        torch.set_rng_state(saved_cpu)
        _device_rng_set(saved)
        if s.distributed:
            torch.manual_seed(base)

    @contextlib.contextmanager
    def fork(self):
        """Run the body on the tp-region stream (only when tp > 1; else the default stream)."""
        if self.tp_state is None or state.get().tp_size == 1:
            yield
            return
        saved = _device_rng_get()
        _device_rng_set(self.tp_state)
        try:
            yield
        finally:
            self.tp_state = _device_rng_get()
            _device_rng_set(saved)

    def recompute_contexts(self):
        """(forward, recompute) contexts for torch checkpoint: recompute replays the tp stream of forward."""
        snapshot = {}

        @contextlib.contextmanager
        def forward():
            snapshot["state"] = self.tp_state
            yield

        @contextlib.contextmanager
        def recompute():
            current = self.tp_state
            self.tp_state = snapshot["state"]
            try:
                yield
            finally:
                self.tp_state = current

        return forward(), recompute()


TRACKER = RNGTracker()
