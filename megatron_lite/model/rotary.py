"""Rotary position embedding as GPT-NeoX / Hugging Face GPTNeoX: rotate-half form on the first rotary dims."""

import torch

from megatron_lite.errors import UserError


def rotary_dims(head_dim: int, rotary_pct: float) -> int:
    """How many leading dims of each head are rotated: int(head_dim * rotary_pct), as GPT-NeoX."""
    dims = int(head_dim * rotary_pct)
    if dims % 2 or not 0.0 <= rotary_pct <= 1.0:
        raise UserError(
            f"key 'rotary_pct' = {rotary_pct} gives {dims} rotary dims of a {head_dim}-dim head; "
            "it must be in [0, 1] and give an even number"
        )
    return dims


class RotaryEmbedding:
    """cos/sin tables for positions, cached per device (fp32, not parameters, so no state-dict entries)."""

    def __init__(self, dims: int, base: float, max_positions: int):
        self.dims, self.base, self.max_positions = dims, base, max_positions
        self._cache = None  # (device, inv_freq [d/2], cos [n, d], sin [n, d])

    def _inv_freq(self, device) -> torch.Tensor:
        exponents = torch.arange(0, self.dims, 2, dtype=torch.float32, device=device) / self.dims
        return 1.0 / (self.base ** exponents)  # [d/2]

    @staticmethod
    def _cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor):
        freqs = positions.float()[..., None] * inv_freq  # [..., d/2]
        emb = torch.cat((freqs, freqs), dim=-1)  # [..., d]: the two halves share frequencies (rotate-half form)
        return emb.cos(), emb.sin()

    def _table(self, length: int, device):
        """Cached tables covering positions [0, length); rebuilt on a new device or a longer need."""
        device = torch.device(device)
        if self._cache is None or self._cache[0] != device or self._cache[2].size(0) < length:
            n = max(length, self.max_positions)
            inv_freq = self._inv_freq(device)
            cos, sin = self._cos_sin(torch.arange(n, device=device), inv_freq)  # [n, d]
            self._cache = (device, inv_freq, cos, sin)
        return self._cache

    def __call__(self, seq_len: int, device, offset: int = 0, position_ids: torch.Tensor = None):
        """(cos, sin), each [1 or b, s, 1, d] fp32, for positions offset.. or the given position_ids [b, s]."""
        if position_ids is None:
            _, _, cos, sin = self._table(offset + seq_len, device)
            cos, sin = cos[offset:offset + seq_len][None], sin[offset:offset + seq_len][None]  # [1, s, d]
        else:
            # Explicit positions are computed on the fly: any value is fine and no host sync is needed.
            _, inv_freq, _, _ = self._table(0, device)
            cos, sin = self._cos_sin(position_ids.view(-1, seq_len), inv_freq)  # [b, s, d]
        return cos.unsqueeze(2), sin.unsqueeze(2)  # [b, s, 1, d]: broadcast over heads


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """[x1, x2] -> [-x2, x1] on the last dim."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first cos.size(-1) dims of x [b, s, heads, head_dim]; the rest pass through."""
    dims = cos.size(-1)
    if dims == 0:
        return x
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)  # keep activations in their dtype (bf16/fp16 under autocast)
    x_rot, x_pass = x[..., :dims], x[..., dims:]
    return torch.cat((x_rot * cos + rotate_half(x_rot) * sin, x_pass), dim=-1)
