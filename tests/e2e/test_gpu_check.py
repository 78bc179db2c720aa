"""`GPU_CHECK_DRY=1 make gpu-check`: the GPU check's every step runs on the CPU with tiny shapes, so the one
command a lent GPU gets cannot rot."""

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.timeout(600)


def test_gpu_check_dry_run_runs_every_step_and_writes_one_summary(tmp_path):
    summary = tmp_path / "summary.txt"
    proc = subprocess.run(["make", "-s", "gpu-check", f"GPU_CHECK_PYTHON={sys.executable}",
                           f"GPU_CHECK_ARGS=--output {summary}"], cwd=REPO, capture_output=True, text=True,
                          timeout=540, env=dict(os.environ, GPU_CHECK_DRY="1"))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    text = summary.read_text()
    assert text.startswith("gpu-check (dry run on the CPU): 14 of 14 steps ok\n"), text
    for bench in ("causal_softmax", "train_throughput", "generate", "hf_load", "eval_perplexity"):
        assert f"RATIO {bench} " in text, bench
    assert "[ok] tests/gpu" in text and "tokens/s" in text and "MFU" in text
    assert "memory without checkpointing: estimate" in text and "memory with activation checkpointing" in text
    assert (tmp_path / "summary.json").exists()
