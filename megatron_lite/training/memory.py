"""Estimate training memory up front, so a config that cannot fit stops at once, not after an hour.

The estimate follows what autograd keeps alive, counted tensor by tensor on CPU (tests/unit/test_memory.py
compares it with the measured peak): the residual stream is fp32 under autocast, SDPA stores no attention
scores, autocast keeps a 16-bit copy of every weight until its backward, and gradients grow while the
activations of the layers already back-propagated are freed."""

import math
import os

import torch
from torch.profiler import ProfilerActivity, profile

from megatron_lite.config import Config
from megatron_lite.errors import UserError
from megatron_lite.model.attention import attention_core, reference_attention, sdpa_attention
from megatron_lite.model.gpt import kv_heads, mlp_width
from megatron_lite.model.size import layer_matmul_parameters
from megatron_lite.ops import fused

GIB = 1024**3


def _dtype(act: int) -> torch.dtype:
    return torch.float32 if act == 4 else torch.bfloat16  # fp16 takes the same paths as bf16


def _scores_bytes(cfg: Config, device_type: str, act: int) -> int:
    """Bytes kept per attention-score element [b, heads, s, s] by the attention path this run takes."""
    m = cfg.model
    core = attention_core(m.attention_impl, m.scaled_upper_triang_masked_softmax_fusion,
                          m.scaled_masked_softmax_fusion, device_type, _dtype(act))
    dropout = m.attention_dropout > 0
    if core is sdpa_attention:
        # Flash / memory-efficient kernels keep no scores. On CPU, dropout sends SDPA to its math path, which
        # keeps fp32 scores, probabilities and dropped probabilities and a bool mask (measured: about 12).
        return 12 if dropout and device_type == "cpu" else 0
    kept = act  # the probabilities the value product keeps
    if core is reference_attention and act == 2:
        kept += 4  # its softmax runs in fp32 and keeps that output too
    return kept + ((1 + act) if dropout else 0)  # dropout mask and the dropped probabilities


def estimate_training_bytes(cfg: Config, num_params: int, precision: str, device_type: str = "cuda") -> dict:
    """Peak bytes per process of one training step, by part; `precision` is the resolved one (fp32 | bf16 | fp16)."""
    m, t, p = cfg.model, cfg.train, cfg.parallel
    tp, dp, stage = p.model_parallel_size, p.data_parallel_size, cfg.optim.zero_stage
    b, s, h, heads, L, v = (t.train_micro_batch_size_per_gpu, m.seq_length, m.hidden_size, m.num_attention_heads,
                            m.num_layers, m.padded_vocab_size or 50304)
    local = num_params / tp
    act = 4 if precision == "fp32" else 2  # bytes of an activation computed under autocast
    # fp32 weights and Adam's two moments; ZeRO shards the moments from stage 1, gradients from stage 2 and
    # weights at stage 3 over the data-parallel ranks.
    weights = 4 * local / (dp if stage >= 3 else 1)
    optimizer = 8 * local / (dp if stage >= 1 else 1)
    grad_share = 4 / tp / (dp if stage >= 2 else 1)  # gradient bytes per parameter on this process
    all_grads = grad_share * num_params

    sbh, kv, width = s * b * h, kv_heads(m) * h // heads, mlp_width(m)
    # What a norm keeps: its fp32 input and its output's autocast copy; RMSNorm, written in torch ops, also keeps
    # its normalised input for the weight's gradient.
    norm = 4 + act + (4 if m.norm == "rmsnorm" else 0)
    # Per layer, replicated over tp: the fp32 residual at both norms and what the norms keep; split over tp: the
    # QKV output (which v keeps alive), rotated q and k, the attention output, and the MLP's inner tensors
    # (GeLU: its input and output; SwiGLU: [x; gate], silu(gate) and the product).
    mlp = (4 if m.activation == "swiglu" else 2) * width
    layer = 2 * norm * sbh + act * s * b * (3 * h + 3 * kv + mlp) / tp + 4 * b * heads / tp * s  # + logsumexp
    layer += _scores_bytes(cfg, device_type, act) * b * heads / tp * s * s
    if m.hidden_dropout > 0:
        layer += 2 * sbh  # two bool masks
    layer_matrices = layer_matmul_parameters(m)  # the whole layer's; this process holds 1/tp of them
    layer += 2 * layer_matrices / tp if act == 2 else 0  # autocast's 16-bit weight copies, kept for backward
    head = norm * sbh + (2 * v * h / tp if act == 2 else 0)  # the final norm, the output weight's copy
    if m.cross_entropy_loss_fusion and tp == 1 and fused.kernel_for(device_type, _dtype(act))[0] is not None:
        logits = 2 * act * b * s * v  # the kernel keeps the logits as they are; their gradient
    else:
        logits = 12 * b * s * v / tp  # fp32 log-softmax output, its gradient and the logits' gradient

    # Walk backward from the loss. Live: the saved activations of layers not yet back-propagated (with
    # checkpointing, the kept group inputs plus one recomputed group) and the gradients made so far. Gradients
    # outlive the step when they accumulate over micro batches or live in all-reduce buffers.
    persistent = t.gradient_accumulation_steps > 1 or dp > 1
    n = m.checkpoint_num_layers if m.checkpoint_activations else 1

    def saved(first: int) -> float:  # what the layers before `first` keep for their backward
        return 4 * sbh * math.ceil(first / n) if m.checkpoint_activations else layer * first

    def grads(layers_done: int) -> float:
        return all_grads if persistent else grad_share * (v * h + layer_matrices * layers_done)

    phases = [(saved(L) + head + logits, grads(0))]  # the loss's backward
    working = 4 * sbh + act * s * b * width / tp  # the residual's fp32 gradient and the MLP's inner gradient
    for first in range(0, L, n):  # each group's first layer
        group = min(n, L - first)
        phases.append((saved(first) + group * layer + working, grads(L - first)))
    phases.append((0, all_grads))  # the optimizer step
    activations, gradients = max(phases, key=sum)
    parts = {"weights": weights, "optimizer": optimizer, "gradients": gradients, "activations": activations}
    parts["total"] = sum(parts.values())
    return parts


