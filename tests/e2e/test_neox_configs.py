"""The shipped PolyCoder configs and the PolyCoder fork's own config files (frankxu2004/gpt-neox configs/, written
out below as they are there) start and train 3 steps at dp=2 on CPU, shrunk by command-line overrides only:
precision (fp16), ZeRO stage and activation checkpointing stay as the files set them."""

import json
import math
import os

import pytest

from tests.conftest import REPO, run_tool

FORK_MODEL = """# GPT-2 pretraining setup
{{
   "pipe-parallel-size": 1,
   "model-parallel-size": 1,
   "num-layers": {layers},
   "hidden-size": {hidden},
   "num-attention-heads": {heads},
   "seq-length": 2048,
   "max-position-embeddings": 2048,
   "norm": "layernorm",
   "pos-emb": "rotary",
   "no-weight-tying": true,
   "scaled-upper-triang-masked-softmax-fusion": false,
   "bias-gelu-fusion": false,
   "optimizer": {{
     "type": "Adam",
     "params": {{
       "lr": {lr},
       "betas": [0.9, 0.999],
       "eps": 1.0e-8,
     }}
   }},
   "zero_optimization": {{
    "stage": {stage},
    "allgather_partitions": True,
    "allgather_bucket_size": 500000000,
    "overlap_comm": True,
    "reduce_scatter": True,
    "reduce_bucket_size": 500000000,
    "contiguous_gradients": True,
    "cpu_offload": False
  }},
   "train_micro_batch_size_per_gpu": 4,
   "data-impl": "mmap",
   "split": "949,50,1",
   "checkpoint-activations": true,
   "checkpoint-num-layers": 1,
   "partition-activations": true,
   "synchronize-each-layer": true,
   "gradient_clipping": 1.0,
   "weight-decay": {weight_decay},
   "hidden-dropout": {dropout},
   "attention-dropout": {dropout},
   "fp16": {{
     {fp16_flag}"enabled": true,
     "loss_scale": 0,
     "loss_scale_window": 1000,
     "hysteresis": 2,
     "min_loss_scale": 1
   }},
   "train-iters": 320000,
   "lr-decay-iters": 320000,
   "distributed-backend": "nccl",
   "lr-decay-style": "cosine",
   "warmup": 0.01,
   "save-interval": 10000,
   "eval-interval": 1000,
   "eval-iters": 10,
   "log-interval": 100,
   "steps_per_print": 10,
   "keep-last-n-checkpoints": 4,
   "wall_clock_breakdown": true,
}}
"""
FORK = {
    "small.yml": FORK_MODEL.format(layers=12, hidden=768, heads=12, lr=0.0006, stage=0, weight_decay="0.0",
                                   dropout="0.0", fp16_flag=""),
    "medium.yml": FORK_MODEL.format(layers=24, hidden=1024, heads=16, lr=0.0003, stage=1, weight_decay="0",
                                    dropout="0", fp16_flag='"fp16": true,\n     '),
    "2-7B.yml": FORK_MODEL.format(layers=32, hidden=2560, heads=32, lr=0.00016, stage=1, weight_decay="0",
                                  dropout="0", fp16_flag='"fp16": true,\n     '),
    "local_setup.yml": """# Suggested data paths when using GPT-NeoX locally
{
  "data-path": "data/enron/enron_text_document",
  "vocab-file": "data/gpt2-vocab.json",
  "merge-file": "data/gpt2-merges.txt",
  "save": "checkpoints",
  "load": "checkpoints",
  "checkpoint_validation_with_forward_pass": False,
  "tensorboard-dir": "tensorboard",
  "log-dir": "logs",
  "use_wandb": True,
  "wandb_host": "https://api.wandb.ai",
  "wandb_project": "neox"
}
""",
    "text_generation.yml": """# Parameters used for text generation
# Make sure `load` is specified somewhere else
{
  # Text gen type: `input-file`, `unconditional` or `interactive`
  "text-gen-type": "unconditional",
  "maximum_tokens": 102,
  "temperature": 1.0,
  "top_p": 0.0,
  "top_k": 0,
  "recompute": false,
  "num-samples": 10,
  "sample-input-file": "sample_input.txt",
  "sample-output-file": "sample_output.txt",
}
""",
}
SHRINK = ("--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4", "--seq-length", "64",
          "--max-position-embeddings", "64", "--train-micro-batch-size-per-gpu", "2", "--train-iters", "3",
          "--lr-decay-iters", "3", "--eval-interval", "3", "--eval-iters", "1", "--save-interval", "3",
          "--log-interval", "1", "--num-procs", "2")


