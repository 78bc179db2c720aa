"""Parallel settings are checked before any process starts; the memory estimate follows tp and ZeRO."""

import pytest

from megatron_lite.config_loader import load_config
from megatron_lite.training.memory import estimate_training_bytes
from tests.conftest import run_tool


@pytest.mark.parametrize("args, message", [
    (["--num-procs", "2", "--model-parallel-size", "3"], "model-parallel-size': 3 does not divide the 2 processes"),
    (["--num-procs", "2", "--model-parallel-size", "2", "--num-attention-heads", "3", "--hidden-size", "96"],
     "model-parallel-size': 2 does not divide num-attention-heads 3"),
    (["--hostfile", "/nonexistent/hosts"], "cannot read hostfile '/nonexistent/hosts' (key 'hostfile')"),
    (["--launcher", "slurm"], "launcher': 'slurm' is not supported"),
    (["--num-procs", "2", "--train-batch-size", "12", "--gradient-accumulation-steps", "4"],
     "train-batch-size': 12"),
])
def test_deepy_rejects_bad_parallel_settings_before_starting(micro_config, args, message):
    proc = run_tool("deepy.py", "train.py", micro_config, *args, check=False, timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr


def test_memory_estimate_shrinks_with_tensor_parallel_and_zero(tmp_path):
    path = tmp_path / "c.yml"
    path.write_text("num-layers: 4\nhidden-size: 256\nnum-attention-heads: 4\ntrain_micro_batch_size_per_gpu: 2\n"
                    "padded-vocab-size: 1024\n")
    parts = {}
    for world, tp, stage in ((1, 1, 0), (2, 2, 0), (2, 1, 0), (2, 1, 1), (2, 1, 2), (2, 1, 3)):
        cfg = load_config([str(path)], ["--model-parallel-size", str(tp), "--zero-optimization", f"{{stage: {stage}}}"],
                          env={"WORLD_SIZE": str(world)})
        parts[(world, tp, stage)] = estimate_training_bytes(cfg, 1_000_000, "bf16")
    one, base = parts[(1, 1, 0)], parts[(2, 1, 0)]  # base: two data-parallel ranks without ZeRO
    assert parts[(2, 2, 0)]["weights"] == one["weights"] / 2 and parts[(2, 2, 0)]["activations"] < one["activations"]
    assert parts[(2, 1, 1)]["optimizer"] == base["optimizer"] / 2
    assert parts[(2, 1, 1)]["gradients"] == base["gradients"] > 0  # all-reduce buffers: every gradient is held
    assert parts[(2, 1, 2)]["gradients"] == base["gradients"] / 2 and parts[(2, 1, 2)]["weights"] == base["weights"]
    assert parts[(2, 1, 3)]["weights"] == base["weights"] / 2
