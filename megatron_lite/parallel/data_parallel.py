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

    Call `set_sync(True)` before the last micro batch's backward (earlier ones only accumulate), then `finish()`.
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
        self.bucket_of = {id(p): i for i, b in enumerate(self.buckets) for p in b}
        self.pending = [0] * len(self.buckets)
        self.work = []
        for p in self.params:
            p.register_post_accumulate_grad_hook(self._on_grad)

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
        grads = [p.grad for p in self.buckets[i]]
        flat = torch.cat([g.reshape(-1) for g in grads]).div_(self.size)  # [bucket numel]
        self.work.append((dist.all_reduce(flat, group=self.group, async_op=True), flat, grads))

    def finish(self) -> None:
        """Reduce buckets whose gradients never all arrived (unused parameters), wait, and copy back."""
        if self.sync:
            for i, left in enumerate(self.pending):
                if left:
                    for p in self.buckets[i]:
                        if p.grad is None:
                            p.grad = torch.zeros_like(p)
                    self._launch(i)
        for work, flat, grads in self.work:
            work.wait()
            offset = 0
            for g in grads:
                g.copy_(flat[offset:offset + g.numel()].view_as(g))
                offset += g.numel()
        self.work, self.sync = [], False
