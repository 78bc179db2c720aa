"""The number format a run computes in: the config's `precision`, or under `auto` what the hardware runs natively.

bf16 is fast on CUDA GPUs that support it and on CPUs with AVX512-BF16 or AMX; a CPU with AVX2 only emulates it,
about 46x slower than fp32. So `auto` measures a matrix product instead of trusting flags, once per process.
"""

import contextlib
import functools
import statistics
import time
from dataclasses import dataclass

import torch

from megatron_lite.errors import warn_once

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# auto takes 16-bit on a CPU only when its matmul is clearly faster: autocast adds casts that fp32 does not pay.
CPU_SPEEDUP_NEEDED = 1.2


@dataclass(frozen=True)
class Precision:
    """The resolved format of a run and the one-line reason it was chosen."""

    name: str  # fp32 | bf16 | fp16
    reason: str

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.name]


@functools.lru_cache(maxsize=None)
def cpu_matmul_tflops(name: str) -> float:
    """Median TFLOP/s of a square matmul in `name` on this CPU, at the current thread count.

    The size doubles from 128 until one product takes a few milliseconds (at most 1024), so an emulated
    format costs a fraction of a second and a fast one is timed on a size big enough to reach its peak."""
    gen = torch.Generator().manual_seed(0)  # private generator: must not disturb the training RNG stream
    size = 128
    while True:
        a = torch.randn(size, size, generator=gen).to(DTYPES[name])
        b = torch.randn(size, size, generator=gen).to(DTYPES[name])
        a @ b  # warm-up: first-call dispatch and packing
        seconds = _time_matmul(a, b)
        if seconds > 4e-3 or size >= 1024:
            break
        size *= 2
    median = statistics.median(_time_matmul(a, b) for _ in range(7))
    return 2 * size**3 / median / 1e12


def _time_matmul(a: torch.Tensor, b: torch.Tensor) -> float:
    start = time.perf_counter()
    a @ b
    return time.perf_counter() - start


def cpu_speedup(name: str) -> float:
    """How many times faster this CPU multiplies matrices in `name` than in fp32 (< 1: emulated)."""
    return cpu_matmul_tflops(name) / cpu_matmul_tflops("fp32")


def resolve_precision(requested: str, device: torch.device) -> Precision:
    """The format to train or evaluate in: `requested` (fp32 | bf16 | fp16 | auto) on `device`.

    auto: bf16 where the device runs it natively, else fp32 (never fp16, which needs loss scaling). An explicit
    16-bit format that this CPU emulates is honoured, after one warning with the measured slowdown."""
    if device.type == "cuda":
        gpu = torch.cuda.get_device_name(device)
        if requested != "auto":
            return Precision(requested, f"set by the config on {gpu}")
        if torch.cuda.is_bf16_supported():
            return Precision("bf16", f"auto: {gpu} computes in bf16 natively")
        return Precision("fp32", f"auto: {gpu} has no native bf16")
    if requested == "fp32":
        return Precision("fp32", "set by the config")
    if requested == "auto":
        speedup = cpu_speedup("bf16")
        if speedup >= CPU_SPEEDUP_NEEDED:
            return Precision("bf16", f"auto: this CPU's bf16 matmul measured {speedup:.1f}x its fp32 speed")
        return Precision("fp32", f"auto: this CPU's bf16 matmul measured {speedup:.2g}x its fp32 speed "
                                 "(no native bf16)")
    speedup = cpu_speedup(requested)
    if speedup < 1.0:
        warn_once(
            f"precision {requested} (key 'precision' or '{requested}.enabled'): this CPU computes {requested} matmuls "
            f"{1 / speedup:.0f}x slower than fp32 (measured {1e3 * cpu_matmul_tflops(requested):.1f} vs "
            f"{1e3 * cpu_matmul_tflops('fp32'):.1f} GFLOP/s: emulated, not native); training will be that much "
            "slower. 'precision: auto' chooses fp32 here")
    return Precision(requested, f"set by the config; this CPU's {requested} matmul measured {speedup:.2g}x fp32")


def autocast(device: torch.device, precision: str):
    """Mixed precision keeps fp32 master weights and runs matmuls in 16-bit (`precision` as resolved)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])
