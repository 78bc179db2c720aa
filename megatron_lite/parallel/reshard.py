"""Split a full state dict into tensor-parallel shards and merge shards back (pure functions, no processes).

What is split, along which dim and in which blocks is not written here: every parameter states it where it is
built (`tp_dim`, `tp_parts`, see layers.py), and `partition_facts` reads them off a model. Parameters without
facts (norms, row-parallel biases) are replicated, and replicas must agree when merged. A key `field:NAME`
(optimizer state) reshards like parameter NAME.
"""

from typing import Dict, List

import torch

from megatron_lite.errors import UserError
from megatron_lite.parallel.layers import merge_shards, split_shards

Facts = Dict[str, tuple]  # parameter name -> (tp_dim, tp_parts) for every split parameter


def partition_facts(model: torch.nn.Module) -> Facts:
    """The split parameters of a model (built at any tp size, on any device, the meta device included)."""
    return {name: (p.tp_dim, getattr(p, "tp_parts", None)) for name, p in model.named_parameters()
            if getattr(p, "tp_dim", None) is not None}


def _facts_of(key: str, facts: Facts):
    return facts.get(key.rsplit(":", 1)[-1])


def split_tp(full: Dict[str, torch.Tensor], tp: int, facts: Facts) -> List[Dict[str, torch.Tensor]]:
    """One state dict per tensor-parallel rank; every split block must divide evenly by tp."""
    if tp < 1:
        raise UserError(f"tensor-parallel size must be >= 1, got {tp}")
    if tp == 1:  # the whole dict is the one shard: no copies (a 160M model loads 3x faster)
        return [dict(full)]
    shards = [{} for _ in range(tp)]
    for name, tensor in full.items():
        fact = _facts_of(name, facts)
        if fact is None:
            for shard in shards:
                shard[name] = tensor.clone()
            continue
        try:
            pieces = split_shards(tensor, *fact, tp)
        except UserError as e:
            raise UserError(f"'{name}': {e}") from None
        for shard, piece in zip(shards, pieces):
            shard[name] = piece.clone()
    return shards


def merge_tp_shards(shards: List[Dict[str, torch.Tensor]], facts: Facts) -> Dict[str, torch.Tensor]:
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
        fact = _facts_of(name, facts)
        if fact is not None:
            full[name] = merge_shards(parts, *fact) if len(parts) > 1 else parts[0]
            continue
        for rank, part in enumerate(parts[1:], 1):
            if part.shape != parts[0].shape or not torch.equal(part, parts[0]):
                raise UserError(f"replicated parameter '{name}' differs between tensor-parallel ranks 0 and {rank}")
        full[name] = parts[0]
    return full


def reshard(shards: List[Dict[str, torch.Tensor]], tp: int, facts: Facts) -> List[Dict[str, torch.Tensor]]:
    """n shards -> tp shards."""
    return split_tp(merge_tp_shards(shards, facts), tp, facts)
