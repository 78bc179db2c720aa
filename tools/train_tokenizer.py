#!/usr/bin/env python
"""Train a lossless byte-level BPE tokenizer on source directories and/or jsonl files."""

import argparse
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_lite.data.corpus import check_inputs, iter_documents  # noqa: E402
from megatron_lite.data.tokenizer import build_tokenizer, save_tokenizer, train_byte_level_bpe  # noqa: E402
from megatron_lite.errors import UserError, exit_on_user_error  # noqa: E402


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--input", nargs="+", required=True, help="source directories and/or .jsonl files")
    p.add_argument("--vocab-size", type=int, required=True, help="vocabulary size including <|endoftext|>")
    p.add_argument("--output", required=True, help="directory for tokenizer.json, vocab.json, merges.txt")
    p.add_argument("--sample-rate", type=float, default=1.0, help="fraction of documents to train on")
    p.add_argument("--jsonl-keys", nargs="+", default=["text"], help="jsonl keys whose values are documents")
    p.add_argument("--seed", type=int, default=1234, help="seed of the document sample")
    return p.parse_args(argv)


def sampled_texts(inputs, keys, rate, seed, totals):
    """The sampled documents' texts; the same sequence on every pass for the same seed."""
    rng = random.Random(seed)
    for doc in iter_documents(inputs, keys):
        for key in keys:
            text = doc[key]
            if text and rng.random() < rate:
                totals["docs"] += 1
                totals["bytes"] += len(text.encode("utf-8"))
                yield text


@exit_on_user_error
def main(argv=None):
    args = parse_args(argv)
    check_inputs(args.input)
    if args.vocab_size < 257:
        raise UserError(f"vocab-size must be at least 257 (256 bytes + <|endoftext|>), got {args.vocab_size}")
    if not 0.0 < args.sample_rate <= 1.0:
        raise UserError(f"sample-rate must be in (0, 1], got {args.sample_rate}")
    if os.path.exists(args.output) and not os.path.isdir(args.output):
        raise UserError(f"output '{args.output}' exists and is not a directory")
    totals = {"docs": 0, "bytes": 0}
    tok = train_byte_level_bpe(sampled_texts(args.input, args.jsonl_keys, args.sample_rate, args.seed, totals),
                               args.vocab_size)
    if totals["docs"] == 0:
        raise UserError(f"no documents to train on in {' '.join(args.input)} (empty input or sample-rate too low)")
    save_tokenizer(tok, args.output)
    # Measure compression with the saved files, through the same loader training runs use.
    loaded = build_tokenizer("HFTokenizer", os.path.join(args.output, "tokenizer.json"), None)
    measured = {"docs": 0, "bytes": 0}
    tokens, batch = 0, []
    for text in sampled_texts(args.input, args.jsonl_keys, args.sample_rate, args.seed, measured):
        batch.append(text)
        if len(batch) == 256:
            tokens += sum(map(len, loaded.encode_batch(batch)))
            batch = []
    tokens += sum(map(len, loaded.encode_batch(batch)))
    print(f"{args.output}: vocab {loaded.vocab_size} (asked {args.vocab_size}), trained on {totals['docs']} documents "
          f"({totals['bytes'] / 1e6:.2f} MB), {measured['bytes'] / max(tokens, 1):.3f} bytes per token")


if __name__ == "__main__":
    main(sys.argv[1:])
