"""A one-token decoding step over a GPTModel's weights in plain functional ops.

At batch 1 on a CPU a decoding step streams every weight once per token, and torch's linear (MKL
sgemv) measured ~13 GB/s on weights not in cache: the CPU linears go to csrc/decode_linear_cpu.cpp,
which streams them at ~35-40 GB/s. The step also skips module calls and dropout no-ops and rotates
q and k in one pass. Its reference is GPTModel.forward with the same KV cache (parity-tested).
"""

import math

import torch
import torch.nn.functional as F

from megatron_lite.ops import fused
from megatron_lite.model.gpt import GPTModel

# Rows up to which the kernel measured faster than torch's linear on this 2-core CPU (8 is its limit).
KERNEL_MAX_ROWS = {torch.float32: 8, torch.bfloat16: 4}


# The config values the fast step implements; a model with any other decodes through its own forward.
IMPLEMENTS = {"pos_emb": ("rotary",), "norm": ("layernorm",), "activation": ("gelu",), "num_kv_heads": (None,),
              "use_bias_in_norms": (True,), "use_bias_in_attn_linear": (True,), "use_bias_in_mlp": (True,)}


def supports(model) -> bool:
    """The plain (single-process) GPTModel with the config values in IMPLEMENTS."""
    cfg = model.cfg if type(model) is GPTModel else None
    return cfg is not None and all(getattr(cfg, key) in values for key, values in IMPLEMENTS.items()) and all(
        type(layer.attention.query_key_value) is torch.nn.Linear for layer in model.layers)


class FastDecoder:
    """step(ids [b, 1], cache) -> logits [b, v] for the token at position cache.length."""

    def __init__(self, model: GPTModel):
        cfg = model.cfg
        self.model, self.eps = model, cfg.layernorm_epsilon
        self.heads, self.head_dim = cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads
        self.parallel_residual = cfg.gpt_j_residual
        self.gelu = "tanh" if cfg.bias_gelu_fusion else "none"  # the fused kernel's form (see model.gpt.MLP)
        self.layers = [
            (layer.input_layernorm.weight, layer.input_layernorm.bias,
             layer.attention.query_key_value.weight, layer.attention.query_key_value.bias,
             layer.attention.dense.weight, layer.attention.dense.bias,
             layer.post_attention_layernorm.weight, layer.post_attention_layernorm.bias,
             layer.mlp.dense_h_to_4h.weight, layer.mlp.dense_h_to_4h.bias,
             layer.mlp.dense_4h_to_h.weight, layer.mlp.dense_4h_to_h.bias)
            for layer in model.layers
        ]
        self.out_weight = model.embed_out.weight if model.embed_out is not None else model.embed_in.weight
        self.rotary_dims, self.scale = model.rotary.dims, 1.0 / math.sqrt(self.head_dim)
        self._rotary_tables(cfg.max_position_embeddings)
        weight = model.embed_in.weight
        self.kernel = (fused.use_kernel("generation's decode_linear kernel", "cpu", weight.dtype)
                       if weight.device.type == "cpu" else None)
        self.kernel_max_rows = KERNEL_MAX_ROWS.get(weight.dtype, 0)

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor = None) -> torch.Tensor:
        """F.linear, through the streaming kernel for the few rows of a CPU decoding step."""
        if self.kernel is not None and x.size(0) <= self.kernel_max_rows:
            return self.kernel.decode_linear(x, weight, bias)
        return fused.decode_linear_reference(x, weight, bias)

    def _rotary_tables(self, length: int) -> None:
        """cos and sign-folded sin per position: rotate_half(x) = [-x2, x1] = roll(x, half) * [-1.., +1..]."""
        _, _, cos, sin = self.model.rotary._table(length, self.model.embed_in.weight.device)
        half = self.rotary_dims // 2
        signs = torch.tensor([-1.0] * half + [1.0] * half, device=sin.device)
        self.cos_table, self.signed_sin_table = cos, sin * signs  # [positions, rd]

    def step(self, ids: torch.Tensor, cache) -> torch.Tensor:
        b, h, nh, hd = ids.size(0), self.model.cfg.hidden_size, self.heads, self.head_dim
        pos, eps, half = cache.length, self.eps, self.rotary_dims // 2
        if pos >= cache.max_len:
            raise ValueError(f"KV cache overflow: position {pos} does not fit in max_len {cache.max_len}")
        if pos >= self.cos_table.size(0):
            self._rotary_tables(pos + 1)
        cos, sin = self.cos_table[pos], self.signed_sin_table[pos]  # [rd]: broadcast over [b, nh, 2, rd]
        x = F.embedding(ids, self.model.embed_in.weight)  # [b, 1, h]
        for i, (w1, b1, wqkv, bqkv, wd, bd, w2, b2, wup, bup, wdown, bdown) in enumerate(self.layers):
            a = torch.layer_norm(x, (h,), w1, b1, eps)
            qkv = self.linear(a, wqkv, bqkv).view(b, nh, 3, hd)  # per head [q, k, v]
            if half:  # rotate q and k together, in place: x*cos + rotate_half(x)*sin on the first rd dims
                qk = qkv.narrow(2, 0, 2).narrow(3, 0, 2 * half)  # [b, nh, 2, rd]
                rolled = torch.roll(qk, half, dims=-1)  # a copy, taken before qk changes in place
                qk.mul_(cos).addcmul_(rolled, sin)
            keys, values = cache.keys[i], cache.values[i]  # [b, nh, max_len, hd]
            keys.select(2, pos).copy_(qkv.select(2, 1))  # narrow/select: cheaper calls than python slicing
            values.select(2, pos).copy_(qkv.select(2, 2))
            attn = F.scaled_dot_product_attention(qkv.narrow(2, 0, 1), keys.narrow(2, 0, pos + 1),
                                                  values.narrow(2, 0, pos + 1), scale=self.scale)  # [b, nh, 1, hd]
            attn = self.linear(attn.reshape(b, 1, h), wd, bd)  # [b, 1, h]
            # Residual adds go in place into the fresh branch outputs: no new tensors per step.
            if self.parallel_residual:
                m = torch.layer_norm(x, (h,), w2, b2, eps)
                up = F.gelu(self.linear(m, wup, bup), approximate=self.gelu)
                x = self.linear(up, wdown, bdown).add_(attn).add_(x)
            else:
                x = attn.add_(x)
                m = torch.layer_norm(x, (h,), w2, b2, eps)
                up = F.gelu(self.linear(m, wup, bup), approximate=self.gelu)
                x = self.linear(up, wdown, bdown).add_(x)
        cache.advance(1)
        norm = self.model.final_layer_norm
        if norm._forward_hooks:  # contrastive search reads this output through a hook
            x = norm(x)  # [b, 1, h]
        else:
            x = torch.layer_norm(x, (h,), norm.weight, norm.bias, eps)
        return self.linear(x[:, -1], self.out_weight)  # [b, v]
