"""Model size and training FLOPs, read off the model built on the meta device (nothing is allocated)."""

from megatron_lite.config import ModelConfig
from megatron_lite.model.gpt import meta_model


def count_parameters(cfg: ModelConfig) -> int:
    """Exact number of parameters of GPTModel(cfg) (the whole model, whatever the tp size)."""
    return sum(p.numel() for p in meta_model(cfg).parameters())


def layer_matmul_parameters(cfg: ModelConfig) -> int:
    """Weights of one transformer layer's matrix products (QKV, attention output, the MLP's projections)."""
    layer = meta_model(cfg).layers[0]
    return sum(p.numel() for p in layer.parameters() if p.dim() == 2)


def flops_per_token(cfg: ModelConfig, seq_length: int) -> float:
    """Training FLOPs per token (forward + backward, no recompute): 6 x matmul params + 12 x layers x hidden x seq."""
    model = meta_model(cfg)
    output = model.embed_out if model.embed_out is not None else model.embed_in  # a product, unlike the lookup
    matmul_params = cfg.num_layers * layer_matmul_parameters(cfg) + output.weight.numel()
    # Attention scores (QK^T) and weighted values (AV): 2 * 2 * s * h forward per layer, x3 with backward.
    return 6.0 * matmul_params + 12.0 * cfg.num_layers * cfg.hidden_size * seq_length
