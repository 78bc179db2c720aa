"""ZeRO optimizer-state / gradient / parameter sharding (stages 1-3) through the DeepSpeed engine.

Our model and torch AdamW go in as DeepSpeed's client model and optimizer (no DeepSpeed op is compiled for
Adam); DeepSpeed partitions the optimizer state (1), gradients (2) and parameters (3) over data-parallel ranks,
reduces gradients, clips and steps; with tensor parallelism it gets our process groups. Checkpoints hold the
optimizer state gathered into torch AdamW's per-parameter layout (no DeepSpeed pickles), so a ZeRO run
resumes exactly, or continues without ZeRO. DeepSpeed is an optional extra (`pip install deepspeed==0.19.8`).
"""

import contextlib

import torch

from megatron_lite.config import OptimConfig, TrainConfig
from megatron_lite.config_loader import DEEPSPEED_INSTALL
from megatron_lite.errors import UserError
from megatron_lite.parallel import state as parallel_state


def deepspeed_config(optim: OptimConfig, train: TrainConfig) -> dict:
    """The DeepSpeed config of our batch arithmetic, ZeRO section and clipping (fp32 master weights; 16-bit
    matmuls come from our autocast and fp16's loss scale from our scaler, as without ZeRO)."""
    return {
        "train_micro_batch_size_per_gpu": train.train_micro_batch_size_per_gpu,
        "gradient_accumulation_steps": train.gradient_accumulation_steps,
        "train_batch_size": train.train_batch_size,
        "gradient_clipping": optim.gradient_clipping,
        "zero_optimization": {**optim.zero_options, "stage": optim.zero_stage},
        "zero_allow_untested_optimizer": True,  # torch's AdamW as the client optimizer
        "zero_force_ds_cpu_optimizer": False,  # ... also under ZeRO-Offload, where it steps the CPU partitions
        "steps_per_print": 2**62,
        "wall_clock_breakdown": False,
    }


def initialize(model: torch.nn.Module, optimizer, optim: OptimConfig, train: TrainConfig):
    """(DeepSpeed engine over model and optimizer, the optimizer's parameter groups as they were).

    torch.distributed must already be initialised. Optimizer state loaded from a checkpoint (in torch
    AdamW's per-parameter layout) moves into DeepSpeed's partitions."""
    try:
        import deepspeed
        from pydantic import ValidationError  # DeepSpeed's config validation
    except ImportError:
        raise UserError(f"zero_optimization stage {optim.zero_stage} needs DeepSpeed: {DEEPSPEED_INSTALL}") from None
    groups = [list(g["params"]) for g in optimizer.param_groups]  # DeepSpeed replaces them with flat partitions
    loaded = {p: optimizer.state.pop(p) for params in groups for p in params if p in optimizer.state}
    par = parallel_state.get()
    try:
        engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=deepspeed_config(optim, train),
                                               mpu=_ModelParallelGroups(par) if par.tp_size > 1 else None,
                                               dist_init_required=False)
    except ValidationError as e:  # a zero_optimization value of the wrong type or range
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise UserError(f"zero_optimization: {problems}") from None
    if loaded:
        _install_state(engine, groups, loaded)
    return engine, groups


class _ModelParallelGroups:
    """Our groups in the `mpu` interface DeepSpeed takes from Megatron: ZeRO partitions over the data-parallel
    group, and its gradient norm counts tensor-parallel shards on every rank, replicated weights once."""

    def __init__(self, par):
        self.par = par

    def get_model_parallel_group(self):
        return self.par.tp_group

    def get_model_parallel_rank(self):
        return self.par.tp_rank

    def get_model_parallel_world_size(self):
        return self.par.tp_size

    def get_data_parallel_group(self):
        return self.par.dp_group

    def get_data_parallel_rank(self):
        return self.par.dp_rank

    def get_data_parallel_world_size(self):
        return self.par.dp_size

    get_tensor_model_parallel_group = get_model_parallel_group
    get_tensor_model_parallel_rank = get_model_parallel_rank
    get_tensor_model_parallel_world_size = get_model_parallel_world_size


def _install_state(engine, groups, loaded: dict) -> None:
    """Write per-parameter AdamW state into this rank's partitions of it."""
    from deepspeed.utils import safe_set_full_optimizer_state

    zero_optimizer = engine.optimizer
    step = next(iter(loaded.values()))["step"]
    # Our AdamW now steps DeepSpeed's flat fp32 partitions and creates its state at the first step:
    # create it now, to write into.
    partitions = getattr(zero_optimizer, "single_partition_of_fp32_groups", None) or \
        zero_optimizer.fp32_partitioned_groups_flat  # stages 1-2, stage 3
    for flat in partitions:
        zero_optimizer.optimizer.state[flat] = {"step": step.clone().to(flat.device),
                                                "exp_avg": torch.zeros_like(flat), "exp_avg_sq": torch.zeros_like(flat)}
    _link_state(zero_optimizer)
    for params in groups:
        for p in params:
            for key in ("exp_avg", "exp_avg_sq"):
                safe_set_full_optimizer_state(p, loaded[p][key], key)


def _link_state(zero_optimizer) -> None:
    """Point each parameter's fragment at its slice of the AdamW state: DeepSpeed 0.19's stages 1-2 link
    them once, after the first group's first step, so the later groups' fragments stay empty."""
    from deepspeed.utils import lazy_init_hp_params_optimizer_state

    if hasattr(zero_optimizer, "single_partition_of_fp32_groups"):  # stages 1-2 (stage 3 has no fragments)
        for params, flat in zip(zero_optimizer.bit16_groups, zero_optimizer.single_partition_of_fp32_groups):
            lazy_init_hp_params_optimizer_state(params, flat, zero_optimizer.optimizer.state)
        zero_optimizer._hp_optimizer_states_linked = True


def optimizer_state_dict(engine, groups) -> dict:
    """The whole optimizer state in torch AdamW's per-parameter layout, as a run without ZeRO saves it.

    Collective: every data-parallel rank calls it (each contributes its partitions)."""
    from deepspeed.utils import safe_get_full_optimizer_state

    base = engine.optimizer.optimizer
    step = next(iter(base.state.values()))["step"] if base.state else None
    if step is not None:
        _link_state(engine.optimizer)
    state, param_groups, index = {}, [], 0
    for params, group in zip(groups, base.param_groups):
        ids = list(range(index, index + len(params)))
        param_groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": ids})
        for i, p in zip(ids, params):
            if step is not None:
                state[i] = {"step": step.clone(), **{key: safe_get_full_optimizer_state(p, key).cpu()
                                                     for key in ("exp_avg", "exp_avg_sq")}}
        index += len(params)
    return {"state": state, "param_groups": param_groups}


@contextlib.contextmanager
def full_parameters(engine, stage: int):
    """Inside, every rank holds whole parameters (ZeRO-3 gathers its partitions; stages 1-2 already do)."""
    if stage < 3:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(engine.module.parameters()), modifier_rank=None):
        yield
