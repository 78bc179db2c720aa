"""ZeRO optimizer-state / gradient / parameter sharding (stages 1-3) through the DeepSpeed engine.

Our model and torch AdamW go in as DeepSpeed's client model and optimizer (no DeepSpeed op is compiled for
Adam); DeepSpeed partitions the optimizer state (1), gradients (2) and parameters (3) over data-parallel ranks,
reduces gradients, clips and steps. DeepSpeed is an optional extra: `pip install -e .[deepspeed]`.
"""

import contextlib

import torch

from megatron_lite.config import OptimConfig, TrainConfig
from megatron_lite.errors import UserError


def deepspeed_config(optim: OptimConfig, train: TrainConfig) -> dict:
    """The DeepSpeed config of our batch arithmetic, ZeRO stage and clipping (fp32 master weights; 16-bit
    matmuls come from our autocast, as without ZeRO)."""
    return {
        "train_micro_batch_size_per_gpu": train.train_micro_batch_size_per_gpu,
        "gradient_accumulation_steps": train.gradient_accumulation_steps,
        "train_batch_size": train.train_batch_size,
        "gradient_clipping": optim.gradient_clipping,
        "zero_optimization": {"stage": optim.zero_stage},
        "zero_allow_untested_optimizer": True,  # torch's AdamW as the client optimizer
        "steps_per_print": 2**62,
        "wall_clock_breakdown": False,
    }


def initialize(model: torch.nn.Module, optimizer, optim: OptimConfig, train: TrainConfig):
    """Wrap model and optimizer in a DeepSpeed engine; torch.distributed must already be initialised."""
    try:
        import deepspeed
    except ImportError:
        raise UserError(f"zero_optimization stage {optim.zero_stage} needs DeepSpeed: "
                        "pip install -e '.[deepspeed]'") from None
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=deepspeed_config(optim, train),
                                           dist_init_required=False)
    return engine


@contextlib.contextmanager
def full_parameters(engine, stage: int):
    """Inside, every rank holds whole parameters (ZeRO-3 gathers its partitions; stages 1-2 already do)."""
    if stage < 3:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(engine.module.parameters()), modifier_rank=None):
        yield
