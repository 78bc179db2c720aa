"""Causal attention cores: torch SDPA, explicit scores with the fused softmax kernels, and the plain reference.

All take q [b, nh, sq, d], k/v [b, nh, sk, d] (sk > sq with cached keys) and return [b, nh, sq, d].
"""

import math
from functools import lru_cache

import torch
import torch.nn.functional as F

from megatron_lite.ops import fused

CAUSAL_KEY, MASKED_KEY = "scaled-upper-triang-masked-softmax-fusion", "scaled-masked-softmax-fusion"


def causal_mask(q_len: int, k_len: int, device) -> torch.Tensor:
    """[q_len, k_len] bool, True where query i (the last q_len of k_len positions) may attend to key j."""
    return torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril(diagonal=k_len - q_len)


def repeat_kv(q, k, v):
    """k, v [b, nkv, s, d] repeated to q's heads [b, nh, s, d] (grouped-query attention: nh / nkv queries each)."""
    group = q.size(1) // k.size(1)
    if group == 1:
        return k, v
    return k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)


def reference_attention(q, k, v, dropout_p: float) -> torch.Tensor:
    """Readable attention; softmax in fp32."""
    k, v = repeat_kv(q, k, v)
    scores = (q @ k.transpose(-2, -1)).float() / math.sqrt(q.size(-1))  # [b, nh, sq, sk]
    scores = scores.masked_fill(~causal_mask(q.size(2), k.size(2), q.device), float("-inf"))
    probs = F.dropout(scores.softmax(dim=-1).to(v.dtype), p=dropout_p)  # dropout_p is 0 outside training
    return probs @ v


def sdpa_attention(q, k, v, dropout_p: float) -> torch.Tensor:
    """torch's fused attention (flash where available); with cached keys the causal mask is offset explicitly."""
    sq, sk, grouped = q.size(2), k.size(2), k.size(1) != q.size(1)
    if sq == sk:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True, enable_gqa=grouped)
    # is_causal aligns the mask top-left, which is wrong for new queries after cached keys.
    mask = None if sq == 1 else causal_mask(sq, sk, q.device)  # one new token sees every key
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, enable_gqa=grouped)


def fused_softmax_attention(q, k, v, dropout_p: float, causal_kernel, masked_kernel) -> torch.Tensor:
    """Scores, the fused scaled softmax (as Megatron's FusedScaleMaskSoftmax: the upper-triangular kernel for
    square scores, the masked kernel after cached keys), dropout, values. A None kernel: its reference."""
    scale, sq, sk = 1.0 / math.sqrt(q.size(-1)), q.size(2), k.size(2)
    k, v = repeat_kv(q, k, v)
    scores = q @ k.transpose(-2, -1)  # [b, nh, sq, sk], unscaled: the kernel scales
    if sq == sk:
        probs = (fused.causal_softmax(scores, scale, causal_kernel) if causal_kernel
                 else fused.causal_softmax_reference(scores, scale))
    else:
        mask = ~causal_mask(sq, sk, q.device)[None, None]  # [1, 1, sq, sk], True = hidden
        probs = (fused.masked_softmax(scores, mask, scale, masked_kernel) if masked_kernel
                 else fused.masked_softmax_reference(scores, mask, scale))
    return F.dropout(probs, p=dropout_p) @ v


@lru_cache(maxsize=None)
def attention_core(impl: str, causal_fusion: bool, masked_fusion: bool, device_type: str, dtype: torch.dtype):
    """The attention function for attention_impl, the two softmax-fusion keys, a device type and a dtype.

    auto: with scaled-upper-triang-masked-softmax-fusion on, the fused softmax path where it measured faster
    than SDPA (CPU, bf16) and its kernel is built; SDPA otherwise (flash attention on GPU beats a separate
    softmax kernel). fused: the kernels whatever the keys say (choosing the path is the request)."""
    if impl == "sdpa":
        return sdpa_attention
    if impl == "reference":
        return reference_attention
    if impl == "auto":
        # Measured: the fused path beats SDPA only on CPU in bf16; elsewhere SDPA is a choice, not a fallback.
        faster = device_type == "cpu" and dtype == torch.bfloat16
        if not (causal_fusion and faster) or fused.use_kernel(CAUSAL_KEY, device_type, dtype) is None:
            return sdpa_attention
    else:  # fused
        causal_fusion = masked_fusion = True
    causal = causal_fusion and fused.use_kernel(CAUSAL_KEY, device_type, dtype)
    masked = masked_fusion and fused.use_kernel(MASKED_KEY, device_type, dtype)
    return lambda q, k, v, dropout_p: fused_softmax_attention(q, k, v, dropout_p, causal or None, masked or None)
