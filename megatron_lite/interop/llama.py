"""Hugging Face LlamaForCausalLM <-> our model, for the Llama-shaped architecture: RMSNorm, SwiGLU, full rotary,
no biases, untied output, sequential residual (grouped-query attention allowed).

Our fused projections are split into Llama's: query_key_value into q/k/v_proj (per-head [q, k, v] rows, or
[all q; all k; all v] with num_kv_heads), dense_h_to_4h [x; gate] into up_proj and gate_proj. Both use the
rotate-half rotary on the same head dims, so the weights carry over as they are.
"""

import torch

from megatron_lite.config import ModelConfig
from megatron_lite.errors import UserError
from megatron_lite.model.gpt import kv_heads, mlp_width

# What a Llama holds; any other value has no Llama counterpart.
LLAMA_SHAPE = {"norm": "rmsnorm", "activation": "swiglu", "pos_emb": "rotary", "rotary_pct": 1.0,
               "use_bias_in_attn_linear": False, "use_bias_in_mlp": False, "no_weight_tying": True,
               "gpt_j_residual": False}


def llama_mismatches(cfg: ModelConfig) -> list:
    """The keys whose values keep cfg from being a Llama ('key: value (Llama: wanted)')."""
    return [f"{key}: {getattr(cfg, key)!r} (Llama: {wanted!r})" for key, wanted in LLAMA_SHAPE.items()
            if getattr(cfg, key) != wanted]


def llama_config(cfg: ModelConfig, eod_id: int) -> dict:
    """config.json for LlamaForCausalLM."""
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": cfg.padded_vocab_size, "hidden_size": cfg.hidden_size, "intermediate_size": mlp_width(cfg),
        "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": kv_heads(cfg), "head_dim": cfg.hidden_size // cfg.num_attention_heads,
        "hidden_act": "silu", "max_position_embeddings": cfg.max_position_embeddings,
        "rms_norm_eps": cfg.rms_norm_epsilon, "rope_theta": float(cfg.rotary_emb_base),
        "rope_parameters": {"rope_type": "default", "rope_theta": float(cfg.rotary_emb_base)},
        "attention_bias": False, "mlp_bias": False, "tie_word_embeddings": False, "attention_dropout": 0.0,
        "bos_token_id": eod_id, "eos_token_id": eod_id, "use_cache": True, "dtype": "float32",
    }


def rope_theta(config: dict, source: str, legacy_key: str) -> int:
    """The default-type rotary base of a transformers config.json (rope_parameters, else legacy_key)."""
    if config.get("rope_scaling"):
        raise UserError(f"{source}: rope_scaling {config['rope_scaling']!r} is not supported")
    rope = config.get("rope_parameters") or {}
    if rope.get("rope_type", "default") != "default":
        raise UserError(f"{source}: rope_type {rope['rope_type']!r} is not supported; expected 'default'")
    theta = rope.get("rope_theta", config.get(legacy_key, 10000))
    if float(theta) != int(theta):
        raise UserError(f"{source}: rope_theta {theta} is not a whole number")
    return int(theta)


