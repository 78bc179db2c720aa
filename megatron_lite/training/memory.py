"""Estimate training memory up front, so a config that cannot fit stops at once, not after an hour."""

import os

import torch

from megatron_lite.config import Config
from megatron_lite.errors import UserError

GIB = 1024**3


def estimate_training_bytes(cfg: Config, num_params: int, precision: str) -> dict:
    """Per-process bytes for weights, gradients, Adam state and activations (a deliberately rough estimate);
    `precision` is the resolved one (fp32 | bf16 | fp16)."""
    m, t, p = cfg.model, cfg.train, cfg.parallel
    local_params = num_params / p.model_parallel_size
    stage, dp = cfg.optim.zero_stage, p.data_parallel_size
    # fp32 master weights and gradients (autocast computes in 16-bit); ZeRO shards Adam state from stage 1,
    # gradients from stage 2 and weights at stage 3 over the data-parallel ranks.
    optimizer = 8 * local_params / (dp if stage >= 1 else 1)
    grads = 4 * local_params / (dp if stage >= 2 else 1)
    weights = 4 * local_params / (dp if stage >= 3 else 1)
    b, s, h, a, L = t.train_micro_batch_size_per_gpu, m.seq_length, m.hidden_size, m.num_attention_heads, m.num_layers
    act_bytes = 2 if precision != "fp32" else 4
    # Korthikanti et al. 2022: ~34*s*b*h (+5*a*s^2*b for materialised attention scores) 16-bit bytes per layer.
    per_layer = (34 * s * b * h + 5 * a * s * s * b) * act_bytes / 2 / p.model_parallel_size
    if m.checkpoint_activations:
        activations = L * s * b * h * act_bytes + per_layer  # layer inputs, plus one layer recomputed
    else:
        activations = L * per_layer
    logits = 3 * b * s * (m.padded_vocab_size or 50304) * 4 / p.model_parallel_size  # fp32 logits, grad, softmax
    parts = {"weights": weights, "gradients": grads, "optimizer": optimizer, "activations": activations + logits}
    parts["total"] = sum(parts.values())
    return parts


def available_bytes(device: torch.device) -> int:
    """Device memory (GPU) or the machine's / cgroup's memory limit (CPU)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        if limit.isdigit():
            total = min(total, int(limit))
    except OSError:
        pass
    return total


def check_fits(cfg: Config, num_params: int, device: torch.device, precision: str) -> None:
    """Raise a UserError with the estimate when training clearly needs more memory than the device has."""
    need = estimate_training_bytes(cfg, num_params, precision)
    have = available_bytes(device)
    if need["total"] > have:
        detail = ", ".join(f"{k} {v / GIB:.1f}" for k, v in need.items() if k != "total")
        raise UserError(
            f"this config needs an estimated {need['total'] / GIB:.1f} GiB per process ({detail} GiB; "
            f"{num_params / 1e9:.2f}B parameters) but the {device.type} has {have / GIB:.1f} GiB; "
            "use a smaller model, micro batch, checkpoint-activations, or more devices"
        )
