"""Throughput and model-FLOPs-utilisation (MFU) bookkeeping for the training log."""

import time

import torch

from megatron_lite.precision import cpu_matmul_tflops

# Dense peak TFLOP/s per GPU for 16-bit matmuls (fp32 runs at TF32 rates where noted by the vendor).
GPU_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "A10": 125.0, "L4": 121.0, "V100": 125.0}


def peak_tflops(device: torch.device, precision: str, override=None) -> tuple:
    """(peak TFLOP/s, where it came from) for MFU: the config, a known GPU, or a CPU measurement in `precision`."""
    if override:
        return float(override), "config peak-tflops"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, value in GPU_PEAK_TFLOPS.items():
            if key in name:
                return value, f"{name} datasheet"
        return 0.0, f"unknown GPU {name}; set peak-tflops"
    return cpu_matmul_tflops(precision), f"measured CPU {precision} matmul peak"


class Throughput:
    """Tokens/s and MFU over the iterations since the last report."""

    def __init__(self, flops_per_token: float, peak_tflops: float):
        self.flops_per_token, self.peak = flops_per_token, peak_tflops
        self.tokens, self.start = 0, time.perf_counter()

    def add(self, tokens: int) -> None:
        self.tokens += tokens

    def report(self) -> dict:
        """Rates since the previous report, then reset."""
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        tokens_per_s = self.tokens / elapsed
        mfu = tokens_per_s * self.flops_per_token / (self.peak * 1e12) if self.peak else 0.0
        self.tokens, self.start = 0, time.perf_counter()
        return {"tokens_per_s": tokens_per_s, "mfu": mfu}
