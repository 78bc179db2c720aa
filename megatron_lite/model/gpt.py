"""GPT-NeoX decoder in [batch, seq, hidden] layout; parameter names match Hugging Face GPTNeoXForCausalLM."""

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from megatron_lite.config import ModelConfig
from megatron_lite.errors import UserError
from megatron_lite.ops import fused
from megatron_lite.model.attention import attention_core
from megatron_lite.model.init import init_weights, writes_residual
from megatron_lite.model.kv_cache import KVCache
from megatron_lite.model.norms import norm_layer
from megatron_lite.model.rotary import RotaryEmbedding, apply_rotary, rotary_dims
from megatron_lite.parallel import state as parallel_state
from megatron_lite.parallel.layers import column_linear, row_linear, vocab_embedding
from megatron_lite.parallel.mappings import copy_to_tp_region
from megatron_lite.parallel.random import TRACKER


def check_model_config(cfg: ModelConfig) -> None:
    """Raise UserError naming the key for any model shape this implementation cannot build (the loader has
    checked every choice key against its Literal type)."""
    if cfg.hidden_size % cfg.num_attention_heads:
        raise UserError(f"key 'num_attention_heads' ({cfg.num_attention_heads}) must divide "
                        f"'hidden_size' ({cfg.hidden_size})")
    tp, kv = parallel_state.get().tp_size, kv_heads(cfg)
    if cfg.num_attention_heads % tp:
        raise UserError(f"key 'model_parallel_size' ({tp}) must divide 'num_attention_heads' ({cfg.num_attention_heads})")
    if kv < 1 or cfg.num_attention_heads % kv:
        raise UserError(f"key 'num_kv_heads' ({kv}) must divide 'num_attention_heads' ({cfg.num_attention_heads})")
    if kv % tp:  # as GPT-NeoX: key/value heads are split over tp, not copied
        raise UserError(f"key 'model_parallel_size' ({tp}) must divide 'num_kv_heads' ({kv})")
    if cfg.padded_vocab_size is None:
        raise UserError("key 'padded_vocab_size' is not set: it is derived from the tokenizer before the model")


def kv_heads(cfg: ModelConfig) -> int:
    """Key/value heads: num_kv_heads, or one per attention head."""
    return cfg.num_kv_heads or cfg.num_attention_heads


def mlp_width(cfg: ModelConfig) -> int:
    """The MLP's inner width: 4h, or for swiglu GPT-NeoX's int(4h * 2/3) // 2 (mlp_multiple_of 1)."""
    return int(4 * cfg.hidden_size * 2 / 3) // 2 if cfg.activation == "swiglu" else 4 * cfg.hidden_size


