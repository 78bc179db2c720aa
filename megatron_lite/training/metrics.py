"""Throughput and model-FLOPs-utilisation (MFU) bookkeeping for the training log."""

import time

import torch

from megatron_lite.precision import cpu_matmul_tflops

# Dense (no sparsity) datasheet peak TFLOP/s per GPU: (name fragment, {precision: peak}). The first fragment found
# in torch.cuda.get_device_name wins, so variants come before their family. fp32 is plain fp32 (torch leaves TF32
# off for matmuls); tf32 is used when a run turns it on.
GPU_PEAK_TFLOPS = (
    ("H100 PCIe", {"bf16": 756.0, "fp16": 756.0, "tf32": 378.0, "fp32": 51.0}),
    ("H100 NVL", {"bf16": 835.0, "fp16": 835.0, "tf32": 418.0, "fp32": 60.0}),
    ("H100", {"bf16": 989.0, "fp16": 989.0, "tf32": 495.0, "fp32": 67.0}),  # SXM
    ("H200", {"bf16": 989.0, "fp16": 989.0, "tf32": 495.0, "fp32": 67.0}),
    ("A100", {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5}),
    ("L40S", {"bf16": 362.0, "fp16": 362.0, "tf32": 183.0, "fp32": 91.6}),
    ("A10", {"bf16": 125.0, "fp16": 125.0, "tf32": 62.5, "fp32": 31.2}),
    ("L4", {"bf16": 121.0, "fp16": 121.0, "tf32": 60.0, "fp32": 30.3}),
    ("V100", {"fp16": 125.0, "fp32": 15.7}),  # no bf16 tensor cores
)


def gpu_peak_tflops(name: str, precision: str) -> tuple:
    """(peak TFLOP/s, source) of a GPU by its device name, in the precision its matmuls run in."""
    if precision == "fp32" and torch.backends.cuda.matmul.allow_tf32:
        precision = "tf32"
    for fragment, peaks in GPU_PEAK_TFLOPS:
        if fragment in name:
            if precision in peaks:
                return peaks[precision], f"{name} {precision} datasheet"
            return 0.0, f"{name} has no {precision} peak in our table; set peak-tflops"
    return 0.0, f"unknown GPU {name}; set peak-tflops"


def peak_tflops(device: torch.device, precision: str, override=None) -> tuple:
    """(peak TFLOP/s of one device, where it came from) for MFU: the config, a known GPU, or a CPU measurement
    in `precision`."""
    if override:
        return float(override), "config peak-tflops"
    if device.type == "cuda":
        return gpu_peak_tflops(torch.cuda.get_device_name(device), precision)
    return cpu_matmul_tflops(precision), f"measured CPU {precision} matmul peak"


class Throughput:
    """Tokens/s of the whole run and MFU per device over the iterations since the last report."""

    def __init__(self, flops_per_token: float, peak_tflops: float, devices: int = 1):
        """peak_tflops is one device's; the run's tokens are shared by `devices` devices (the world size: data
        parallel ranks split the batch, tensor parallel ranks split each token's work)."""
        self.flops_per_token, self.peak, self.devices = flops_per_token, peak_tflops, devices
        self.tokens, self.start = 0, time.perf_counter()

    def add(self, tokens: int) -> None:
        """Count one step's tokens, over all ranks."""
        self.tokens += tokens

    def report(self) -> dict:
        """Rates since the previous report, then reset."""
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        tokens_per_s = self.tokens / elapsed
        per_device = tokens_per_s * self.flops_per_token / self.devices
        mfu = per_device / (self.peak * 1e12) if self.peak else 0.0
        self.tokens, self.start = 0, time.perf_counter()
        return {"tokens_per_s": tokens_per_s, "mfu": mfu}