def available_bytes(device: torch.device) -> int:
    """Free device memory (GPU), or the memory the machine / cgroup has available (CPU)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]  # after the CUDA context and anything already allocated
    with open("/proc/meminfo") as f:
        info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
    have = info.get("MemAvailable", os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        with open("/sys/fs/cgroup/memory.current") as f:
            used = int(f.read())
        if limit.isdigit():
            have = min(have, int(limit) - used)
    except (OSError, ValueError):
        pass
    return have


def check_fits(cfg: Config, num_params: int, device: torch.device, precision: str) -> None:
    """Raise a UserError with the estimate when training clearly needs more memory than the device has free."""
    need = estimate_training_bytes(cfg, num_params, precision, device.type)
    have = available_bytes(device)
    if need["total"] > have:
        detail = ", ".join(f"{k} {v / GIB:.1f}" for k, v in need.items() if k != "total")
        raise UserError(
            f"this config needs an estimated {need['total'] / GIB:.1f} GiB per process ({detail} GiB; "
            f"{num_params / 1e9:.2f}B parameters) but the {device.type} has {have / GIB:.1f} GiB free; "
            "use a smaller model, micro batch, checkpoint-activations, or more devices"
        )


def _tensor_bytes(tensors) -> int:
    """Bytes of the distinct storages behind `tensors`."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


def measure_step_peak(trainer) -> int:
    """Measured peak tensor bytes of one trainer.train_step() (run one step first, so Adam's state exists).

    GPU: the caching allocator's peak. CPU: the live weights, gradients and optimizer state, plus the peak of
    the allocations the profiler tracks during the step."""
    if trainer.device.type == "cuda":
        torch.cuda.synchronize(trainer.device)
        torch.cuda.reset_peak_memory_stats(trainer.device)
        trainer.train_step()
        torch.cuda.synchronize(trainer.device)
        return torch.cuda.max_memory_allocated(trainer.device)
    for _ in range(3):
        peak = _profiled_step_peak(trainer)
        if peak is not None:
            return peak
    raise RuntimeError("the profiler lost memory events in three steps running")


def _profiled_step_peak(trainer):
    """One profiled step's peak (CPU), or None when the profiler's events do not add up to the memory the step
    left behind (it sometimes loses events)."""
    if trainer.reducer is None:
        trainer.optimizer.zero_grad(set_to_none=True)  # as the step does; the profiler would miss these frees

    def held() -> int:
        params = list(trainer.model.parameters())
        state = [v for st in trainer.optimizer.state.values() for v in st.values() if torch.is_tensor(v)]
        return _tensor_bytes(params + [p.grad for p in params if p.grad is not None] + state)

    base = held()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        trainer.train_step()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:  # nbytes: + on allocation, - on free
        live += e.nbytes()
        peak = max(peak, live)
    return base + peak if base + live == held() else None
