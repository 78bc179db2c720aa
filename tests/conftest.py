"""Shared fixtures: a small real code corpus (from this Python's standard library) run through our tools."""

import os
import shutil
import subprocess
import sys
import sysconfig

import pytest

from megatron_lite.config import ModelConfig

# use_wandb left unset is on where an API key is configured (as GPT-NeoX): tests never log online. The W&B tests
# set WANDB_MODE=offline for themselves.
os.environ["WANDB_MODE"] = "disabled"

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STDLIB = sysconfig.get_paths()["stdlib"]


def cpu_env(**extra) -> dict:
    """The environment for a process a test means to run on the CPU, also on a GPU machine: no CUDA device, so
    torch.distributed picks gloo and tensors stay on the CPU (several ranks on one GPU would fail under NCCL)."""
    return dict(os.environ, CUDA_VISIBLE_DEVICES="", **extra)


def run_tool(*args, check=True, cwd=REPO, timeout=300):
    """Run a repo script with this interpreter, on the CPU; returns the CompletedProcess (text output)."""
    proc = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=cpu_env())
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory):
    """A few stdlib packages -> corpus.jsonl -> tokenizer (vocab 1024) -> PREFIX_text_document.{bin,idx}."""
    root = tmp_path_factory.mktemp("corpus")
    src = root / "src"
    src.mkdir()
    for package in ("json", "email", "logging", "http", "urllib"):
        shutil.copytree(os.path.join(STDLIB, package), src / package, ignore=shutil.ignore_patterns("__pycache__"))
    corpus = root / "corpus.jsonl"
    run_tool("tools/collect_corpus.py", "--input", str(src), "--languages", "Python", "--output", str(corpus))
    run_tool("tools/train_tokenizer.py", "--input", str(corpus), "--vocab-size", "1024", "--output", str(root / "tok"))
    run_tool("tools/preprocess_data.py", "--input", str(corpus), "--tokenizer-type", "HFTokenizer",
             "--vocab-file", str(root / "tok" / "tokenizer.json"), "--append-eod", "--workers", "1",
             "--output-prefix", str(root / "small"))
    return {"root": root, "corpus": corpus, "tokenizer": root / "tok" / "tokenizer.json",
            "prefix": str(root / "small_text_document")}


@pytest.fixture(scope="session")
def torch_extensions_dir():
    """This environment's own extensions cache, where `make install-test` built DeepSpeed's CPU comm op (else the
    first ZeRO test compiles it there, ~75 s, once). Not the user-wide cache: a stale lock there once hung a run."""
    return os.environ.get("MEGATRON_LITE_TEST_EXT_DIR") or os.path.join(sys.prefix, "torch_extensions")


@pytest.fixture
def micro_config(tmp_path, small_corpus):
    """A 2-layer model config on the small corpus that trains in seconds; returns the YAML path."""
    path = tmp_path / "micro.yml"
    path.write_text(
        f"""
num-layers: 2
pos-emb: rotary
no-weight-tying: true
init-method: small_init
output-layer-init-method: wang_init
tokenizer-type: HFTokenizer
split: 949,50,1
hidden-size: 64
num-attention-heads: 4
seq-length: 64
max-position-embeddings: 64
rotary-pct: 0.5
train_micro_batch_size_per_gpu: 4
gradient_accumulation_steps: 2
train-iters: 20
lr: 0.003
min-lr: 0.0003
warmup: 0.1
eval-interval: 10
eval-iters: 2
log-interval: 5
hidden-dropout: 0.1
precision: fp32
attention-dropout: 0.1
data-path: {small_corpus['prefix']}
vocab-file: {small_corpus['tokenizer']}
save: {tmp_path / 'ckpt'}
log-dir: {tmp_path / 'logs'}
tensorboard-dir: {tmp_path / 'tb'}
"""
    )
    return str(path)


def tiny_model_config(**overrides) -> ModelConfig:
    """The architecture most model tests use, written out rather than left to GPT-NeoX's defaults: PolyCoder's
    (rotary, untied, no dropout) with small_init / wang_init."""
    arch = dict(pos_emb="rotary", no_weight_tying=True, hidden_dropout=0.0, attention_dropout=0.0,
                init_method="small_init", output_layer_init_method="wang_init")
    return ModelConfig(**{**arch, **overrides})
