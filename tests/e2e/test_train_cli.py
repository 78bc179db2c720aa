"""Training from the command line on real (stdlib) code: it learns, resumes exactly, evaluates, generates."""

import json
import math
import os

import pytest

from megatron_lite.data.gpt_dataset import build_train_valid_test_datasets
from megatron_lite.evaluation.perplexity import unigram_entropy
from megatron_lite.precision import cpu_speedup
from tests.conftest import run_tool


def losses(log_dir):
    with open(os.path.join(log_dir, "metrics.jsonl")) as f:
        return {r["iteration"]: r for r in map(json.loads, f)}


def test_train_eval_generate(tmp_path, micro_config, small_corpus, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")  # Weights & Biases writes its run files locally, under log-dir
    proc = run_tool("deepy.py", "train.py", micro_config, "--train-iters", "200", "--eval-interval", "100",
                    "--hidden-dropout", "0", "--attention-dropout", "0", "--use-wandb", "true",
                    "--wandb-project", "stdlib-micro")
    assert "tokens/s" in proc.stdout + proc.stderr and "MFU" in proc.stdout + proc.stderr
    log = losses(tmp_path / "logs")
    (run,) = [d for d in (tmp_path / "logs" / "wandb").iterdir() if d.name.startswith("offline-run-")]
    (records,) = [f.read_bytes() for f in run.iterdir() if f.suffix == ".wandb"]
    assert b"stdlib-micro" in records and b"train/loss" in records and b"valid/val_loss" in records
    for r in log.values():  # every logged loss, as JSON inside the run's protobuf records
        assert json.dumps(r["loss"]).encode() in records, r["iteration"]
    assert set(log[200]) >= {"loss", "lr", "grad_norm", "loss_scale", "tokens_per_s", "mfu", "val_loss", "val_ppl"}
    assert log[200]["loss"] < log[1]["loss"] - 1.0
    _, valid, _ = build_train_valid_test_datasets(small_corpus["prefix"], "949,50,1", 64, (0, 1, 0), 1234)
    # The model uses context: clearly better than unigram (it reaches ~4.90 nats against the unigram's ~5.33).
    assert log[200]["val_loss"] < unigram_entropy(valid) - 0.25
    ckpt = tmp_path / "ckpt"
    assert open(ckpt / "latest").read().strip() == "global_step200"
    assert (ckpt / "global_step200" / "config.yml").exists()
    assert [f for f in os.listdir(tmp_path / "tb") if f.startswith("events.out.tfevents")]

    out = run_tool("deepy.py", "eval.py", micro_config, "--load", str(ckpt), "--eval-split", "valid").stdout
    ppl = float(out.split("perplexity ")[1].split()[0])
    assert math.isfinite(ppl) and 1.0 < ppl < 1024
    assert math.log(ppl) == pytest.approx(log[200]["val_loss"], rel=0.05)  # the same split, scored twice

    prompt = "def main(args):"
    gen = run_tool("deepy.py", "generate.py", micro_config, "--load", str(ckpt), "--prompt", prompt,
                   "--maximum-tokens", "16", "--sample-output-file", str(tmp_path / "out.jsonl")).stdout
    assert gen.startswith(prompt)
    record = json.loads(open(tmp_path / "out.jsonl").read())
    assert record["context"] == prompt and len(record["text"]) > 0

    # The resolved config in the checkpoint is itself a config that generates the same text.
    again = run_tool("deepy.py", "generate.py", str(ckpt / "global_step200" / "config.yml"), "--load", str(ckpt),
                     "--prompt", prompt, "--maximum-tokens", "16").stdout
    assert again == gen


def test_resume_is_exact(tmp_path, micro_config):
    """20 iterations straight == 10, stop, resume, 10 more (fp32 CPU, dropout on). The straight run also saves
    every 6 iterations and keeps the last 2 (saving does not perturb training)."""
    straight_logs, split_logs = tmp_path / "straight", tmp_path / "split"
    run_tool("deepy.py", "train.py", micro_config, "--save", str(tmp_path / "a"), "--log-dir", str(straight_logs),
             "--save-interval", "6", "--keep-last-n-checkpoints", "2")
    # saved at 6, 12, 18 and at the end (20); pruning keeps the last two
    assert sorted(os.listdir(tmp_path / "a")) == ["global_step18", "global_step20", "latest"]
    assert open(tmp_path / "a" / "latest").read().strip() == "global_step20"
    run_tool("deepy.py", "train.py", micro_config, "--save", str(tmp_path / "b"), "--log-dir", str(split_logs),
             "--exit-interval", "10")
    assert open(tmp_path / "b" / "latest").read().strip() == "global_step10"
    run_tool("deepy.py", "train.py", micro_config, "--save", str(tmp_path / "b"), "--load", str(tmp_path / "b"),
             "--log-dir", str(split_logs))
    a, b = losses(straight_logs), losses(split_logs)
    assert sorted(a) == sorted(b) == list(range(1, 21))
    for it in a:
        assert a[it]["loss"] == b[it]["loss"], it
        assert a[it]["grad_norm"] == b[it]["grad_norm"], it


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains(tmp_path, micro_config, precision):
    """16-bit autocast with fp32 master weights; fp16 goes through dynamic loss scaling. A format this CPU emulates
    trains after one warning that says so."""
    proc = run_tool("deepy.py", "train.py", micro_config, f"--{precision}", "{enabled: true, initial_scale_power: 8}"
                    if precision == "fp16" else "{enabled: true}")
    emulated = cpu_speedup(precision) < 1.0
    assert proc.stderr.count(f"warning: precision {precision}") == (1 if emulated else 0), proc.stderr
    log = losses(tmp_path / "logs")
    assert all(math.isfinite(r["loss"]) for r in log.values())
    assert log[20]["loss"] < log[1]["loss"]
    assert log[20]["loss_scale"] == (256.0 if precision == "fp16" else 1.0)
