"""Data-parallel gradient averaging: bucketed all-reduces launched during backward as gradients become ready.

`reference_all_reduce` is the plain version (one all-reduce per gradient after backward) it is tested against.
"""

import torch
import torch.distributed as dist


def reference_all_reduce(params, group, size: int) -> None:
    """Average each parameter's gradient over the data-parallel group, after backward."""
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad, group=group)
            p.grad.div_(size)


class GradReducer:
    """Groups parameters into buckets of ~bucket_mb (in reverse order, the order backward produces them) and
    all-reduces a bucket asynchronously as soon as its last gradient is accumulated, while backward goes on.

    Gradients live in one flat buffer per bucket (views), so a bucket is reduced in place with no copies.
    Use `zero_grad()` instead of the optimizer's; call `set_sync(True)` before the last micro batch's backward
    (earlier ones only accumulate), then `finish()`.
    """

    def __init__(self, params, group, size: int, bucket_mb: float = 25.0):
        self.group, self.size, self.sync = group, size, False
        self.params = [p for p in params if p.requires_grad]
        self.buckets, current, nbytes = [], [], 0
        for p in reversed(self.params):
            current.append(p)
            nbytes += p.numel() * p.element_size()
            if nbytes >= bucket_mb * 2**20:
                self.buckets.append(current)
                current, nbytes = [], 0
        if current:
            self.buckets.append(current)
        self.buffers = [torch.zeros(sum(p.numel() for p in b), dtype=b[0].dtype, device=b[0].device)
                        for b in self.buckets]  # [bucket numel] each
        self.bucket_of = {id(p): i for i, b in enumerate(self.buckets) for p in b}
        self.pending = [0] * len(self.buckets)
        self.work = []
        self.zero_grad()
        for p in self.params:
            p.register_post_accumulate_grad_hook(self._on_grad)

    def zero_grad(self) -> None:
        """Zero the buffers and point every .grad back at its view (an optimizer may have dropped it)."""
        for bucket, buffer in zip(self.buckets, self.buffers):
            buffer.zero_()
            offset = 0
            for p in bucket:
                p.grad = buffer[offset:offset + p.numel()].view_as(p)
                offset += p.numel()

    def set_sync(self, sync: bool) -> None:
        self.sync = sync
        self.pending = [len(b) for b in self.buckets]

    def _on_grad(self, p) -> None:
        if not self.sync:
            return
        i = self.bucket_of[id(p)]
        self.pending[i] -= 1
        if self.pending[i] == 0:
            self._launch(i)

    def _launch(self, i: int) -> None:
        self.buffers[i].div_(self.size)
        self.work.append(dist.all_reduce(self.buffers[i], group=self.group, async_op=True))

    def finish(self) -> None:
        """Reduce buckets some of whose parameters got no gradient (unused this step), then wait for all."""
        if self.sync:
            for i, left in enumerate(self.pending):
                if left:
                    self._launch(i)
        for work in self.work:
            work.wait()
        self.work, self.sync = [], False
