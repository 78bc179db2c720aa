"""ZeRO stages 1-3 through DeepSpeed (2 gloo processes) train like our own data parallelism, and resume."""

import json
import math
import shutil

import deepspeed  # noqa: F401  the 'deepspeed' extra, installed by make test: missing must fail, not skip
import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import run_tool



def train(config, out, *args, expect=None):
    """Train with deepy.py; the metrics.jsonl records (after checking that `expect` is in the output)."""
    proc = run_tool("deepy.py", "train.py", config, "--hidden-dropout", "0", "--attention-dropout", "0",
             "--log-interval", "1", "--train-iters", "3", "--eval-interval", "3", "--num-procs", "2",
             "--gradient-accumulation-steps", "2", "--save", str(out), "--log-dir", str(out / "logs"),
             "--tensorboard-dir", str(out / "tb"), *args, timeout=420)
    assert expect is None or expect in proc.stdout, proc.stdout
    with open(out / "logs" / "metrics.jsonl") as f:
        return [json.loads(line) for line in f]


def test_zero_stages_and_offload_match_plain_data_parallel(micro_config, tmp_path, monkeypatch, torch_extensions_dir):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", torch_extensions_dir)
    plain = train(micro_config, tmp_path / "plain")
    # Stages 1 and 2 with ZeRO-Offload (optimizer state and step on the CPU), in GPT-NeoX's and DeepSpeed's spelling;
    # stage 3 is compared with plain data parallel in the fp16 test below.
    sections = {1: "{stage: 1, cpu_offload: true, overlap_comm: true, reduce_bucket_size: 500000000}",
                2: "{stage: 2, offload_optimizer: {device: cpu}, contiguous_gradients: true}"}
    for stage, section in sections.items():
        zero = train(micro_config, tmp_path / f"zero{stage}", "--zero-optimization", section,
                     expect=f"ZeRO stage {stage} over 2 data-parallel ranks (DeepSpeed), optimizer state and step "
                            "offloaded to cpu")
        for ours, ref in zip(zero, plain):
            assert ours["loss"] == pytest.approx(ref["loss"], rel=1e-5), (stage, ours["iteration"])
            assert ours["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-4), (stage, ours["iteration"])
        assert len(zero) == 3 and zero[-1]["val_loss"] == pytest.approx(plain[-1]["val_loss"], rel=1e-5)
        # The checkpoint holds whole weights, equal to plain data parallel's.
        ours, ref = (load_file(tmp_path / d / "global_step3" / "model_mp_rank_00.safetensors")
                     for d in (f"zero{stage}", "plain"))
        for name, tensor in ref.items():
            if not name.endswith("query_key_value.bias"):  # its key part has a zero gradient (rounding noise)
                assert torch.allclose(ours[name], tensor, atol=5e-5), (stage, name)


@pytest.mark.slow  # ZeRO in fp32 (above) and bf16 autocast (tests/e2e) are each in the default suite
def test_zero_in_bf16_trains_like_plain_data_parallel_in_bf16(micro_config, tmp_path, monkeypatch,
                                                              torch_extensions_dir):
    """bf16 autocast over fp32 master weights is the same under ZeRO (stage 2) as under our own reduction."""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", torch_extensions_dir)
    plain = train(micro_config, tmp_path / "plain", "--precision", "bf16")
    zero = train(micro_config, tmp_path / "zero2", "--precision", "bf16", "--zero-optimization", "{stage: 2}")
    assert len(zero) == len(plain) == 3
    for ours, ref in zip(zero, plain):
        assert ours["loss"] == pytest.approx(ref["loss"], rel=1e-3), ours["iteration"]
    assert zero[-1]["loss"] < zero[0]["loss"]


# In the default suite, the fp16 test below resumes ZeRO-3 (and without ZeRO) and the tp2 x dp2 test ZeRO-1.
@pytest.mark.slow
@pytest.mark.parametrize("stage", [1, 2, 3])
def test_zero_resumes_exactly_and_its_checkpoint_resumes_without_zero(micro_config, tmp_path, monkeypatch, stage,
                                                                      torch_extensions_dir):
    """Stop at step 2 and resume: steps 3-4 as in the uninterrupted run. The optimizer state is gathered from
    the partitions into the plain per-parameter layout, so one process without ZeRO continues it too."""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", torch_extensions_dir)
    zero = ("--zero-optimization", f"{{stage: {stage}}}")
    straight = train(micro_config, tmp_path / "straight", *zero, "--train-iters", "4")
    train(micro_config, tmp_path / "split", *zero, "--train-iters", "4", "--exit-interval", "2")
    shutil.copytree(tmp_path / "split", tmp_path / "plain")  # the step-2 checkpoint, for the run without ZeRO
    split = train(micro_config, tmp_path / "split", *zero, "--train-iters", "4", "--load", str(tmp_path / "split"))
    assert [r["loss"] for r in split] == [r["loss"] for r in straight]  # steps 1-2, then 3-4 after the resume
    plain = train(micro_config, tmp_path / "plain", "--train-iters", "4", "--load", str(tmp_path / "plain"),
                  "--num-procs", "1", "--gradient-accumulation-steps", "4")  # the same global batch on one process
    for ours, ref in zip(plain[2:], straight[2:]):  # == ZeRO to rounding (as above)
        assert ours["loss"] == pytest.approx(ref["loss"], rel=1e-5), ours["iteration"]


@pytest.mark.parametrize("stage", [1, pytest.param(3, marks=pytest.mark.slow)])
def test_zero_with_tensor_parallelism_resumes_and_matches_plain_tp2_dp2(micro_config, tmp_path, monkeypatch, stage,
                                                                        torch_extensions_dir):
    """4 processes, tp=2 x dp=2: DeepSpeed gets our groups (partitions within each data-parallel group, shards
    counted once per tp rank in the gradient norm); stopped at step 2 and resumed, it matches plain tp2 x dp2."""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", torch_extensions_dir)
    tp2dp2 = ("--train-iters", "4", "--num-procs", "4", "--model-parallel-size", "2",
              "--gradient-accumulation-steps", "1")
    plain = train(micro_config, tmp_path / "plain", *tp2dp2)
    zero = ("--zero-optimization", f"{{stage: {stage}}}")
    train(micro_config, tmp_path / "zero", *tp2dp2, *zero, "--exit-interval", "2")
    resumed = train(micro_config, tmp_path / "zero", *tp2dp2, *zero, "--load", str(tmp_path / "zero"))
    assert [r["iteration"] for r in resumed] == [1, 2, 3, 4]
    for ours, ref in zip(resumed, plain):
        assert ours["loss"] == pytest.approx(ref["loss"], rel=1e-5), ours["iteration"]
        assert ours["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-4), ours["iteration"]


FP16 = ("--precision", "fp16", "--train-iters", "8",
        "--fp16", "{enabled: true, initial_scale_power: 24, hysteresis: 2, loss_scale_window: 3}")


@pytest.mark.parametrize("stage", [pytest.param(1, marks=pytest.mark.slow), pytest.param(2, marks=pytest.mark.slow), 3])
def test_zero_in_fp16_skips_overflows_scales_and_resumes_like_plain_data_parallel(micro_config, tmp_path, monkeypatch,
                                                                                   stage, torch_extensions_dir):
    """fp16 autocast with dynamic loss scaling under ZeRO (DeepSpeed's fp32 partitions, our scale): from 2**24 the
    first steps overflow and are skipped, the scale halves and later grows; every step's loss, scale and gradient
    norm equal plain data parallel's in fp16, and a run stopped at step 4 and resumed continues the same way.
    Its step-4 checkpoint (optimizer state gathered from the partitions, loss scaler) also continues without
    ZeRO."""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", torch_extensions_dir)
    plain = train(micro_config, tmp_path / "plain", *FP16)
    skipped = [not math.isfinite(r["grad_norm"]) for r in plain]
    assert skipped[0] and not skipped[-1]
    assert len({r["loss_scale"] for r in plain}) >= 3  # halved and grown again
    zero = ("--zero-optimization", f"{{stage: {stage}}}", *FP16)
    train(micro_config, tmp_path / "zero", *zero, "--exit-interval", "4")
    shutil.copytree(tmp_path / "zero", tmp_path / "alone")
    resumed = train(micro_config, tmp_path / "zero", *zero, "--load", str(tmp_path / "zero"))
    # Without ZeRO, at the same micro batches (the loss scale per micro batch, scale / accumulation, decides what
    # overflows in fp16)
    alone = train(micro_config, tmp_path / "alone", *FP16, "--load", str(tmp_path / "alone"))
    for ours, ref in zip(alone[4:], plain[4:]):
        assert ours["loss_scale"] == ref["loss_scale"] and ours["loss"] == pytest.approx(ref["loss"], rel=1e-5)
    assert [r["iteration"] for r in resumed] == list(range(1, 9))  # steps 1-4, then 5-8 after the resume
    for ours, ref in zip(resumed, plain):
        assert ours["loss_scale"] == ref["loss_scale"], ours["iteration"]
        assert ours["loss"] == pytest.approx(ref["loss"], rel=1e-5), ours["iteration"]
        if math.isfinite(ref["grad_norm"]):
            assert ours["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-4), ours["iteration"]
        else:  # skipped in both (inf or nan)
            assert not math.isfinite(ours["grad_norm"]), ours["iteration"]
