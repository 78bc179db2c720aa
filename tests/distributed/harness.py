"""Run a function in several gloo processes on this machine, with a timeout; worker errors fail the test."""

import multiprocessing as mp
import os
import socket
import traceback


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(fn, rank, world, tp, port, args, errors):
    # CUDA_VISIBLE_DEVICES="": these tests mean the CPU (gloo), also on a GPU machine; set before CUDA initialises.
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), CUDA_VISIBLE_DEVICES="")
    try:
        import torch

        from megatron_lite.config import ParallelConfig
        from megatron_lite.parallel import state

        torch.set_num_threads(1)
        state.initialize(ParallelConfig(model_parallel_size=tp, data_parallel_size=world // tp,
                                        world_size=world, distributed_timeout=60))
        fn(*args)
        state.destroy()
    except BaseException:
        errors.put(f"rank {rank}:\n{traceback.format_exc()}")
        raise


def run_workers(fn, world: int, tp: int = 1, args=(), timeout: float = 120) -> None:
    """Start `world` processes that each call fn(*args) after building tp/dp groups; raise on any failure."""
    ctx = mp.get_context("spawn")
    errors = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(fn, r, world, tp, port, args, errors)) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout)
    hung = [p for p in procs if p.is_alive()]
    for p in hung:
        p.kill()
    failures = []
    while not errors.empty():
        failures.append(errors.get())
    if failures or hung or any(p.exitcode for p in procs):
        raise AssertionError(f"workers failed (hung: {len(hung)}, exit codes {[p.exitcode for p in procs]}):\n"
                             + "\n".join(failures))
