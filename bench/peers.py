"""The benches' peer: a transformers GPTNeoXForCausalLM of our model's shape holding our model's weights."""

from megatron_lite.config import ModelConfig


def transformers_twin(model, m: ModelConfig, **config):
    """GPTNeoXForCausalLM (sdpa attention, no dropout) with `model`'s weights; `config` adds GPTNeoXConfig keys.

    With bias_gelu_fusion ours computes GeLU in its tanh form: the twin does too (gelu_pytorch_tanh)."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    hf_cfg = GPTNeoXConfig(
        vocab_size=m.padded_vocab_size, hidden_size=m.hidden_size, num_hidden_layers=m.num_layers,
        num_attention_heads=m.num_attention_heads, intermediate_size=4 * m.hidden_size,
        max_position_embeddings=m.max_position_embeddings, rotary_pct=m.rotary_pct,
        rotary_emb_base=m.rotary_emb_base, use_parallel_residual=m.gpt_j_residual,
        tie_word_embeddings=not m.no_weight_tying, layer_norm_eps=m.layernorm_epsilon,
        hidden_act="gelu_pytorch_tanh" if m.bias_gelu_fusion else "gelu",
        hidden_dropout=0.0, attention_dropout=0.0, attn_implementation="sdpa", **config,
    )
    if isinstance(getattr(hf_cfg, "rope_parameters", None), dict):  # transformers >= 5 keeps rotary here
        hf_cfg.rope_parameters["partial_rotary_factor"] = m.rotary_pct
    peer = GPTNeoXForCausalLM(hf_cfg)
    out_name = "lm_head" if hasattr(peer, "lm_head") else "embed_out"  # transformers >= 5: lm_head in memory
    state = {(k.replace("embed_out", out_name) if k.startswith("embed_out") else f"gpt_neox.{k}"): v
             for k, v in model.state_dict().items()}
    missing, unexpected = peer.load_state_dict(state, strict=False)
    params = dict(peer.named_parameters())
    assert not unexpected and not [k for k in missing if k in params], (missing, unexpected)
    return peer
