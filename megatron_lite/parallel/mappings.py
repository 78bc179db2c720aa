"""Autograd-aware collectives over the tensor-parallel group (Megatron's f/g operators).

Each is the identity when tp=1, so the single-process model pays nothing.
"""

import torch
import torch.distributed as dist

from megatron_lite.parallel import state


def _all_reduce(x: torch.Tensor) -> torch.Tensor:
    s = state.get()
    if s.tp_size == 1:
        return x
    x = x.contiguous()
    dist.all_reduce(x, group=s.tp_group)
    return x


def _gather_last_dim(x: torch.Tensor) -> torch.Tensor:
    s = state.get()
    if s.tp_size == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(s.tp_size)]
    dist.all_gather(parts, x.contiguous(), group=s.tp_group)
    return torch.cat(parts, dim=-1)


def _split_last_dim(x: torch.Tensor) -> torch.Tensor:
    s = state.get()
    if s.tp_size == 1:
        return x
    return x.chunk(s.tp_size, dim=-1)[s.tp_rank].contiguous()


class _CopyToTP(torch.autograd.Function):
    """Forward: identity; backward: sum the gradient over tp ranks (entry of a column-parallel region)."""

    @staticmethod
    def forward(ctx, x):
        return x

    @staticmethod
    def backward(ctx, grad):
        return _all_reduce(grad.clone())


class _ReduceFromTP(torch.autograd.Function):
    """Forward: sum partial results over tp ranks; backward: identity (exit of a row-parallel region)."""

    @staticmethod
    def forward(ctx, x):
        return _all_reduce(x.clone())

    @staticmethod
    def backward(ctx, grad):
        return grad


class _GatherFromTP(torch.autograd.Function):
    """Forward: concatenate the last dim over tp ranks; backward: keep this rank's slice."""

    @staticmethod
    def forward(ctx, x):
        return _gather_last_dim(x)

    @staticmethod
    def backward(ctx, grad):
        return _split_last_dim(grad)


class _ScatterToTP(torch.autograd.Function):
    """Forward: keep this rank's slice of the last dim; backward: gather the slices."""

    @staticmethod
    def forward(ctx, x):
        return _split_last_dim(x)

    @staticmethod
    def backward(ctx, grad):
        return _gather_last_dim(grad)


def copy_to_tp_region(x):
    return x if state.get().tp_size == 1 else _CopyToTP.apply(x)


def reduce_from_tp_region(x):
    return x if state.get().tp_size == 1 else _ReduceFromTP.apply(x)


def gather_from_tp_region(x):
    return x if state.get().tp_size == 1 else _GatherFromTP.apply(x)


def scatter_to_tp_region(x):
    return x if state.get().tp_size == 1 else _ScatterToTP.apply(x)
