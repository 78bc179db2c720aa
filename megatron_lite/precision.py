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
def _operands(name: str, clock) -> tuple:
    """Two square matrices in `name`, doubled from 128 until one product takes a few milliseconds on `clock` (at
    most 1024): an emulated format costs a fraction of a second, a fast one is timed where it reaches its peak."""
    gen = torch.Generator().manual_seed(0)  # private generator: must not disturb the training RNG stream
    size = 128
    while True:
        a = torch.randn(size, size, generator=gen).to(DTYPES[name])
        b = torch.randn(size, size, generator=gen).to(DTYPES[name])
        a @ b  # warm-up: first-call dispatch and packing
        if min(_seconds(a, b, clock) for _ in range(3)) > 4e-3 or size >= 1024:
            return a, b
        size *= 2


def _seconds(a: torch.Tensor, b: torch.Tensor, clock) -> float:
    start = clock()
    a @ b
    return clock() - start


def _tflops(a: torch.Tensor, seconds: float) -> float:
    return 2 * a.shape[0] ** 3 / max(seconds, 1e-9) / 1e12


@functools.lru_cache(maxsize=None)
def cpu_matmul_tflops(name: str) -> float:
    """Median TFLOP/s of a square matmul in `name` on this CPU, at the current thread count: MFU's CPU peak."""
    a, b = _operands(name, time.perf_counter)
    return _tflops(a, statistics.median(_seconds(a, b, time.perf_counter) for _ in range(7)))


@functools.lru_cache(maxsize=None)
def cpu_speedup(name: str) -> float:
    """How many times faster one core multiplies matrices in `name` than in fp32 (< 1: emulated).

    Timed on one thread in CPU seconds, the formats in alternation: other processes on a shared machine then
    change neither number (with several threads, a product waits for its slowest thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        (a, b), (a32, b32) = _operands(name, time.process_time), _operands("fp32", time.process_time)
        seconds, seconds32 = [], []
        for _ in range(5):
            seconds.append(_seconds(a, b, time.process_time))
            seconds32.append(_seconds(a32, b32, time.process_time))
    finally:
        torch.set_num_threads(threads)
    return _tflops(a, statistics.median(seconds)) / _tflops(a32, statistics.median(seconds32))


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
        emulated = " (no native bf16)" if speedup < 1.0 else f", under the {CPU_SPEEDUP_NEEDED}x that pays for casts"
        return Precision("fp32", f"auto: this CPU's bf16 matmul measured {speedup:.2g}x its fp32 speed{emulated}")
    speedup = cpu_speedup(requested)
    if speedup < 1.0:
        warn_once(
            f"precision {requested} (key 'precision' or '{requested}.enabled'): this CPU computes {requested} matmuls "
            f"{1 / speedup:.0f}x slower than fp32 (measured: emulated, not native); training will be that much "
            "slower. 'precision: auto' chooses fp32 here")
    return Precision(requested, f"set by the config; this CPU's {requested} matmul measured {speedup:.2g}x fp32")


def resolve_inference_precision(requested: str, device: torch.device) -> Precision:
    """The format generate.py and eval.py compute in: `requested` (inference-precision). auto: bf16 on a GPU that
    has it (flash attention, half the memory traffic), fp32 on the CPU and on older GPUs (exact)."""
    if requested != "auto":
        return resolve_precision(requested, device)
    if device.type == "cuda":
        return resolve_precision("auto", device)
    return Precision("fp32", "auto: fp32 on the CPU (inference-precision: bf16 where it computes bf16 natively)")


def autocast(device: torch.device, precision: str):
    """Mixed precision keeps fp32 master weights and runs matmuls in 16-bit (`precision` as resolved)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])


def default_device() -> torch.device:
    """The device this process computes on: a visible GPU, else the CPU."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
