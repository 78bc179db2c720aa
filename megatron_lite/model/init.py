"""GPT-NeoX weight init methods (normal, scaled_normal, small_init, wang_init) and the model's init pass."""

import math

import torch
from torch import nn

from megatron_lite.config import ModelConfig
from megatron_lite.errors import UserError
from megatron_lite.parallel import state as parallel_state
from megatron_lite.parallel.layers import full_shape, is_tp_sharded

INIT_METHODS = ("normal", "scaled_normal", "small_init", "wang_init")

# Weights that write into the residual stream get output_layer_init_method (GPT-NeoX's convention).
OUTPUT_LAYER_WEIGHTS = ("attention.dense.weight", "mlp.dense_4h_to_h.weight")


def init_std(name: str, cfg: ModelConfig, key: str = "init_method") -> float:
    """Standard deviation of the named init method; key is the config key reported on a bad name."""
    if name == "normal":
        return cfg.init_method_std
    if name == "scaled_normal":
        return cfg.init_method_std / math.sqrt(2.0 * cfg.num_layers)
    if name == "small_init":  # Nguyen & Salazar (2019), "Transformers without Tears"
        return math.sqrt(2.0 / (5.0 * cfg.hidden_size))
    if name == "wang_init":  # Wang (2021), Mesh-Transformer-JAX
        return 2.0 / cfg.num_layers / math.sqrt(cfg.hidden_size)
    raise UserError(f"key '{key}': unknown init method {name!r}; valid values: {', '.join(INIT_METHODS)}")


@torch.no_grad()
def init_weights(model: nn.Module, cfg: ModelConfig) -> None:
    """Initialise every parameter of a GPTModel by name: biases 0, norms 1, matrices by the config's methods."""
    std = init_std(cfg.init_method, cfg, "init_method")
    out_std = init_std(cfg.output_layer_init_method, cfg, "output_layer_init_method")
    if next(model.parameters()).is_meta:  # built to be loaded: nothing to draw (meta ops are slow in python)
        return
    for name, p in model.named_parameters():
        if name.endswith(".bias"):
            p.zero_()
        elif "layernorm" in name or "layer_norm" in name:
            p.fill_(1.0)
        else:  # embed_in, query_key_value, dense_h_to_4h, embed_out; layer output projections
            _normal_shard_(p, out_std if name.endswith(OUTPUT_LAYER_WEIGHTS) else std)


def _normal_shard_(p: torch.Tensor, std: float) -> None:
    """Normal init; a tensor-parallel shard draws the whole tensor and keeps its slice, so every tp size
    (with the same seed) builds the same model."""
    if not is_tp_sharded(p):
        p.normal_(0.0, std)
        return
    s = parallel_state.get()
    full = torch.empty(full_shape(p), dtype=p.dtype, device=p.device).normal_(0.0, std)
    p.copy_(full.chunk(s.tp_size, dim=p.tp_dim)[s.tp_rank])
