"""train-time-budget: fit a run's length to this machine's measured speed, decided once before the first step.

The same config trains for minutes on a CPU with native bf16 and for hours on one that emulates it; a budget
keeps the wall time bounded instead. The run is planned, not cut short: the lr schedule is compressed by the
same factor as the iterations, so a short run still warms up and decays fully.
"""

import statistics
import time

import torch
import torch.distributed as dist


def seconds_per_step(step, repeats: int = 3, warmup: int = 2) -> float:
    """Median seconds of `step()` after warm-up calls (allocation, kernel choice, torch.compile)."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    seconds = torch.tensor(statistics.median(times), dtype=torch.float64)
    if dist.is_initialized() and dist.get_world_size() > 1:  # every rank must plan the same length
        dist.all_reduce(seconds, op=dist.ReduceOp.MAX)
    return float(seconds)


def planned_iterations(budget_s: float, step_s: float, train_iters: int) -> int:
    """Iterations that fit in budget_s at step_s each: at least 1, at most train_iters."""
    return max(1, min(train_iters, int(budget_s / max(step_s, 1e-9))))
