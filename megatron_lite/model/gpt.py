"""GPT-NeoX decoder in [batch, seq, hidden] layout; parameter names match Hugging Face GPTNeoXForCausalLM."""

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from megatron_lite.config import ModelConfig
from megatron_lite.errors import UserError
from megatron_lite.model.init import init_weights
from megatron_lite.model.kv_cache import KVCache
from megatron_lite.model.rotary import RotaryEmbedding, apply_rotary, rotary_dims
from megatron_lite.model.size import count_parameters, flops_per_token  # noqa: F401 (re-exported)
from megatron_lite.parallel import state as parallel_state
from megatron_lite.parallel.layers import column_linear, row_linear, vocab_embedding
from megatron_lite.parallel.mappings import copy_to_tp_region
from megatron_lite.parallel.random import TRACKER

SUPPORTED = {"pos_emb": ("rotary",), "norm": ("layernorm",), "activation": ("gelu",),
             "attention_impl": ("sdpa", "reference")}


def check_model_config(cfg: ModelConfig) -> None:
    """Raise UserError naming the key for any model setting this implementation cannot honour."""
    for key, allowed in SUPPORTED.items():
        if getattr(cfg, key) not in allowed:
            raise UserError(f"key '{key}': {getattr(cfg, key)!r} is not supported; valid values: {', '.join(allowed)}")
    if cfg.hidden_size % cfg.num_attention_heads:
        raise UserError(f"key 'num_attention_heads' ({cfg.num_attention_heads}) must divide "
                        f"'hidden_size' ({cfg.hidden_size})")
    tp = parallel_state.get().tp_size
    if cfg.num_attention_heads % tp:
        raise UserError(f"key 'model_parallel_size' ({tp}) must divide 'num_attention_heads' ({cfg.num_attention_heads})")
    if cfg.padded_vocab_size is None:
        raise UserError("key 'padded_vocab_size' is not set: it is derived from the tokenizer before the model")


def causal_mask(q_len: int, k_len: int, device) -> torch.Tensor:
    """[q_len, k_len] bool, True where query i (the last q_len of k_len positions) may attend to key j."""
    return torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril(diagonal=k_len - q_len)


def reference_attention(q, k, v, dropout_p: float) -> torch.Tensor:
    """Readable attention: q [b, nh, sq, d], k/v [b, nh, sk, d] -> [b, nh, sq, d]; softmax in fp32."""
    scores = (q @ k.transpose(-2, -1)).float() / math.sqrt(q.size(-1))  # [b, nh, sq, sk]
    scores = scores.masked_fill(~causal_mask(q.size(2), k.size(2), q.device), float("-inf"))
    probs = F.dropout(scores.softmax(dim=-1).to(v.dtype), p=dropout_p)  # dropout_p is 0 outside training
    return probs @ v


def sdpa_attention(q, k, v, dropout_p: float) -> torch.Tensor:
    """torch's fused attention; with cached keys (sk > sq) the causal mask is offset explicitly."""
    sq, sk = q.size(2), k.size(2)
    if sq == sk:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
    # is_causal aligns the mask top-left, which is wrong for new queries after cached keys.
    mask = None if sq == 1 else causal_mask(sq, sk, q.device)  # one new token sees every key
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)


class Attention(nn.Module):
    """Causal self-attention with a fused QKV projection laid out per head as [q, k, v] (as GPT-NeoX).

    With tensor parallelism each rank computes its own heads (column-parallel QKV, row-parallel dense)."""

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        h, tp = cfg.hidden_size, parallel_state.get().tp_size
        self.heads, self.head_dim = cfg.num_attention_heads // tp, h // cfg.num_attention_heads  # heads: local
        self.layer_idx = layer_idx
        self.query_key_value = column_linear(h, 3 * h)
        self.dense = row_linear(h, h)
        self.dropout_p = cfg.attention_dropout
        self.attend = sdpa_attention if cfg.attention_impl == "sdpa" else reference_attention

    def forward(self, x, cos, sin, kv_cache: KVCache = None):
        b, s, _ = x.shape
        qkv = self.query_key_value(x).view(b, s, self.heads, 3 * self.head_dim)  # [b, s, nh, 3d]
        q, k, v = qkv.chunk(3, dim=-1)  # each [b, s, nh, d]
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [b, nh, s, d]
        if kv_cache is not None:
            k, v = kv_cache.append(self.layer_idx, k, v)  # [b, nh, past + s, d]
            k, v = k.to(q.dtype), v.to(q.dtype)
        with TRACKER.fork():  # attention dropout acts on this rank's own heads
            out = self.attend(q, k, v, self.dropout_p if self.training else 0.0)  # [b, nh, s, d]
        return self.dense(out.transpose(1, 2).reshape(b, s, -1))  # [b, s, h]


