#!/usr/bin/env python3
"""Generation speed: our TextGenerator vs Hugging Face transformers generate(), same weights, same run.

Both decode greedily with a KV cache, fp32 on --device, from the same 128-token prompt, exactly the same
number of new tokens (end-of-document disabled on both sides), at batch 1 and batch 8. Time to first
token is one prefill plus one step. Rounds are interleaved after warm-up, clocks read with the device idle;
medians are reported.
Ours runs its decoding steps' linears through csrc/decode_linear_cpu.cpp; transformers through torch's linear.
Ends with `RATIO generate <ours/peer>` (batch-1 tokens/s); exits 1 first if the greedy tokens differ.
"""

import argparse
import os
import statistics
import sys

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from megatron_lite.config import GenerateConfig  # noqa: E402
from megatron_lite.config_loader import load_config  # noqa: E402
from megatron_lite.generation.engine import TextGenerator  # noqa: E402
from megatron_lite.model.gpt import GPTModel  # noqa: E402
from device import add_device_argument, select_device, timed  # noqa: E402
from peers import transformers_twin  # noqa: E402


class NoEodTokenizer:
    """Only what the engine needs when no stop rule is set: an end-of-document id that never occurs."""

    eod = -1


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=os.path.join(REPO, "configs", "tiny.yml"))
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=0, help="torch threads for both sides (0 = default)")
    add_device_argument(parser)
    args = parser.parse_args()
    device = select_device(args.device)

    m = load_config([args.config]).model
    m.max_position_embeddings = max(m.max_position_embeddings, args.prompt_tokens + args.new_tokens + 1)
    m.padded_vocab_size = args.vocab
    torch.manual_seed(0)
    model = GPTModel(m).eval()
    peer = transformers_twin(model, m, eos_token_id=None, bos_token_id=None, pad_token_id=0).to(device).eval()
    model.to(device)
    prompt = torch.randint(1, args.vocab, (args.prompt_tokens,)).tolist()

    def ours(batch, new):
        cfg = GenerateConfig(maximum_tokens=new, temperature=0.0)
        return TextGenerator(model, NoEodTokenizer(), cfg, m.max_position_embeddings).generate_ids(prompt, batch)

    def theirs(batch, new):
        ids = torch.tensor([prompt] * batch, device=device)
        with torch.inference_mode():
            out = peer.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                                do_sample=False, use_cache=True)
        return out[:, len(prompt):].tolist()

    if args.threads:
        torch.set_num_threads(args.threads)
    for batch in (1, 8):  # a speed ratio means nothing unless both sides decode the same tokens
        a, b = ours(batch, args.new_tokens), theirs(batch, args.new_tokens)
        if a != b:
            row = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
            step = next((i for i, (x, y) in enumerate(zip(a[row], b[row])) if x != y), min(len(a[row]), len(b[row])))
            sys.exit(f"error: greedy tokens differ, ours vs transformers (batch {batch}, row {row}, first at new token "
                     f"{step}: {a[row][step:step + 4]} vs {b[row][step:step + 4]}); not timing a different computation")
    print("greedy tokens identical, ours vs transformers: True (batch 1 and 8)")
    cases = [(name, fn, batch, new) for batch in (1, 8) for new in (1, args.new_tokens)
             for name, fn in (("ours", ours), ("transformers", theirs))]
    times = {(name, batch, new): [] for name, _, batch, new in cases}
    for r in range(args.rounds + 1):  # round 0 is warm-up
        for name, fn, batch, new in cases:
            elapsed = timed(lambda: fn(batch, new), device)
            if r:
                times[(name, batch, new)].append(elapsed)

    print(f"shape: {m.num_layers} layers x {m.hidden_size} hidden x {m.num_attention_heads} heads, vocab {args.vocab}, "
          f"prompt {args.prompt_tokens} tokens, {args.new_tokens} new tokens, greedy, KV cache, fp32 on {device}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.rounds} interleaved rounds (medians)")
    rate = {}
    for batch in (1, 8):
        for name in ("ours", "transformers"):
            first = statistics.median(times[(name, batch, 1)])
            total = statistics.median(times[(name, batch, args.new_tokens)])
            rate[(name, batch)] = batch * args.new_tokens / total
            print(f"batch {batch} {name:12s} time to first token {first * 1000:7.1f} ms  "
                  f"tokens/s {rate[(name, batch)]:8.1f}")
        print(f"batch {batch} ratio ours/transformers tokens/s {rate[('ours', batch)] / rate[('transformers', batch)]:.2f}")
    print(f"RATIO generate {rate[('ours', 1)] / rate[('transformers', 1)]:.3f}")


if __name__ == "__main__":
    main()
