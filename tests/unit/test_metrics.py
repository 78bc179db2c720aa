"""MFU is per device, against that device's datasheet peak in the precision the run computes in."""

import pytest
import torch

from megatron_lite.training import metrics
from megatron_lite.training.metrics import Throughput, gpu_peak_tflops


@pytest.mark.parametrize("name, precision, peak", [
    ("NVIDIA H100 80GB HBM3", "bf16", 989.0),  # SXM
    ("NVIDIA H100 PCIe", "bf16", 756.0),
    ("NVIDIA H100 NVL", "fp16", 835.0),
    ("NVIDIA H200", "bf16", 989.0),
    ("NVIDIA H100 80GB HBM3", "fp32", 67.0),  # not the bf16 peak
    ("NVIDIA A100-SXM4-80GB", "fp16", 312.0),
    ("NVIDIA A10", "bf16", 125.0),
])
def test_gpu_peak_by_device_name_and_precision(name, precision, peak):
    assert gpu_peak_tflops(name, precision)[0] == peak


def test_unknown_gpu_or_precision_asks_for_peak_tflops(monkeypatch):
    assert gpu_peak_tflops("NVIDIA Tesla V100-SXM2-16GB", "bf16") == (
        0.0, "NVIDIA Tesla V100-SXM2-16GB has no bf16 peak in our table; set peak-tflops")
    assert gpu_peak_tflops("Some Future GPU", "bf16")[1] == "unknown GPU Some Future GPU; set peak-tflops"
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        assert gpu_peak_tflops("NVIDIA A100 80GB PCIe", "fp32")[0] == 156.0  # TF32 on: the tf32 peak
    finally:
        torch.backends.cuda.matmul.allow_tf32 = False
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 PCIe")
    assert metrics.peak_tflops(torch.device("cuda", 0), "bf16") == (756.0, "NVIDIA H100 PCIe bf16 datasheet")


@pytest.mark.parametrize("world_size", [1, 8])
def test_mfu_counts_each_device_its_share_of_the_tokens(monkeypatch, world_size):
    """8 ranks process 8x the tokens of one in the same time at the same MFU."""
    clock = iter([0.0, 2.0, 2.0])  # construction, report, reset
    monkeypatch.setattr(metrics.time, "perf_counter", lambda: next(clock))
    meter = Throughput(flops_per_token=1e9, peak_tflops=100.0, devices=world_size)
    meter.add(50_000 * world_size)  # tokens of all ranks in 2 s
    report = meter.report()
    assert report["tokens_per_s"] == 25_000 * world_size
    assert report["mfu"] == pytest.approx(25_000 * 1e9 / 100e12)  # one device's tokens/s x flops / its peak
