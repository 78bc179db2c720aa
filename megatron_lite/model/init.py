"""GPT-NeoX weight init methods (normal, scaled_normal, small_init, wang_init) and the model's init pass."""

import math
from typing import get_args

import torch
from torch import nn

from megatron_lite.config import InitMethod, ModelConfig
from megatron_lite.errors import UserError
from megatron_lite.model.norms import NORMS
from megatron_lite.parallel import state as parallel_state
from megatron_lite.parallel.layers import full_shape, is_tp_sharded, split_shards

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
    raise UserError(f"key '{key}': unknown init method {name!r}; valid values: {', '.join(get_args(InitMethod))}")


@torch.no_grad()
def init_weights(model: nn.Module, cfg: ModelConfig) -> None:
    """Initialise every parameter of a GPTModel: biases 0, norms 1, matrices by the config's methods."""
    std = init_std(cfg.init_method, cfg, "init_method")
    out_std = init_std(cfg.output_layer_init_method, cfg, "output_layer_init_method")
    if next(model.parameters()).is_meta:  # built to be loaded: nothing to draw (meta ops are slow in python)
        return
    for module in model.modules():  # the same order as named_parameters: the same random draws
        if isinstance(module, NORMS):
            module.weight.fill_(1.0)
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()
            continue
        weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
        if isinstance(weight, nn.Parameter):  # GPT-NeoX: weights writing the residual stream get the output init
            _normal_shard_(weight, out_std if getattr(weight, "writes_residual", False) else std)
        if isinstance(bias, nn.Parameter):
            bias.zero_()


def writes_residual(linear: nn.Module) -> nn.Module:
    """Mark a layer's output projection (its weight gets output_layer_init_method)."""
    linear.weight.writes_residual = True
    return linear


def _normal_shard_(p: torch.Tensor, std: float) -> None:
    """Normal init; a tensor-parallel shard draws the whole tensor and keeps its slice, so every tp size
    (with the same seed) builds the same model."""
    if not is_tp_sharded(p):
        p.normal_(0.0, std)
        return
    s = parallel_state.get()
    full = torch.empty(full_shape(p), dtype=p.dtype, device=p.device).normal_(0.0, std)
    p.copy_(split_shards(full, p.tp_dim, p.tp_parts, s.tp_size)[s.tp_rank])
