"""Analytic model size and training FLOPs, computed from the config alone (nothing is allocated)."""

from megatron_lite.config import ModelConfig
from megatron_lite.errors import UserError


def _vocab(cfg: ModelConfig) -> int:
    if cfg.padded_vocab_size is None:
        raise UserError("key 'padded_vocab_size' is not set: it is derived from the tokenizer before the model")
    return cfg.padded_vocab_size


def count_parameters(cfg: ModelConfig) -> int:
    """Exact number of parameters of GPTModel(cfg)."""
    h, v = cfg.hidden_size, _vocab(cfg)
    per_layer = (
        2 * 2 * h  # input_layernorm + post_attention_layernorm (weight, bias)
        + 3 * h * h + 3 * h  # query_key_value
        + h * h + h  # attention.dense
        + 4 * h * h + 4 * h  # mlp.dense_h_to_4h
        + 4 * h * h + h  # mlp.dense_4h_to_h
    )
    embeddings = v * h * (2 if cfg.no_weight_tying else 1)  # embed_in (+ embed_out when untied)
    if cfg.pos_emb == "learned":
        embeddings += cfg.max_position_embeddings * h  # embed_positions
    return embeddings + cfg.num_layers * per_layer + 2 * h  # + final_layer_norm


def flops_per_token(cfg: ModelConfig, seq_length: int) -> float:
    """Training FLOPs per token (forward + backward, no recompute): 6 x matmul params + 12 x layers x hidden x seq."""
    h, v, layers = cfg.hidden_size, _vocab(cfg), cfg.num_layers
    matmul_params = layers * 12 * h * h + v * h  # layer matrices + output projection (the embedding is a lookup)
    # Attention scores (QK^T) and weighted values (AV): 2 * 2 * s * h forward per layer, x3 with backward.
    return 6.0 * matmul_params + 12.0 * layers * h * seq_length
