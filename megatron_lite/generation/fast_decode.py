"""A one-token decoding step over a GPTModel's weights in plain functional ops.

At batch 1 on a CPU, a decoding step of a small model is mostly dispatch overhead: module calls,
dropout no-ops, separate rotary passes for q and k. This step runs the same arithmetic with about
half the operator calls. Its reference is GPTModel.forward with the same KV cache (parity-tested).
"""

import math

import torch
import torch.nn.functional as F

from megatron_lite.model.gpt import GPTModel


def supports(model) -> bool:
    """The fast step covers the plain (single-process) GPTModel with dense attention."""
    return type(model) is GPTModel and all(type(layer.attention.query_key_value) is torch.nn.Linear
                                           for layer in model.layers)


class FastDecoder:
    """step(ids [b, 1], cache) -> logits [b, v] for the token at position cache.length."""

    def __init__(self, model: GPTModel):
        cfg = model.cfg
        self.model, self.eps = model, cfg.layernorm_epsilon
        self.heads, self.head_dim = cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads
        self.parallel_residual = cfg.gpt_j_residual
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

    def step(self, ids: torch.Tensor, cache) -> torch.Tensor:
        b, h, nh, hd = ids.size(0), self.model.cfg.hidden_size, self.heads, self.head_dim
        pos = cache.length
        cos, sin = self.model.rotary(1, ids.device, pos)  # [1, 1, 1, rd]
        rd = cos.size(-1)
        cos, sin = cos.view(1, 1, 1, rd), sin.view(1, 1, 1, rd)  # broadcast over [b, nh, 2 (q and k), rd]
        x = F.embedding(ids, self.model.embed_in.weight)  # [b, 1, h]
        for i, (w1, b1, wqkv, bqkv, wd, bd, w2, b2, wup, bup, wdown, bdown) in enumerate(self.layers):
            a = F.layer_norm(x, (h,), w1, b1, self.eps)
            qkv = F.linear(a, wqkv, bqkv).view(b, nh, 3, hd)  # per head [q, k, v]
            qk = qkv[:, :, :2]  # [b, nh, 2, hd]: rotate q and k in one pass
            if rd:
                r1, r2 = qk[..., : rd // 2], qk[..., rd // 2: rd]
                rotated = qk[..., :rd] * cos + torch.cat((-r2, r1), dim=-1) * sin
                qk = torch.cat((rotated, qk[..., rd:]), dim=-1) if rd < hd else rotated
            q, k, v = qk[:, :, 0:1], qk[:, :, 1:2], qkv[:, :, 2:3]  # [b, nh, 1, hd]
            keys, values = cache.append(i, k, v)  # [b, nh, pos + 1, hd]
            attn = F.scaled_dot_product_attention(q, keys, values, scale=1.0 / math.sqrt(hd))  # [b, nh, 1, hd]
            attn = F.linear(attn.reshape(b, 1, h), wd, bd)  # [b, 1, h]
            if self.parallel_residual:
                m = F.layer_norm(x, (h,), w2, b2, self.eps)
                x = x + attn + F.linear(F.gelu(F.linear(m, wup, bup)), wdown, bdown)
            else:
                x = x + attn
                m = F.layer_norm(x, (h,), w2, b2, self.eps)
                x = x + F.linear(F.gelu(F.linear(m, wup, bup)), wdown, bdown)
        cache.advance(1)
        x = self.model.final_layer_norm(x)  # [b, 1, h] (a module call: contrastive search hooks its output)
        return F.linear(x[:, -1], self.out_weight)  # [b, v]
