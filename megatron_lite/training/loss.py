"""The language-model loss and its data-parallel mean: shared by training, the benches and the parity tests."""

import torch
import torch.distributed as dist

from megatron_lite.parallel.cross_entropy import vocab_parallel_cross_entropy
from megatron_lite.precision import autocast


def lm_loss(model, tokens: torch.Tensor, device, precision: str, fused_loss: bool = False) -> torch.Tensor:
    """Mean next-token cross-entropy of a [b, s+1] token batch (computed in fp32, vocab-parallel when tp > 1)."""
    inputs, labels = tokens[:, :-1], tokens[:, 1:]  # [b, s]
    with autocast(device, precision):
        logits = model(inputs)  # [b, s, v / tp]
    return vocab_parallel_cross_entropy(logits.flatten(0, 1), labels.flatten(), fused_loss).mean()


def dp_mean(value: torch.Tensor, par) -> torch.Tensor:
    """Average a scalar over the data-parallel ranks (the global mean, as every rank's share is equal)."""
    if par.dp_size > 1:
        value = value.clone()
        dist.all_reduce(value, group=par.dp_group)
        value /= par.dp_size
    return value
