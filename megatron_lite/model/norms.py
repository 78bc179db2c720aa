"""The normalisation layers a block can use, chosen by the config's `norm` (litgpt's norm_class)."""

import torch
from torch import nn

from megatron_lite.config import ModelConfig


class RMSNorm(nn.Module):
    """GPT-NeoX's RMSNorm: weight * x / (rms(x) + eps). Llama's puts eps inside the root (x / sqrt(ms + eps));
    with eps around 1e-8 and activations of order one the two agree to float precision."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):  # [..., h]
        rms = x.norm(2, dim=-1, keepdim=True) * x.size(-1) ** -0.5
        return self.weight * (x / (rms + self.eps))


NORMS = (nn.LayerNorm, RMSNorm)  # every class norm_layer builds: init sets their weights to 1


def norm_layer(cfg: ModelConfig, dim: int) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return RMSNorm(dim, cfg.rms_norm_epsilon)
    return nn.LayerNorm(dim, eps=cfg.layernorm_epsilon, bias=cfg.use_bias_in_norms)