def smoke(out, configs, paths, stage):
    """Train 3 steps at dp=2; check the run kept fp16 and its ZeRO stage, logged 3 steps and saved."""
    proc = run_tool("deepy.py", "train.py", *configs, *SHRINK, *paths, "--save", str(out / "ckpt"),
                    "--load", str(out / "ckpt"), "--log-dir", str(out / "logs"), "--tensorboard-dir", str(out / "tb"),
                    timeout=300)
    assert "precision: fp16" in proc.stdout, proc.stdout
    assert ("ZeRO stage 1 over 2 data-parallel ranks" in proc.stdout) == (stage == 1), proc.stdout
    with open(out / "logs" / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    assert [r["iteration"] for r in records] == [1, 2, 3] and all(math.isfinite(r["loss"]) for r in records)
    assert open(out / "ckpt" / "latest").read().strip() == "global_step3"
    return proc


@pytest.mark.parametrize("name, stage", [("160M.yml", 0), ("0.4B.yml", 0), ("2-7B.yml", 1)])
def test_shipped_polycoder_configs_train_at_dp2(tmp_path, small_corpus, name, stage, monkeypatch,
                                                torch_extensions_dir):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", torch_extensions_dir)  # DeepSpeed's prebuilt comm op
    configs = [os.path.join(REPO, "configs", name), os.path.join(REPO, "configs", "local_setup.yml")]
    smoke(tmp_path, configs, ("--data-path", small_corpus["prefix"], "--vocab-file", str(small_corpus["tokenizer"])),
          stage)


@pytest.mark.parametrize("name, stage", [("small.yml", 0), ("medium.yml", 1), ("2-7B.yml", 1)])
def test_polycoder_fork_configs_train_at_dp2_and_generate(tmp_path, small_corpus, monkeypatch, name, stage,
                                                          torch_extensions_dir):
    """Their local_setup.yml as it is (GPT-2 vocab and merges, Weights & Biases on: offline here); the small model
    then samples with their text_generation.yml."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", torch_extensions_dir)
    for file, text in FORK.items():
        (tmp_path / file).write_text(text)
    tok = small_corpus["tokenizer"].parent  # vocab.json + merges.txt of the same BPE as the data
    paths = ("--data-path", small_corpus["prefix"], "--vocab-file", str(tok / "vocab.json"),
             "--merge-file", str(tok / "merges.txt"))
    proc = smoke(tmp_path, [str(tmp_path / name), str(tmp_path / "local_setup.yml")], paths, stage)
    assert "checkpoint_validation_with_forward_pass" in proc.stderr  # accepted with its one warning
    assert list((tmp_path / "logs" / "wandb").glob("offline-run-*"))
    if name != "small.yml":
        return
    gen = run_tool("deepy.py", "generate.py", str(tmp_path / name), str(tmp_path / "local_setup.yml"),
                   str(tmp_path / "text_generation.yml"), *SHRINK[:10], *paths, "--load", str(tmp_path / "ckpt"),
                   "--maximum-tokens", "8", "--sample-output-file", str(tmp_path / "samples.jsonl"))
    samples = [json.loads(line) for line in open(tmp_path / "samples.jsonl")]
    assert len(samples) == 10 and gen.returncode == 0
