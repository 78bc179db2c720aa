#!/usr/bin/env python3
"""Training tokens/s: our Trainer vs a plain loop over Hugging Face GPTNeoXForCausalLM, same run.

Both train the same GPT-NeoX shape from the same initial weights on the same batches of real code
(this Python's standard library through our tools), in the same precision (--precision: fp32, or bf16
autocast over fp32 master weights on both sides), AdamW with the same hyperparameters and gradient
clipping. --fusions turns on our fused kernels (causal softmax, bias-GeLU in its tanh form, softmax
cross-entropy; the peer then uses transformers' tanh GeLU too, so both compute the same function).
The peer runs twice: torch's default AdamW (what a plain loop gets) and the fused AdamW we use; the
ratio is taken against the faster of the two. Both run on --device; the first step's losses must agree
before any timing. Steps are interleaved in rounds (ours, peer, peer-fused) after warm-up, clocks read with the
device idle, and each side's median step time gives its tokens/s. Ends with `RATIO train_throughput <ours/peer>`.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile

import torch
import torch.nn.functional as F

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from megatron_lite.config_loader import load_config  # noqa: E402
from megatron_lite.precision import autocast  # noqa: E402
from megatron_lite.data.batches import get_batch  # noqa: E402
from megatron_lite.training.trainer import Trainer  # noqa: E402
from device import add_device_argument, select_device, timed  # noqa: E402
from peers import transformers_twin  # noqa: E402

FIRST_LOSS_RTOL = {"fp32": 1e-4, "bf16": 2e-2}  # bf16: the two sides round in different places


def prepare_data(workdir: str, packages) -> tuple:
    """Stdlib packages -> corpus -> tokenizer -> .bin/.idx with our own tools; returns (prefix, tokenizer)."""
    stdlib = sysconfig.get_paths()["stdlib"]
    src = os.path.join(workdir, "src")
    os.makedirs(src)
    for package in packages:
        shutil.copytree(os.path.join(stdlib, package), os.path.join(src, package),
                        ignore=shutil.ignore_patterns("__pycache__", "test*"))
    corpus, tok = os.path.join(workdir, "corpus.jsonl"), os.path.join(workdir, "tok")

    def tool(*args):
        subprocess.run([sys.executable, *args], cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    tool("tools/collect_corpus.py", "--input", src, "--languages", "Python", "--output", corpus)
    tool("tools/train_tokenizer.py", "--input", corpus, "--vocab-size", "8000", "--output", tok)
    tool("tools/preprocess_data.py", "--input", corpus, "--tokenizer-type", "HFTokenizer", "--vocab-file",
         os.path.join(tok, "tokenizer.json"), "--append-eod", "--output-prefix", os.path.join(workdir, "bench"))
    return os.path.join(workdir, "bench_text_document"), os.path.join(tok, "tokenizer.json")


def peer_step(peer, optimizer, batches, clip, precision):
    optimizer.zero_grad(set_to_none=True)
    total = 0.0
    for tokens in batches:
        with autocast(tokens.device, precision):
            logits = peer(input_ids=tokens[:, :-1]).logits  # [b, s, v]
        loss = F.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten())
        (loss / len(batches)).backward()
        total += loss.detach()  # read once per step, as ours does (each .item() waits for a GPU)
    torch.nn.utils.clip_grad_norm_(peer.parameters(), clip)
    optimizer.step()
    return (total / len(batches)).item()


def peer_optimizer(peer, o, fused):
    decay = [p for p in peer.parameters() if p.ndim >= 2]
    no_decay = [p for p in peer.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps, fused=fused)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=os.path.join(REPO, "configs", "tiny.yml"))
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps-per-round", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
    parser.add_argument("--fusions", choices=("on", "off"), default="on")
    parser.add_argument("--packages", default="json,email,logging,http,urllib,asyncio,xml,unittest",
                        help="standard-library packages to train on")
    add_device_argument(parser)
    args = parser.parse_args()
    device = select_device(args.device)

    with tempfile.TemporaryDirectory() as workdir:
        prefix, tokenizer = prepare_data(workdir, args.packages.split(","))
        fusion = "true" if args.fusions == "on" else "false"
        overrides = ["--data-path", prefix, "--tokenizer-type", "HFTokenizer", "--vocab-file", tokenizer,
                     "--precision", args.precision,
                     "--train-iters", "1000", "--hidden-dropout", "0", "--attention-dropout", "0",
                     "--scaled-upper-triang-masked-softmax-fusion", fusion, "--bias-gelu-fusion", fusion,
                     "--cross-entropy-loss-fusion", fusion]
        cfg = load_config([args.config], overrides)
        cfg.log.peak_tflops = 1.0  # skip the CPU peak measurement: MFU is not reported here
        trainer = Trainer(cfg)
        assert trainer.device.type == device.type, (trainer.device, device)
        peer = transformers_twin(trainer.model, cfg.model).to(device).train()
        t = cfg.train
        tokens_per_step = t.train_batch_size * cfg.model.seq_length
        micro, gas = t.train_micro_batch_size_per_gpu, t.gradient_accumulation_steps
        peers = {"hf_default_adamw": peer_optimizer(peer, cfg.optim, fused=False)}
        peer_fused = transformers_twin(trainer.model, cfg.model).to(device).train()
        peers["hf_fused_adamw"] = peer_optimizer(peer_fused, cfg.optim, fused=True)
        models = {"hf_default_adamw": peer, "hf_fused_adamw": peer_fused}

        def batches(step):
            start = step * t.train_batch_size
            return [get_batch(trainer.train_data, start + j * micro, micro, trainer.device) for j in range(gas)]

        # Same weights, same first batch: the two sides compute the same loss (a check that this is like for like).
        first_ours = trainer.train_step()["loss"]
        first_peer = peer_step(peer, peers["hf_default_adamw"], batches(0), cfg.optim.gradient_clipping,
                               args.precision)
        peer_step(peer_fused, peers["hf_fused_adamw"], batches(0), cfg.optim.gradient_clipping, args.precision)
        print(f"first-step loss: ours {first_ours:.5f}  transformers {first_peer:.5f}")
        if abs(first_ours - first_peer) > FIRST_LOSS_RTOL[args.precision] * abs(first_peer):
            raise SystemExit(f"not like for like: first-step losses differ by more than "
                             f"{FIRST_LOSS_RTOL[args.precision]} relative")

        times = {"ours": [], **{k: [] for k in peers}}
        step = 1
        for r in range(args.warmup + args.rounds):
            for name in times:
                for _ in range(args.steps_per_round):
                    if name == "ours":
                        elapsed = timed(trainer.train_step, device)
                    else:
                        data = batches(step)
                        elapsed = timed(lambda: peer_step(models[name], peers[name], data,
                                                          cfg.optim.gradient_clipping, args.precision), device)
                    if r >= args.warmup:
                        times[name].append(elapsed)
                step += 1

    m = cfg.model
    print(f"shape: {m.num_layers} layers x {m.hidden_size} hidden x {m.num_attention_heads} heads, seq "
          f"{m.seq_length}, vocab {m.padded_vocab_size}, global batch {t.train_batch_size} ({micro} x {gas}), "
          f"{args.precision}, fusions {args.fusions}, device {device}, "
          f"AdamW lr {cfg.optim.lr} clip {cfg.optim.gradient_clipping}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {args.rounds} interleaved rounds x {args.steps_per_round} steps")
    rates = {}
    for name, samples in times.items():
        med = statistics.median(samples)
        rates[name] = tokens_per_step / med
        print(f"{name:18s} median step {med * 1000:8.1f} ms  tokens/s {rates[name]:9.0f}  "
              f"(min {min(samples) * 1000:.1f} ms, max {max(samples) * 1000:.1f} ms)")
    best_peer = max(rates["hf_default_adamw"], rates["hf_fused_adamw"])
    print(f"RATIO train_throughput {rates['ours'] / best_peer:.3f}")


if __name__ == "__main__":
    main()