class Attention(nn.Module):
    """Causal self-attention with a fused QKV projection, laid out as GPT-NeoX: per head [q, k, v]; with
    grouped-query attention (num_kv_heads) [all q; all k; all v], each block split over tp.

    With tensor parallelism each rank computes its own heads (column-parallel QKV, row-parallel dense)."""

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        h, tp = cfg.hidden_size, parallel_state.get().tp_size
        self.heads, self.head_dim = cfg.num_attention_heads // tp, h // cfg.num_attention_heads  # heads: local
        self.kv_heads = kv_heads(cfg) // tp
        self.grouped = self.kv_heads != self.heads
        self.layer_idx = layer_idx
        kv = kv_heads(cfg) * self.head_dim
        self.query_key_value = column_linear(h, h + 2 * kv, cfg.use_bias_in_attn_linear,
                                             parts=(h, kv, kv) if self.grouped else None)
        self.dense = writes_residual(row_linear(h, h, cfg.use_bias_in_attn_linear))
        self.dropout_p = cfg.attention_dropout
        self.impl = (cfg.attention_impl, cfg.scaled_upper_triang_masked_softmax_fusion,
                     cfg.scaled_masked_softmax_fusion)  # with q's device and dtype: attention_core's key

    def forward(self, x, cos, sin, kv_cache: KVCache = None):
        b, s, _ = x.shape
        qkv = self.query_key_value(x)
        if self.grouped:  # [b, s, (nh + 2 nkv) d] -> q [b, s, nh, d], k and v [b, s, nkv, d]
            kv = self.kv_heads * self.head_dim
            q, k, v = qkv.split([self.heads * self.head_dim, kv, kv], dim=-1)
            q, k, v = q.view(b, s, self.heads, -1), k.view(b, s, self.kv_heads, -1), v.view(b, s, self.kv_heads, -1)
        else:
            q, k, v = qkv.view(b, s, self.heads, 3 * self.head_dim).chunk(3, dim=-1)  # each [b, s, nh, d]
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [b, nh, s, d]
        if kv_cache is not None:
            k, v = kv_cache.append(self.layer_idx, k, v)  # [b, nkv, past + s, d]
            k, v = k.to(q.dtype), v.to(q.dtype)
        attend = attention_core(*self.impl, q.device.type, q.dtype)  # q's dtype is autocast's
        with TRACKER.fork():  # attention dropout acts on this rank's own heads
            out = attend(q, k, v, self.dropout_p if self.training else 0.0)  # [b, nh, s, d]
        return self.dense(out.transpose(1, 2).reshape(b, s, -1))  # [b, s, h]


class MLP(nn.Module):
    """h -> 4h -> GeLU -> h. GeLU is exact (erf), or with bias_gelu_fusion the tanh form fused with the bias
    add, as GPT-NeoX's bias_gelu kernel."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        bias, width = cfg.use_bias_in_mlp, mlp_width(cfg)
        self.dense_h_to_4h = column_linear(cfg.hidden_size, width, bias)
        self.dense_4h_to_h = writes_residual(row_linear(width, cfg.hidden_size, bias))
        self.bias_gelu_fusion = cfg.bias_gelu_fusion

    def forward(self, x):
        if not self.bias_gelu_fusion or self.dense_h_to_4h.bias is None:
            gelu = "tanh" if self.bias_gelu_fusion else "none"
            return self.dense_4h_to_h(F.gelu(self.dense_h_to_4h(x), approximate=gelu))  # [b, s, h]
        up = self.dense_h_to_4h  # nn.Linear or ColumnParallelLinear: the bias goes into the kernel
        pre = F.linear(copy_to_tp_region(x), up.weight)  # [b, s, 4h / tp]
        kernel = fused.use_kernel("bias-gelu-fusion", pre.device, pre.dtype)
        act = fused.bias_gelu(pre, up.bias, kernel) if kernel else fused.bias_gelu_reference(pre, up.bias)
        return self.dense_4h_to_h(act)  # [b, s, h]


class SwiGLU(nn.Module):
    """h -> [x; gate] -> silu(gate) * x -> h, as GPT-NeoX's gated MLP (one projection, x first, gate second)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        bias, width = cfg.use_bias_in_mlp, mlp_width(cfg)
        self.dense_h_to_4h = column_linear(cfg.hidden_size, 2 * width, bias, parts=(width, width))
        self.dense_4h_to_h = writes_residual(row_linear(width, cfg.hidden_size, bias))

    def forward(self, x):
        up, gate = self.dense_h_to_4h(x).chunk(2, dim=-1)  # each [b, s, width / tp]
        return self.dense_4h_to_h(F.silu(gate) * up)  # [b, s, h]


MLPS = {"gelu": MLP, "swiglu": SwiGLU}


