"""Preallocated per-layer key/value cache for incremental decoding."""

import torch


class KVCache:
    """Keys and values of every layer, [b, heads, max_len, head_dim] each, filled left to right."""

    def __init__(self, num_layers: int, batch: int, heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype, device):
        shape = (batch, heads, max_len, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.max_len = max_len
        self.length = 0  # tokens stored so far (the same for every layer between forwards)

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Store new k, v [b, heads, n, head_dim] after the current length; return all keys and values so far."""
        start, end = self.length, self.length + k.size(2)
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: {end} tokens do not fit in max_len {self.max_len}")
        self.keys[layer][:, :, start:end] = k
        self.values[layer][:, :, start:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]  # [b, heads, end, head_dim]

    def advance(self, n: int) -> None:
        """Mark n more tokens as stored; the model calls this once every layer has appended them."""
        self.length += n

    def reset(self) -> None:
        """Forget the stored tokens (the memory is reused)."""
        self.length = 0

    def reorder(self, index: torch.Tensor) -> None:
        """Keep batch rows `index` (may repeat or drop rows): beam search and contrastive search regroup them."""
        self.keys = [k.index_select(0, index) for k in self.keys]
        self.values = [v.index_select(0, index) for v in self.values]
