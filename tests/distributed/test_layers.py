"""Each tensor-parallel layer equals its plain torch reference on gathered weights, forward and backward."""

import torch
import torch.nn.functional as F

from megatron_lite.parallel import state
from megatron_lite.parallel.cross_entropy import vocab_parallel_cross_entropy
from megatron_lite.parallel.layers import (ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding,
                                           gather_full)
from tests.distributed.harness import run_workers

ATOL = 1e-5


def _close(a, b, what):
    assert torch.allclose(a, b, atol=ATOL, rtol=1e-5), f"{what}: max diff {(a - b).abs().max().item():.3g}"


def _reference_linear(layer, dim):
    """nn.Linear holding the gathered weights of a parallel linear."""
    w = gather_full(layer.weight, dim)
    ref = torch.nn.Linear(w.size(1), w.size(0), bias=layer.bias is not None)
    with torch.no_grad():
        ref.weight.copy_(w)
        if layer.bias is not None:
            ref.bias.copy_(gather_full(layer.bias, getattr(layer.bias, "tp_dim", None)))
    return ref


def _check_layers():
    s = state.get()
    torch.manual_seed(0)  # same inputs on every rank; different weight shards per rank
    x = torch.randn(3, 5, 8, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()

    for gather_output in (False, True):
        torch.manual_seed(10 + s.tp_rank)
        col = ColumnParallelLinear(8, 12, gather_output=gather_output)
        torch.nn.init.normal_(col.weight)
        torch.nn.init.normal_(col.bias)
        ref = _reference_linear(col, 0)
        y, y_ref = col(x), ref(x_ref)
        _close(y if gather_output else gather_full(y, -1), y_ref, "column forward")
        torch.manual_seed(1)  # the same output gradient on every rank
        g = torch.randn_like(y_ref)
        y.backward(g if gather_output else g.chunk(s.tp_size, -1)[s.tp_rank])
        y_ref.backward(g)
        _close(x.grad, x_ref.grad, "column input grad")
        _close(gather_full(col.weight.grad, 0), ref.weight.grad, "column weight grad")
        _close(gather_full(col.bias.grad, 0), ref.bias.grad, "column bias grad")
        x.grad = x_ref.grad = None

    torch.manual_seed(20 + s.tp_rank)
    row = RowParallelLinear(8, 6, input_is_parallel=False)
    torch.nn.init.normal_(row.weight)
    torch.manual_seed(21)
    torch.nn.init.normal_(row.bias)  # replicated: equal on every rank
    ref = _reference_linear(row, 1)
    y, y_ref = row(x), ref(x_ref)
    _close(y, y_ref, "row forward")
    torch.manual_seed(2)
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    _close(x.grad, x_ref.grad, "row input grad")
    _close(gather_full(row.weight.grad, 1), ref.weight.grad, "row weight grad")
    _close(row.bias.grad, ref.bias.grad, "row bias grad")

    torch.manual_seed(30 + s.tp_rank)
    emb = VocabParallelEmbedding(16, 4)
    torch.nn.init.normal_(emb.weight)
    ref = torch.nn.Embedding(16, 4)
    with torch.no_grad():
        ref.weight.copy_(gather_full(emb.weight, 0))
    ids = torch.tensor([[0, 3, 7, 8, 15, 15], [9, 1, 2, 14, 8, 0]])
    y, y_ref = emb(ids), ref(ids)
    _close(y, y_ref, "embedding forward")
    torch.manual_seed(3)
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    _close(gather_full(emb.weight.grad, 0), ref.weight.grad, "embedding grad")

    torch.manual_seed(4)
    logits = torch.randn(10, 16) * 5
    target = torch.randint(0, 16, (10,))
    local = logits.chunk(s.tp_size, -1)[s.tp_rank].clone().requires_grad_()
    full = logits.clone().requires_grad_()
    loss = vocab_parallel_cross_entropy(local, target)
    loss_ref = F.cross_entropy(full, target, reduction="none")
    _close(loss, loss_ref, "cross-entropy forward")
    w = torch.rand(10)
    (loss * w).sum().backward()
    (loss_ref * w).sum().backward()
    _close(gather_full(local.grad, -1), full.grad, "cross-entropy grad")


def test_parallel_layers_match_references_tp2():
    run_workers(_check_layers, world=2, tp=2, timeout=120)
