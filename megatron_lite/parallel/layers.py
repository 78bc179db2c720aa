"""Tensor-parallel layers: each rank holds a contiguous shard of the full weight (see reshard.py's contract).

Every parameter states its parallel facts where it is built, at every tp size (Megatron's
set_tensor_model_parallel_attributes): `tp_dim`, the dimension it is split along (absent: replicated), and
`tp_parts`, the sizes of the blocks along that dimension that are each split (None: one block; a fused
[x; gate] projection has two). Init, resharding and interop read these facts instead of name lists.
With tp=1 the factories return plain nn.Linear / nn.Embedding, which are also the parity references.
"""

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import skip_init

from megatron_lite.errors import UserError
from megatron_lite.parallel import state
from megatron_lite.parallel.mappings import (copy_to_tp_region, gather_from_tp_region, reduce_from_tp_region,
                                             scatter_to_tp_region)


def _divide(n: int, tp: int, what: str) -> int:
    if n % tp:
        raise UserError(f"key 'model_parallel_size': {tp} does not divide the {what} ({n})")
    return n // tp


def _mark(p: nn.Parameter, dim: int, parts: tuple = None) -> nn.Parameter:
    p.tp_dim, p.tp_parts = dim, parts
    if state.get().tp_size > 1:
        p.tensor_model_parallel = True  # Megatron's name: DeepSpeed's ZeRO counts such shards in the gradient norm
    return p


def split_shards(full: torch.Tensor, dim: int, parts: tuple, tp: int) -> list:
    """The tp shards of a whole tensor: every block (parts) is cut into tp pieces; rank r keeps piece r of each."""
    blocks = full.split(list(parts), dim) if parts else (full,)
    for block in blocks:
        if block.size(dim) % tp:
            raise UserError(f"a block of size {block.size(dim)} along dim {dim} does not divide by tensor-parallel "
                            f"size {tp}")
    pieces = [block.chunk(tp, dim) for block in blocks]
    return [torch.cat([p[r] for p in pieces], dim) for r in range(tp)]