class TransformerLayer(nn.Module):
    """Pre-norm block (the norm and MLP classes chosen by the config); parallel residual (GPT-J) when
    gpt_j_residual, else sequential."""

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = norm_layer(cfg, cfg.hidden_size)
        self.attention = Attention(cfg, layer_idx)
        self.post_attention_layernorm = norm_layer(cfg, cfg.hidden_size)
        self.mlp = MLPS[cfg.activation](cfg)
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
        # GPT-NeoX's pos-emb 'learned': absolute positions added to the token embedding (replicated over tp).
        self.embed_positions = nn.Embedding(cfg.max_position_embeddings, h) if cfg.pos_emb == "learned" else None
        self.embed_dropout = nn.Dropout(cfg.hidden_dropout)
        self.layers = nn.ModuleList(TransformerLayer(cfg, i) for i in range(cfg.num_layers))
        self.final_layer_norm = norm_layer(cfg, h)
        # Tied: the output projection reuses embed_in.weight and embed_out does not exist.
        self.embed_out = column_linear(h, v, bias=False) if cfg.no_weight_tying else None
        head_dim = h // cfg.num_attention_heads
        rotated = rotary_dims(head_dim, cfg.rotary_pct) if cfg.pos_emb == "rotary" else 0  # 0: q, k pass through
        self.rotary = RotaryEmbedding(rotated, cfg.rotary_emb_base, cfg.max_position_embeddings)
        self.checkpoint_activations = cfg.checkpoint_activations
        init_weights(self, cfg)

    def new_kv_cache(self, batch: int, max_len: int, dtype: torch.dtype = None, device=None) -> KVCache:
        """An empty cache for up to max_len tokens per sequence (dtype/device default to the model's)."""
        p = self.embed_in.weight
        return KVCache(len(self.layers), batch, kv_heads(self.cfg) // parallel_state.get().tp_size, max_len,
                       self.cfg.hidden_size // self.cfg.num_attention_heads, dtype or p.dtype, device or p.device)

    def _run_layers(self, start: int, end: int, x, cos, sin, kv_cache: KVCache = None):
        for layer in self.layers[start:end]:
            x = layer(x, cos, sin, kv_cache)
        return x

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor = None,
                kv_cache: KVCache = None, last_only: bool = False) -> torch.Tensor:
        """Logits [b, s, v] ([b, 1, v] with last_only, as decoding needs). With a kv_cache only the new
        tokens are given; they are appended to the cache."""
        s = input_ids.size(1)
        offset = kv_cache.length if kv_cache is not None else 0
        cos, sin = self.rotary(s, input_ids.device, offset, position_ids)  # [1 or b, s, 1, rotary dims]
        x = self.embed_in(input_ids)  # [b, s, h]
        if self.embed_positions is not None:
            if position_ids is None:
                position_ids = torch.arange(offset, offset + s, device=input_ids.device)[None]  # [1, s]
            x = x + self.embed_positions(position_ids)
        x = self.embed_dropout(x)
        if self.checkpoint_activations and self.training and kv_cache is None:
            # Keep only the input of every checkpoint_num_layers layers; recompute the rest in backward
            # (dropout RNG is replayed).
            step = self.cfg.checkpoint_num_layers
            for start in range(0, len(self.layers), step):
                x = checkpoint(self._run_layers, start, start + step, x, cos, sin, use_reentrant=False,
                               context_fn=TRACKER.recompute_contexts)
        else:
            x = self._run_layers(0, len(self.layers), x, cos, sin, kv_cache)
        if kv_cache is not None:
            kv_cache.advance(s)
        if last_only:
            x = x[:, -1:]  # [b, 1, h]: skip the output projection of positions nobody reads
        x = copy_to_tp_region(self.final_layer_norm(x))  # the output projection is column-parallel
        weight = self.embed_out.weight if self.embed_out is not None else self.embed_in.weight
        return F.linear(x, weight)  # [b, s, v / tp]


@lru_cache(maxsize=8)
def _meta_model(frozen: tuple) -> GPTModel:
    with parallel_state.single_process(), torch.device("meta"):
        return GPTModel(ModelConfig(**dict(frozen)))


def meta_model(cfg: ModelConfig) -> GPTModel:
    """The whole model (tp = 1) on the meta device: its parameters state every shape and parallel fact."""
    return _meta_model(tuple(sorted(vars(cfg).items())))
