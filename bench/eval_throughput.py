#!/usr/bin/env python3
"""Per-language perplexity speed: eval.py's scorer vs lm-eval-harness's Hugging Face model class, same run.

Both score the same whole files (stdlib Python modules) with rolling windows of the model's max positions, as the
PolyCoder fork's harness does (end-of-text as the first token's context, disjoint windows, the last back-filled),
fp32 on --device, the same torch threads: ours is `score_files` on our model (what eval.py runs with
eval-polycoder-compat); the peer is `HFLM.loglikelihood_rolling` on the same weights exported with our to-hf
writer. Every file's log-likelihood is checked equal (rel 1e-4) before timing; then rounds alternate (ours, peer)
and medians are compared, clocks read with the device idle. Ends with `RATIO eval_perplexity <ours/peer>` in
scored tokens per second.
"""

import argparse
import contextlib
import glob
import inspect
import os
import platform
import shutil
import statistics
import sys
import sysconfig
import tempfile

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from megatron_lite.config import ModelConfig  # noqa: E402
from megatron_lite.data.tokenizer import build_tokenizer, save_tokenizer, train_byte_level_bpe  # noqa: E402
from megatron_lite.evaluation.perplexity import score_files  # noqa: E402
from device import add_device_argument, select_device, timed  # noqa: E402
from megatron_lite.interop.hf import save_hf_dir  # noqa: E402
from megatron_lite.model.gpt import GPTModel  # noqa: E402


def cpu_flags() -> str:
    """The vector extensions that decide CPU matmul speed, from /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        flags = []
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
    return f"{platform.processor() or platform.machine()}, flags: {' '.join(w for w in wanted if w in flags) or 'none'}"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=12, help="stdlib modules to score")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--context", type=int, default=256, help="max positions = window length")
    p.add_argument("--batch", type=int, default=8, help="windows per forward pass, both sides")
    p.add_argument("--rounds", type=int, default=3)
    add_device_argument(p)
    args = p.parse_args()
    device = select_device(args.device)
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    stdlib = sysconfig.get_paths()["stdlib"]
    paths = sorted(glob.glob(os.path.join(stdlib, "*.py")))
    paths = [f for f in paths if 5_000 < os.path.getsize(f) < 40_000][: args.files]
    files = [(path, "Python") for path in paths]
    texts = [open(path, encoding="utf-8").read() for path in paths]
    workdir = tempfile.mkdtemp(prefix="bench-eval-")
    try:
        save_tokenizer(train_byte_level_bpe([inspect.getsource(torch.nn.modules.module)] + texts, 4000),
                       os.path.join(workdir, "tok"))
        tokenizer = build_tokenizer("HFTokenizer", os.path.join(workdir, "tok", "tokenizer.json"))
        cfg = ModelConfig(num_layers=args.layers, hidden_size=args.hidden, num_attention_heads=args.heads,
                          seq_length=args.context, max_position_embeddings=args.context, padded_vocab_size=4096,
                          pos_emb="rotary", no_weight_tying=True, rotary_pct=0.25, hidden_dropout=0.0,
                          attention_dropout=0.0)
        torch.manual_seed(0)
        model = GPTModel(cfg).eval()
        save_hf_dir(os.path.join(workdir, "hf"), model.state_dict(), cfg, tokenizer)
        model.to(device)
        peer = HFLM(pretrained=os.path.join(workdir, "hf"), device=str(device), dtype="float32", batch_size=args.batch,
                    max_length=args.context)
        requests = [Instance("loglikelihood_rolling", {}, (text,), i) for i, text in enumerate(texts)]

        def ours():
            return score_files(model, tokenizer, files, args.context, args.context, args.batch, device,
                               contextlib.nullcontext)

        def theirs():
            return peer.loglikelihood_rolling(requests, disable_tqdm=True)

        table, lls = ours(), theirs()  # warm-up, and the like-for-like check before any timing
        for (path, _), row, ll in zip(files, table, lls):
            assert abs(-row[0] - ll) <= 1e-4 * abs(ll), (path, -row[0], ll)
        tokens = int(table[:, 1].sum())
        times = {"ours": [], "lm-eval HFLM": []}
        for _ in range(args.rounds):
            for name, fn in (("ours", ours), ("lm-eval HFLM", theirs)):
                times[name].append(timed(fn, device))
        import lm_eval
        import transformers

        print(f"CPU: {cpu_flags()}; torch {torch.__version__}, {torch.get_num_threads()} threads; transformers "
              f"{transformers.__version__}, lm-eval {lm_eval.__version__}")
        print(f"like for like: {len(files)} stdlib files, {tokens} tokens, model {args.layers} x {args.hidden} x "
              f"{args.heads}, windows of {args.context}, batch {args.batch}, fp32 on {device}; every file's log-likelihood "
              f"equal (rel 1e-4)")
        med = {name: statistics.median(ts) for name, ts in times.items()}
        for name, ts in times.items():
            print(f"{name:13s} median {med[name]:.3f} s  {tokens / med[name]:9.0f} tokens/s  runs "
                  + " ".join(f"{t:.3f}" for t in ts))
        print(f"RATIO eval_perplexity {med['lm-eval HFLM'] / med['ours']:.3f}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
