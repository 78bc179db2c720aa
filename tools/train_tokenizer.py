#!/usr/bin/env python
"""Train a lossless byte-level BPE tokenizer on a random sample (default 5%) of source directories / jsonl files."""

import argparse
import os
import random
import sys
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_lite.data.corpus import check_inputs, iter_labelled_texts  # noqa: E402
from megatron_lite.data.tokenizer import (  # noqa: E402
    TOKENIZER_TYPES, build_tokenizer, save_tokenizer, train_byte_level_bpe, train_sentencepiece)
from megatron_lite.data.transforms import FIM_TOKENS  # noqa: E402
from megatron_lite.errors import UserError, exit_on_user_error  # noqa: E402


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--input", nargs="+", required=True, help="source directories and/or .jsonl files")
    p.add_argument("--vocab-size", type=int, required=True, help="vocabulary size including <|endoftext|>")
    p.add_argument("--output", required=True,
                   help="directory for tokenizer.json, vocab.json, merges.txt (or tokenizer.model for SPMTokenizer)")
    p.add_argument("--tokenizer-type", default="HFTokenizer", choices=TOKENIZER_TYPES,
                   help="HFTokenizer / GPT2BPETokenizer: byte-level BPE (both files written); SPMTokenizer: sentencepiece")
    p.add_argument("--fim-tokens", action="store_true",
                   help="add the fill-in-the-middle sentinels <|fim_prefix|> <|fim_middle|> <|fim_suffix|>")
    p.add_argument("--sample-rate", type=float, default=0.05, help="fraction of documents to train on (PolyCoder: 5%%)")
    p.add_argument("--min-documents", type=int, default=200,
                   help="sample at least this many documents (all of a smaller corpus)")
    p.add_argument("--jsonl-keys", nargs="+", default=["text"], help="jsonl keys whose values are documents")
    p.add_argument("--seed", type=int, default=1234, help="seed of the document sample")
    return p.parse_args(argv)


def sampled_texts(inputs, keys, rate, seed, totals):
    """(text, language) of the sampled documents; the same sequence on every pass for the same seed."""
    rng = random.Random(seed)
    for text, language in iter_labelled_texts(inputs, keys):
        if text and rng.random() < rate:
            totals["docs"] += 1
            totals["bytes"] += len(text.encode("utf-8"))
            yield text, language


def sample_rate(inputs, keys, rate: float, min_documents: int) -> float:
    """The rate that samples `rate` of the documents but at least `min_documents` of them (one counting pass)."""
    if rate >= 1.0:
        return 1.0
    total = sum(1 for text, _ in iter_labelled_texts(inputs, keys) if text)
    return min(1.0, max(rate, min_documents / max(total, 1)))


def bytes_per_token(tokenizer, texts) -> dict:
    """Language -> (bytes, tokens) over (text, language) pairs, plus 'all'."""
    counts = {}
    batch = []

    def flush():
        for (text, language), ids in zip(batch, tokenizer.encode_batch([t for t, _ in batch])):
            for key in (language, "all"):
                b, n = counts.get(key, (0, 0))
                counts[key] = (b + len(text.encode("utf-8")), n + len(ids))
        batch.clear()

    for item in texts:
        batch.append(item)
        if len(batch) == 256:
            flush()
    flush()
    return counts


def _check_sampled(totals, inputs):
    if totals["docs"] == 0:
        raise UserError(f"no documents to train on in {' '.join(inputs)} (empty input or sample-rate too low)")


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
    if args.min_documents < 0:
        raise UserError(f"min-documents must be >= 0, got {args.min_documents}")
    rate = sample_rate(args.input, args.jsonl_keys, args.sample_rate, args.min_documents)
    totals = {"docs": 0, "bytes": 0}
    texts = (text for text, _ in sampled_texts(args.input, args.jsonl_keys, rate, args.seed, totals))
    special = FIM_TOKENS if args.fim_tokens else ()
    if args.tokenizer_type == "SPMTokenizer":
        texts = list(texts)  # sentencepiece cannot tell an empty sample from a bad one: count first
        _check_sampled(totals, args.input)
        train_sentencepiece(texts, args.vocab_size, args.output, special)
        saved = ("SPMTokenizer", os.path.join(args.output, "tokenizer.model"), None)
    else:
        tok = train_byte_level_bpe(texts, args.vocab_size, extra_special=special)
        _check_sampled(totals, args.input)
        save_tokenizer(tok, args.output)
        saved = ("HFTokenizer", os.path.join(args.output, "tokenizer.json"), None)
    # Measure compression with the saved files, through the same loader training runs use.
    loaded = build_tokenizer(*saved)
    counts = bytes_per_token(loaded, sampled_texts(args.input, args.jsonl_keys, rate, args.seed, Counter()))
    b, n = counts["all"]
    print(f"{args.output}: vocab {loaded.vocab_size} (asked {args.vocab_size}), trained on {totals['docs']} documents "
          f"({totals['bytes'] / 1e6:.2f} MB, sample rate {rate:.3g}), {b / max(n, 1):.3f} bytes per token")
    for language, (b, n) in sorted(counts.items()):
        if language != "all":
            print(f"  {language:12s} {b / max(n, 1):.3f} bytes per token ({b / 1e6:.2f} MB)")


if __name__ == "__main__":
    main(sys.argv[1:])
