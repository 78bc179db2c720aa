"""Hugging Face GPTNeoXForCausalLM (and, for Llama-shaped models, LlamaForCausalLM: llama.py) directories <->
our model: config.json, model.safetensors, tokenizer files.

Our parameter names are Hugging Face's without the `gpt_neox.` prefix; the output layer is `embed_out.weight`
in the files either way (transformers calls it `lm_head` in memory only), and tied models store none.
"""

import json
import os
import shutil

import torch
from safetensors.torch import load_file, save_file

from megatron_lite.config import DataConfig, ModelConfig
from megatron_lite.errors import UserError
from megatron_lite.files import new_output_dir, publish
from megatron_lite.interop.llama import (from_llama, llama_config, llama_mismatches, llama_model_fields, rope_theta,
                                         to_llama)
from megatron_lite.interop.safe_load import load_pt

PREFIX = "gpt_neox."
# Buffers older transformers versions saved; they are recomputed, not learned.
BUFFERS = ("attention.bias", "attention.masked_bias", "attention.rotary_emb.inv_freq")
EOD = "<|endoftext|>"


# hidden_act -> bias_gelu_fusion: our MLP computes exact GeLU, or the tanh form with the fused bias-GeLU.
GELU_FORMS = {"gelu": False, "gelu_pytorch_tanh": True, "gelu_new": True}


def is_hf_dir(path) -> bool:
    return bool(path) and os.path.isfile(os.path.join(path, "config.json"))


def hf_config(cfg: ModelConfig, eod_id: int) -> dict:
    """config.json for GPTNeoXForCausalLM with our architecture settings."""
    return {
        "architectures": ["GPTNeoXForCausalLM"],
        "model_type": "gpt_neox",
        "vocab_size": cfg.padded_vocab_size,
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "intermediate_size": 4 * cfg.hidden_size,
        "hidden_act": "gelu_pytorch_tanh" if cfg.bias_gelu_fusion else "gelu",  # the fused kernel's tanh form
        "max_position_embeddings": cfg.max_position_embeddings,
        "layer_norm_eps": cfg.layernorm_epsilon,
        "rope_parameters": {"rope_type": "default", "rope_theta": float(cfg.rotary_emb_base),
                            "partial_rotary_factor": cfg.rotary_pct},
        "rotary_pct": cfg.rotary_pct,  # the same settings as transformers 4.x reads them (its default pct is 0.25)
        "rotary_emb_base": cfg.rotary_emb_base,
        "use_parallel_residual": cfg.gpt_j_residual,
        "tie_word_embeddings": not cfg.no_weight_tying,
        "attention_bias": True,
        "hidden_dropout": 0.0,
        "attention_dropout": 0.0,
        "bos_token_id": eod_id,
        "eos_token_id": eod_id,
        "use_cache": True,
        "dtype": "float32",
    }


