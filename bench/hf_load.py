#!/usr/bin/env python3
"""Time to load a Hugging Face GPTNeoXForCausalLM directory into a ready model on --device: ours vs transformers.

Ours is what generate.py / eval.py do with `load` set to the directory (read config.json and tokenizer,
build GPTModel, load model.safetensors); the peer is `AutoModelForCausalLM.from_pretrained` on the same
directory (then moved to the device). Both end with an fp32 model in eval mode whose logits agree (asserted
before any timing, 1e-4). The directory is written once
by our exporter from a PolyCoder-160M-shaped model (12 x 768 x 12, vocab 50304). After one warm-up load each,
loads are interleaved (ours, peer) for --repeats rounds, files in the page cache for both; medians are compared.
Ends with `RATIO hf_load <ours/peer>` in loads per second, like the other benches (> 1: ours is faster).
"""

import argparse
import inspect
import os
import shutil
import statistics
import sys
import tempfile

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from megatron_lite.build import load_trained_model  # noqa: E402
from megatron_lite.config import Config, ModelConfig  # noqa: E402
from megatron_lite.data.tokenizer import build_tokenizer, save_tokenizer, train_byte_level_bpe  # noqa: E402
from megatron_lite.interop.hf import save_hf_dir  # noqa: E402
from megatron_lite.model.gpt import GPTModel  # noqa: E402
from device import add_device_argument, select_device, timed  # noqa: E402



def write_model_dir(workdir: str, layers: int, hidden: int, heads: int) -> str:
    tok_dir = os.path.join(workdir, "tok")
    save_tokenizer(train_byte_level_bpe([inspect.getsource(torch.nn.modules.module)], 1000), tok_dir)
    cfg = ModelConfig(num_layers=layers, hidden_size=hidden, num_attention_heads=heads, padded_vocab_size=50304,
                      pos_emb="rotary", no_weight_tying=True,  # PolyCoder's architecture, which HF can hold
                      max_position_embeddings=2048, seq_length=2048)
    torch.manual_seed(0)
    out = os.path.join(workdir, "hf")
    save_hf_dir(out, GPTModel(cfg).state_dict(), cfg,
                build_tokenizer("HFTokenizer", os.path.join(tok_dir, "tokenizer.json")))
    return out


def load_ours(path):
    cfg = Config()
    cfg.train.load = path
    return load_trained_model(cfg)[0]


def load_peer(path, device):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device).eval()


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--heads", type=int, default=12)
    add_device_argument(p)
    args = p.parse_args()
    device = select_device(args.device)  # ours: load_trained_model's device, which --device cpu makes the CPU
    import transformers

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    workdir = tempfile.mkdtemp(prefix="bench-hf-load-")
    try:
        path = write_model_dir(workdir, args.layers, args.hidden, args.heads)
        size = os.path.getsize(os.path.join(path, "model.safetensors")) / 2**20
        ours, peer = load_ours(path), load_peer(path, device)  # warm-up: imports, page cache
        assert next(ours.parameters()).device.type == device.type
        x = torch.randint(0, 50304, (1, 32), device=device)
        with torch.no_grad():
            diff = (ours(x) - peer(x).logits).abs().max().item()
        if diff > 1e-4:
            raise SystemExit(f"not like for like: the two loaded models' logits differ by {diff:.2e}")
        del ours, peer
        times = {"ours": [], "transformers": []}
        for _ in range(args.repeats):
            for name, fn in (("ours", lambda: load_ours(path)), ("transformers", lambda: load_peer(path, device))):
                times[name].append(timed(fn, device))
        print(f"model: {args.layers} x {args.hidden} x {args.heads}, vocab 50304, model.safetensors {size:.0f} MiB fp32; "
              f"transformers {transformers.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads")
        print(f"like for like: same directory, both to an fp32 eval-mode model on {device}; max |logit diff| "
              f"{diff:.2e}")
        med = {k: statistics.median(v) for k, v in times.items()}
        for name, ts in times.items():
            print(f"{name:13s} median {med[name]:.3f} s  runs " + " ".join(f"{t:.3f}" for t in ts))
        print(f"RATIO hf_load {med['transformers'] / med['ours']:.3f}")  # speed: loads/s ours over loads/s peer
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