def llama_model_fields(config: dict, source: str) -> dict:
    """ModelConfig fields from a Llama config.json; what our model cannot reproduce is a UserError."""
    def need(key):
        if key not in config:
            raise UserError(f"{source}: key '{key}' is missing")
        return config[key]

    hidden, heads = need("hidden_size"), need("num_attention_heads")
    wanted = {"hidden_act": "silu", "attention_bias": False, "mlp_bias": False, "head_dim": hidden // heads}
    for key, value in wanted.items():
        if config.get(key, value) != value:
            raise UserError(f"{source}: {key} = {config[key]!r} is not supported; expected {value!r}")
    fields = dict(LLAMA_SHAPE, num_layers=need("num_hidden_layers"), hidden_size=hidden, num_attention_heads=heads,
                  num_kv_heads=config.get("num_key_value_heads", heads), padded_vocab_size=need("vocab_size"),
                  max_position_embeddings=need("max_position_embeddings"),
                  rotary_emb_base=rope_theta(config, source, "rope_theta"),
                  rms_norm_epsilon=float(config.get("rms_norm_eps", 1e-6)), hidden_dropout=0.0,
                  attention_dropout=0.0)
    if config.get("tie_word_embeddings", False):
        raise UserError(f"{source}: tie_word_embeddings is true; only untied Llama models are supported")
    width = mlp_width(ModelConfig(hidden_size=hidden, activation="swiglu"))
    if need("intermediate_size") != width:
        raise UserError(f"{source}: intermediate_size {config['intermediate_size']} is not GPT-NeoX's swiglu width "
                        f"for hidden size {hidden} ({width}), the only one our model builds")
    return fields


def _qkv_rows(cfg: ModelConfig):
    """Row indices of q, k and v within our query_key_value weight."""
    h, heads, kv = cfg.hidden_size, cfg.num_attention_heads, kv_heads(cfg)
    d = h // heads
    if kv != heads:  # [all q; all k; all v]
        return torch.arange(h), torch.arange(h, h + kv * d), torch.arange(h + kv * d, h + 2 * kv * d)
    rows = torch.arange(3 * h).view(heads, 3, d)  # per head [q, k, v]
    return rows[:, 0].reshape(-1), rows[:, 1].reshape(-1), rows[:, 2].reshape(-1)


def to_llama(weights: dict, cfg: ModelConfig) -> dict:
    """Our state dict -> LlamaForCausalLM's."""
    q, k, v = _qkv_rows(cfg)
    out = {"model.embed_tokens.weight": weights["embed_in.weight"],
           "model.norm.weight": weights["final_layer_norm.weight"], "lm_head.weight": weights["embed_out.weight"]}
    for i in range(cfg.num_layers):
        ours, theirs = f"layers.{i}.", f"model.layers.{i}."
        qkv = weights[ours + "attention.query_key_value.weight"]
        up, gate = weights[ours + "mlp.dense_h_to_4h.weight"].chunk(2, dim=0)
        out.update({
            theirs + "input_layernorm.weight": weights[ours + "input_layernorm.weight"],
            theirs + "post_attention_layernorm.weight": weights[ours + "post_attention_layernorm.weight"],
            theirs + "self_attn.q_proj.weight": qkv[q], theirs + "self_attn.k_proj.weight": qkv[k],
            theirs + "self_attn.v_proj.weight": qkv[v],
            theirs + "self_attn.o_proj.weight": weights[ours + "attention.dense.weight"],
            theirs + "mlp.up_proj.weight": up, theirs + "mlp.gate_proj.weight": gate,
            theirs + "mlp.down_proj.weight": weights[ours + "mlp.dense_4h_to_h.weight"],
        })
    return out


def from_llama(tensors: dict, cfg: ModelConfig, source: str) -> dict:
    """LlamaForCausalLM's state dict -> ours (to_llama's inverse)."""
    tensors = {n: t for n, t in tensors.items() if not n.endswith("rotary_emb.inv_freq")}
    try:
        out = {"embed_in.weight": tensors.pop("model.embed_tokens.weight"),
               "final_layer_norm.weight": tensors.pop("model.norm.weight"),
               "embed_out.weight": tensors.pop("lm_head.weight")}
        q, k, v = _qkv_rows(cfg)
        for i in range(cfg.num_layers):
            ours, theirs = f"layers.{i}.", f"model.layers.{i}."
            parts = [tensors.pop(theirs + f"self_attn.{p}_proj.weight") for p in "qkv"]
            qkv = torch.empty(sum(p.size(0) for p in parts), cfg.hidden_size, dtype=parts[0].dtype)
            for rows, part in zip((q, k, v), parts):
                qkv[rows] = part
            out.update({
                ours + "input_layernorm.weight": tensors.pop(theirs + "input_layernorm.weight"),
                ours + "post_attention_layernorm.weight": tensors.pop(theirs + "post_attention_layernorm.weight"),
                ours + "attention.query_key_value.weight": qkv,
                ours + "attention.dense.weight": tensors.pop(theirs + "self_attn.o_proj.weight"),
                ours + "mlp.dense_h_to_4h.weight": torch.cat([tensors.pop(theirs + "mlp.up_proj.weight"),
                                                              tensors.pop(theirs + "mlp.gate_proj.weight")]),
                ours + "mlp.dense_4h_to_h.weight": tensors.pop(theirs + "mlp.down_proj.weight"),
            })
    except KeyError as e:
        raise UserError(f"{source}: tensor {e} is missing for LlamaForCausalLM") from None
    if tensors:
        raise UserError(f"{source}: unexpected tensor '{sorted(tensors)[0]}' for LlamaForCausalLM")
    return out
