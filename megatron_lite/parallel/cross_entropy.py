"""Cross-entropy over logits whose vocabulary is split across tensor-parallel ranks (no full logits gathered)."""

import torch
import torch.distributed as dist
import torch.nn.functional as F

from megatron_lite.ops import fused
from megatron_lite.parallel import state


class _VocabParallelCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target, group, vocab_start):
        # logits [n, v/tp] fp32, target [n] global ids
        global_max = logits.max(dim=-1).values  # [n]
        dist.all_reduce(global_max, op=dist.ReduceOp.MAX, group=group)
        logits = logits - global_max.unsqueeze(-1)  # stable exp, same shift on every rank
        local = target - vocab_start
        inside = (local >= 0) & (local < logits.size(-1))
        local = local.masked_fill(~inside, 0)
        picked = logits.gather(-1, local.unsqueeze(-1)).squeeze(-1).masked_fill(~inside, 0.0)  # [n]
        exp = logits.exp()  # [n, v/tp]
        sum_exp = exp.sum(dim=-1)
        dist.all_reduce(picked, group=group)
        dist.all_reduce(sum_exp, group=group)
        softmax = exp / sum_exp.unsqueeze(-1)
        ctx.save_for_backward(softmax, local, inside)
        return sum_exp.log() - picked  # [n]

    @staticmethod
    def backward(ctx, grad):  # grad [n]
        softmax, local, inside = ctx.saved_tensors
        g = softmax.clone()
        rows = torch.arange(g.size(0), device=g.device)
        g[rows, local] -= inside.to(g.dtype)  # d/dlogits = softmax - onehot(target), onehot only on its owner
        return g * grad.unsqueeze(-1), None, None, None


def vocab_parallel_cross_entropy(logits: torch.Tensor, target: torch.Tensor,
                                 fused_kernel: bool = False) -> torch.Tensor:
    """Per-token loss [n] (fp32) of logits [n, v/tp] (this rank's vocabulary slice) against global target ids [n].

    fused_kernel (cross-entropy-loss-fusion, tp=1): the csrc kernel reads 16-bit logits without an fp32 copy."""
    s = state.get()
    if s.tp_size == 1:
        kernel = fused_kernel and fused.use_kernel("cross-entropy-loss-fusion", logits.device, logits.dtype)
        if kernel:
            return fused.softmax_cross_entropy(logits, target, kernel)
        return F.cross_entropy(logits.float(), target, reduction="none")
    vocab_start = s.tp_rank * logits.size(-1)
    return _VocabParallelCrossEntropy.apply(logits.float(), target, s.tp_group, vocab_start)