def model_fields(config: dict, source: str) -> dict:
    """ModelConfig fields from a GPT-NeoX config.json; anything our model cannot reproduce is a UserError."""
    def need(key):
        if key not in config:
            raise UserError(f"{source}: key '{key}' is missing")
        return config[key]

    if config.get("model_type") != "gpt_neox":
        raise UserError(f"{source}: model_type is {config.get('model_type')!r}; only 'gpt_neox' and 'llama' can be "
                        "loaded")
    hidden = need("hidden_size")
    act = config.get("hidden_act", "gelu")
    if act not in GELU_FORMS:
        raise UserError(f"{source}: hidden_act = {act!r} is not supported; expected one of {', '.join(GELU_FORMS)}")
    checks = {"intermediate_size": (config.get("intermediate_size", 4 * hidden), 4 * hidden),
              "attention_bias": (config.get("attention_bias", True), True)}
    for key, (value, wanted) in checks.items():
        if value != wanted:
            raise UserError(f"{source}: {key} = {value!r} is not supported; expected {wanted!r}")
    theta = rope_theta(config, source, "rotary_emb_base")
    rope = config.get("rope_parameters") or {}
    max_pos = need("max_position_embeddings")
    return {
        "num_layers": need("num_hidden_layers"), "hidden_size": hidden,
        "num_attention_heads": need("num_attention_heads"), "max_position_embeddings": max_pos,
        # transformers' GPTNeoXConfig default when config.json names neither (0.25, not GPT-NeoX's 1.0)
        "rotary_pct": float(rope.get("partial_rotary_factor", config.get("rotary_pct", 0.25))),
        "rotary_emb_base": theta, "layernorm_epsilon": float(config.get("layer_norm_eps", 1e-5)),
        "gpt_j_residual": bool(config.get("use_parallel_residual", True)),
        "no_weight_tying": not config.get("tie_word_embeddings", False),
        "pos_emb": "rotary", "padded_vocab_size": need("vocab_size"), "hidden_dropout": 0.0, "attention_dropout": 0.0,
        "bias_gelu_fusion": GELU_FORMS[act],
    }


