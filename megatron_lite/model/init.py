"""GPT-NeoX weight init methods (normal, scaled_normal, small_init, wang_init) and the model's init pass."""

import math

import torch
from torch import nn

from megatron_lite.config import ModelConfig
from megatron_lite.errors import UserError

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
    for name, p in model.named_parameters():
        if name.endswith(".bias"):
            p.zero_()
        elif "layernorm" in name or "layer_norm" in name:
            p.fill_(1.0)
        elif name.endswith(OUTPUT_LAYER_WEIGHTS):
            p.normal_(0.0, out_std)
        else:  # embed_in, query_key_value, dense_h_to_4h, embed_out
            p.normal_(0.0, std)
