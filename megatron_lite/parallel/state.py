"""Process groups: tensor-parallel groups of consecutive ranks, data-parallel groups across them (Megatron order).

A single process needs no torch.distributed at all: every accessor answers tp=1, dp=1 and the collectives in
mappings.py become identities.
"""

import contextlib
import datetime
import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist

from megatron_lite.config import ParallelConfig
from megatron_lite.config_loader import MPI_INSTALL
from megatron_lite.errors import UserError


@dataclass
class ParallelState:
    """Where this process sits: global rank, its tensor-parallel and data-parallel ranks and groups."""

    rank: int = 0
    world_size: int = 1
    tp_size: int = 1
    tp_rank: int = 0
    dp_size: int = 1
    dp_rank: int = 0
    tp_group: Optional[object] = None
    dp_group: Optional[object] = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


_STATE = ParallelState()


def get() -> ParallelState:
    """The state initialize() set up (tp=1, dp=1 until then)."""
    return _STATE


@contextlib.contextmanager
def single_process():
    """Build and run a model as if this were the only process (tp=1, identity collectives): references in
    tests, and the meta model that states the full shapes."""
    global _STATE
    saved, _STATE = _STATE, ParallelState()
    try:
        yield
    finally:
        _STATE = saved


def env_world() -> tuple:
    """(rank, world_size, local_rank) from torchrun's variables or, under deepy's mpirun, from mpi4py."""
    env = os.environ
    if env.get("MEGATRON_LITE_MPI") == "1" and "RANK" not in env:
        try:
            from mpi4py import MPI
        except ImportError:
            raise UserError(f"launcher 'mpirun' needs mpi4py: {MPI_INSTALL}") from None
        comm = MPI.COMM_WORLD
        local = comm.Split_type(MPI.COMM_TYPE_SHARED).Get_rank()
        # The rest of the program (and warn_once) reads these like under torchrun.
        env.update(RANK=str(comm.Get_rank()), WORLD_SIZE=str(comm.Get_size()), LOCAL_RANK=str(local))
    return int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0))


def initialize(cfg: ParallelConfig) -> ParallelState:
    """Join the job the launcher started and build the groups; a no-op for one process."""
    global _STATE
    rank, world, local_rank = env_world()
    tp = cfg.model_parallel_size
    # config_loader derived data_parallel_size from the same WORLD_SIZE; this is the one place that checks both.
    if world % tp or world // tp != cfg.data_parallel_size:
        raise UserError(f"model-parallel-size {tp} x data-parallel size {cfg.data_parallel_size} does not "
                        f"equal the {world} processes the launcher started")
    if world == 1:
        _STATE = ParallelState()
        return _STATE
    if not dist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(local_rank % torch.cuda.device_count())
        for key in ("MASTER_ADDR", "MASTER_PORT"):
            if key not in os.environ:
                raise UserError(f"{world} processes but no {key} in the environment: start them with deepy.py")
        dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=cfg.distributed_timeout))
    dp = world // tp
    state = ParallelState(rank=rank, world_size=world, tp_size=tp, tp_rank=rank % tp, dp_size=dp, dp_rank=rank // tp)
    # Every rank must create every group, in the same order.
    for start in range(0, world, tp):
        group = dist.new_group(list(range(start, start + tp)))
        if start <= rank < start + tp:
            state.tp_group = group
    for offset in range(tp):
        group = dist.new_group(list(range(offset, world, tp)))
        if rank % tp == offset:
            state.dp_group = group
    _STATE = state
    return state


def destroy() -> None:
    """Leave the process group (lets a process exit cleanly) and return to the single-process state."""
    global _STATE
    if dist.is_initialized():
        dist.destroy_process_group()
    _STATE = ParallelState()