def read_config(path: str) -> dict:
    source = os.path.join(path, "config.json")
    try:
        with open(source, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read {source}: {e}") from None


def _hf_tensors(path: str) -> dict:
    """All tensors of a model directory: model.safetensors, its sharded index, or pytorch_model.bin (weights only)."""
    single, index, legacy = (os.path.join(path, n) for n in
                             ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"))
    try:
        if os.path.isfile(single):
            return load_file(single)
        if os.path.isfile(index):
            with open(index, encoding="utf-8") as f:
                files = sorted(set(json.load(f)["weight_map"].values()))
            return {k: v for name in files for k, v in load_file(os.path.join(path, name)).items()}
    except Exception as e:  # safetensors and json raise their own error types for damaged files
        raise UserError(f"cannot read the weights in {path}: {str(e).splitlines()[0] if str(e) else e!r}") from None
    if os.path.isfile(legacy):
        tensors = load_pt(legacy)
        if not isinstance(tensors, dict):
            raise UserError(f"{legacy}: expected a state dict of tensors, found {type(tensors).__name__}")
        return tensors
    raise UserError(f"{path} has no model.safetensors, model.safetensors.index.json or pytorch_model.bin")


def to_ours(tensors: dict, source: str) -> dict:
    """Hugging Face names -> ours; buffers that are recomputed, not learned, are dropped."""
    out = {}
    for name, t in tensors.items():
        if name.endswith(BUFFERS):
            continue
        if name in ("lm_head.weight", "embed_out.weight"):
            out["embed_out.weight"] = t
        elif name.startswith(PREFIX):
            out[name[len(PREFIX):]] = t
        else:
            raise UserError(f"{source}: unexpected tensor '{name}' for GPTNeoXForCausalLM")
    return out


def to_hf(weights: dict) -> dict:
    """Our names -> the names GPTNeoXForCausalLM files use."""
    return {(n if n == "embed_out.weight" else PREFIX + n): t for n, t in weights.items()}


def tokenizer_settings(path: str) -> dict:
    """DataConfig tokenizer keys for the tokenizer files in a model directory."""
    tok_json, vocab, merges = (os.path.join(path, n) for n in ("tokenizer.json", "vocab.json", "merges.txt"))
    if os.path.isfile(tok_json):
        return {"tokenizer_type": "HFTokenizer", "vocab_file": tok_json, "merge_file": None}
    if os.path.isfile(vocab) and os.path.isfile(merges):
        return {"tokenizer_type": "GPT2BPETokenizer", "vocab_file": vocab, "merge_file": merges}
    raise UserError(f"{path} has no tokenizer.json (or vocab.json + merges.txt) to build the tokenizer from")


# What GPTNeoXForCausalLM holds: the GPT-NeoX architecture with every bias, rotary positions.
NEOX_SHAPE = {"pos_emb": "rotary", "norm": "layernorm", "activation": "gelu", "num_kv_heads": None,
              "use_bias_in_norms": True, "use_bias_in_attn_linear": True, "use_bias_in_mlp": True}


def _family(cfg: ModelConfig) -> str:
    """'gpt_neox' or 'llama': the transformers class that holds this architecture, or a UserError saying why none."""
    values = {**{key: getattr(cfg, key) for key in NEOX_SHAPE}, "num_kv_heads": None if cfg.num_kv_heads in
              (None, cfg.num_attention_heads) else cfg.num_kv_heads}
    neox = [f"{key}: {values[key]!r} (GPT-NeoX: {wanted!r})" for key, wanted in NEOX_SHAPE.items()
            if values[key] != wanted]
    if not neox:
        return "gpt_neox"
    llama = llama_mismatches(cfg)
    if not llama:
        return "llama"
    raise UserError(f"no transformers class holds this architecture, so it cannot be exported: as "
                    f"GPTNeoXForCausalLM it differs in {'; '.join(neox)}; as LlamaForCausalLM in {'; '.join(llama)}")


def load_hf_dir(path: str, model_cfg: ModelConfig, data_cfg: DataConfig) -> dict:
    """Set the architecture and tokenizer keys from a Hugging Face GPT-NeoX or Llama directory; returns our
    weights."""
    config, source = read_config(path), os.path.join(path, "config.json")
    llama = config.get("model_type") == "llama"
    for key, value in (llama_model_fields(config, source) if llama else model_fields(config, source)).items():
        setattr(model_cfg, key, value)
    if model_cfg.seq_length > model_cfg.max_position_embeddings:
        model_cfg.seq_length = model_cfg.max_position_embeddings  # the model cannot see further
    for key, value in tokenizer_settings(path).items():
        setattr(data_cfg, key, value)
    weights = from_llama(_hf_tensors(path), model_cfg, path) if llama else to_ours(_hf_tensors(path), path)
    if not model_cfg.no_weight_tying:
        weights.pop("embed_out.weight", None)  # a tied model may still list the shared matrix under its name
    return weights


def save_hf_dir(out: str, weights: dict, cfg: ModelConfig, tokenizer) -> None:
    """Write config.json, model.safetensors and tokenizer files that transformers loads offline (atomically)."""
    if cfg.pos_emb != "rotary":
        raise UserError(f"this model has pos-emb '{cfg.pos_emb}' (absolute learned positions); Hugging Face's "
                        "GPTNeoXForCausalLM has rotary positions only, so it cannot be exported there")
    llama = _family(cfg) == "llama"
    if tokenizer.hf is None:
        raise UserError("exporting a sentencepiece tokenizer to Hugging Face is not supported; "
                        "only tokenizers-library tokenizers (HFTokenizer, GPT2BPETokenizer) are")
    tmp = new_output_dir(out)
    try:
        eod_id = tokenizer.eod
        with open(os.path.join(tmp, "config.json"), "w", encoding="utf-8") as f:
            json.dump(llama_config(cfg, eod_id) if llama else hf_config(cfg, eod_id), f, indent=2)
        with open(os.path.join(tmp, "generation_config.json"), "w", encoding="utf-8") as f:
            json.dump({"bos_token_id": eod_id, "eos_token_id": eod_id}, f, indent=2)
        tensors = {k: v.detach().to(torch.float32).contiguous()
                   for k, v in (to_llama(weights, cfg) if llama else to_hf(weights)).items()}
        save_file(tensors, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        tokenizer.hf.save(os.path.join(tmp, "tokenizer.json"))  # exactly what we encode with
        with open(os.path.join(tmp, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": EOD, "eos_token": EOD,
                       "unk_token": EOD, "model_max_length": cfg.max_position_embeddings,
                       "clean_up_tokenization_spaces": False}, f, indent=2)
        publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