def merge_shards(shards: list, dim: int, parts: tuple) -> torch.Tensor:
    """The whole tensor from its tp shards (split_shards' inverse)."""
    if not parts:
        return torch.cat(shards, dim)
    local = [n // len(shards) for n in parts]
    if any(shard.size(dim) != sum(local) for shard in shards):
        raise UserError(f"shards of sizes {[shard.size(dim) for shard in shards]} along dim {dim} are not "
                        f"{len(shards)} equal slices of blocks {list(parts)}")
    per_rank = [shard.split(local, dim) for shard in shards]
    return torch.cat([torch.cat([blocks[i] for blocks in per_rank], dim) for i in range(len(parts))], dim)


class ColumnParallelLinear(nn.Module):
    """y = x A^T + b with A split along its output rows: [out/tp, in]; output stays split unless gather_output."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, gather_output: bool = False,
                 parts: tuple = None):
        super().__init__()
        tp = state.get().tp_size
        for block in parts or (out_features,):
            _divide(block, tp, "output features")
        self.out_local = out_features // tp
        self.weight = _mark(nn.Parameter(torch.empty(self.out_local, in_features)), 0, parts)
        self.bias = _mark(nn.Parameter(torch.zeros(self.out_local)), 0, parts) if bias else None
        self.gather_output = gather_output

    def forward(self, x):  # x [..., in] (replicated) -> [..., out/tp] or [..., out]
        y = F.linear(copy_to_tp_region(x), self.weight, self.bias)
        return gather_from_tp_region(y) if self.gather_output else y


class RowParallelLinear(nn.Module):
    """y = x A^T + b with A split along its input columns: [out, in/tp]; partial sums are all-reduced."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, input_is_parallel: bool = True):
        super().__init__()
        tp = state.get().tp_size
        self.weight = _mark(nn.Parameter(torch.empty(out_features, _divide(in_features, tp, "input features"))), 1)
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None  # replicated: added once, after the sum
        self.input_is_parallel = input_is_parallel

    def forward(self, x):  # x [..., in/tp] (or [..., in] when not input_is_parallel) -> [..., out]
        if not self.input_is_parallel:
            x = scatter_to_tp_region(x)
        y = reduce_from_tp_region(F.linear(x, self.weight))
        return y + self.bias if self.bias is not None else y


class VocabParallelEmbedding(nn.Module):
    """Embedding whose rows (the vocabulary) are split: rank r owns ids [r*v/tp, (r+1)*v/tp)."""

    def __init__(self, num_embeddings: int, embedding_dim: int):
        super().__init__()
        s = state.get()
        local = _divide(num_embeddings, s.tp_size, "padded vocabulary size")
        self.vocab_start, self.vocab_end = s.tp_rank * local, (s.tp_rank + 1) * local
        self.weight = _mark(nn.Parameter(torch.empty(local, embedding_dim)), 0)

    def forward(self, ids):  # ids [b, s] -> [b, s, h]
        outside = (ids < self.vocab_start) | (ids >= self.vocab_end)
        local_ids = (ids - self.vocab_start).masked_fill(outside, 0)
        out = F.embedding(local_ids, self.weight).masked_fill(outside.unsqueeze(-1), 0.0)  # other ranks' rows: 0
        return reduce_from_tp_region(out)


# With tp=1 the plain modules are built without their own random init (init_weights sets every value), so the
# random stream reaching init_weights is the same at every tp size and so are the initial weights.
def _uninitialised(module_cls, *args):
    """The module with its memory on the current default device (meta inside `with torch.device("meta")`)
    and no init of its own."""
    return skip_init(module_cls, *args, device=torch.get_default_device())


def column_linear(in_features: int, out_features: int, bias: bool = True, parts: tuple = None) -> nn.Module:
    """Output rows split over tp; `parts`: blocks of rows split separately (e.g. a fused [x; gate])."""
    if state.get().tp_size > 1:
        return ColumnParallelLinear(in_features, out_features, bias, parts=parts)
    layer = _uninitialised(nn.Linear, in_features, out_features, bias)
    for p in layer.parameters():
        _mark(p, 0, parts)
    return layer


def row_linear(in_features: int, out_features: int, bias: bool = True) -> nn.Module:
    """Input columns split over tp; the bias is replicated."""
    if state.get().tp_size > 1:
        return RowParallelLinear(in_features, out_features, bias)
    layer = _uninitialised(nn.Linear, in_features, out_features, bias)
    _mark(layer.weight, 1)
    return layer


def vocab_embedding(num_embeddings: int, embedding_dim: int) -> nn.Module:
    if state.get().tp_size > 1:
        return VocabParallelEmbedding(num_embeddings, embedding_dim)
    layer = _uninitialised(nn.Embedding, num_embeddings, embedding_dim)
    _mark(layer.weight, 0)
    return layer


def is_tp_sharded(p: torch.Tensor) -> bool:
    """Split over this run's tensor-parallel ranks (tp > 1 and a tp_dim)."""
    return getattr(p, "tp_dim", None) is not None and state.get().tp_size > 1


def full_shape(p: torch.Tensor) -> torch.Size:
    """Shape of the whole (unsplit) parameter this rank holds a shard of."""
    shape = list(p.shape)
    if is_tp_sharded(p):
        shape[p.tp_dim] *= state.get().tp_size
    return torch.Size(shape)


def gather_full(t: torch.Tensor, dim, parts: tuple = None) -> torch.Tensor:
    """The whole tensor (a shard split along dim in blocks `parts`, or replicated when dim is None) from all tp
    ranks."""
    s = state.get()
    if s.tp_size == 1 or dim is None:
        return t.detach()
    shards = [torch.empty_like(t) for _ in range(s.tp_size)]
    dist.all_gather(shards, t.detach().contiguous(), group=s.tp_group)
    return merge_shards(shards, dim, parts)


def gather_param(p: torch.Tensor, tensor: torch.Tensor = None) -> torch.Tensor:
    """The whole of parameter p (or of `tensor`, e.g. its gradient, laid out like p) from all tp ranks."""
    return gather_full(p if tensor is None else tensor, getattr(p, "tp_dim", None), getattr(p, "tp_parts", None))