class MLP(nn.Module):
    """h -> 4h -> GeLU (exact erf) -> h."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.dense_h_to_4h = column_linear(cfg.hidden_size, 4 * cfg.hidden_size)
        self.dense_4h_to_h = row_linear(4 * cfg.hidden_size, cfg.hidden_size)

    def forward(self, x):
        return self.dense_4h_to_h(F.gelu(self.dense_h_to_4h(x)))  # [b, s, h]


class TransformerLayer(nn.Module):
    """Pre-LayerNorm block; parallel residual (GPT-J) when gpt_j_residual, else sequential."""

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layernorm_epsilon)
        self.attention = Attention(cfg, layer_idx)
        self.post_attention_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layernorm_epsilon)
        self.mlp = MLP(cfg)
        self.dropout = nn.Dropout(cfg.hidden_dropout)
        self.parallel_residual = cfg.gpt_j_residual

    def forward(self, x, cos, sin, kv_cache: KVCache = None):
        attn = self.dropout(self.attention(self.input_layernorm(x), cos, sin, kv_cache))  # [b, s, h]
        if self.parallel_residual:  # x + attn(ln1(x)) + mlp(ln2(x))
            return x + attn + self.dropout(self.mlp(self.post_attention_layernorm(x)))
        x = x + attn
        return x + self.dropout(self.mlp(self.post_attention_layernorm(x)))


class GPTModel(nn.Module):
    """Token ids [b, s] -> logits [b, s, padded_vocab_size]; optional KV cache for incremental decoding.

    With tensor parallelism (tp > 1) the logits are this rank's vocabulary slice [b, s, v/tp]."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        check_model_config(cfg)
        self.cfg = cfg
        h, v = cfg.hidden_size, cfg.padded_vocab_size
        self.embed_in = vocab_embedding(v, h)
        self.embed_dropout = nn.Dropout(cfg.hidden_dropout)
        self.layers = nn.ModuleList(TransformerLayer(cfg, i) for i in range(cfg.num_layers))
        self.final_layer_norm = nn.LayerNorm(h, eps=cfg.layernorm_epsilon)
        # Tied: the output projection reuses embed_in.weight and embed_out does not exist.
        self.embed_out = column_linear(h, v, bias=False) if cfg.no_weight_tying else None
        head_dim = h // cfg.num_attention_heads
        self.rotary = RotaryEmbedding(rotary_dims(head_dim, cfg.rotary_pct), cfg.rotary_emb_base,
                                      cfg.max_position_embeddings)
        self.checkpoint_activations = cfg.checkpoint_activations
        init_weights(self, cfg)

    def new_kv_cache(self, batch: int, max_len: int, dtype: torch.dtype = None, device=None) -> KVCache:
        """An empty cache for up to max_len tokens per sequence (dtype/device default to the model's)."""
        p = self.embed_in.weight
        heads = self.cfg.num_attention_heads
        return KVCache(len(self.layers), batch, heads // parallel_state.get().tp_size, max_len,
                       self.cfg.hidden_size // heads,
                       dtype or p.dtype, device or p.device)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor = None,
                kv_cache: KVCache = None, last_only: bool = False) -> torch.Tensor:
        """Logits [b, s, v] ([b, 1, v] with last_only, as decoding needs). With a kv_cache only the new
        tokens are given; they are appended to the cache."""
        s = input_ids.size(1)
        offset = kv_cache.length if kv_cache is not None else 0
        cos, sin = self.rotary(s, input_ids.device, offset, position_ids)  # [1 or b, s, 1, rotary dims]
        x = self.embed_dropout(self.embed_in(input_ids))  # [b, s, h]
        for layer in self.layers:
            if self.checkpoint_activations and self.training and kv_cache is None:
                # Keep only layer inputs; recompute the insides in backward (dropout RNG is replayed).
                x = checkpoint(layer, x, cos, sin, use_reentrant=False, context_fn=TRACKER.recompute_contexts)
            else:
                x = layer(x, cos, sin, kv_cache)
        if kv_cache is not None:
            kv_cache.advance(s)
        if last_only:
            x = x[:, -1:]  # [b, 1, h]: skip the output projection of positions nobody reads
        x = copy_to_tp_region(self.final_layer_norm(x))  # the output projection is column-parallel
        weight = self.embed_out.weight if self.embed_out is not None else self.embed_in.weight
        return F.linear(x, weight)  # [b, s, v / tp]
