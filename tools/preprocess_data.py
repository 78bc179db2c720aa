#!/usr/bin/env python
"""Tokenize jsonl files and/or source directories into Megatron/GPT-NeoX mmap datasets (GPT-NeoX's flags)."""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_lite.data.preprocess import preprocess  # noqa: E402
from megatron_lite.errors import UserError, exit_on_user_error  # noqa: E402


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--input", required=True,
                   help="comma-separated jsonl files and/or directories (each source file is one document)")
    p.add_argument("--jsonl-keys", nargs="+", default=["text"], help="keys to extract; one dataset per key")
    p.add_argument("--tokenizer-type", default="HFTokenizer", help="HFTokenizer | GPT2BPETokenizer")
    p.add_argument("--vocab-file", default=None, help="tokenizer.json (HFTokenizer) or vocab.json (GPT2BPETokenizer)")
    p.add_argument("--merge-file", default=None, help="merges.txt (GPT2BPETokenizer)")
    p.add_argument("--append-eod", action="store_true", help="append <|endoftext|> to every document")
    p.add_argument("--output-prefix", required=True, help="writes PREFIX_KEY_document.{bin,idx}")
    p.add_argument("--dataset-impl", default="mmap", help="only 'mmap' is supported")
    p.add_argument("--workers", type=int, default=1, help="encoding processes")
    p.add_argument("--tokenizer-engine", default="auto", choices=["auto", "tiktoken", "hf"],
                   help="auto: tiktoken's engine when it gives the same ids (checked), else HF tokenizers")
    p.add_argument("--transform", default="none", choices=["none", "sketch", "methods"],
                   help="sketch: CERT-style sketches of Python (user names and literals anonymised); "
                        "methods: each documented Python function as its own document (PyMT5)")
    p.add_argument("--fim-rate", type=float, default=0.0, help="fraction of documents turned fill-in-the-middle")
    p.add_argument("--fim-spm-rate", type=float, default=0.5, help="fraction of FIM documents in SPM order, else PSM")
    p.add_argument("--seed", type=int, default=1234, help="seed of the FIM draws")
    p.add_argument("--log-interval", type=int, default=100, help="documents between progress reports")
    return p.parse_args(argv)


@exit_on_user_error
def main(argv=None):
    args = parse_args(argv)
    if args.dataset_impl != "mmap":
        raise UserError(f"dataset-impl '{args.dataset_impl}' is not supported (expected 'mmap')")
    if args.log_interval < 1:
        raise UserError(f"log-interval must be at least 1, got {args.log_interval}")
    inputs = [p for p in args.input.split(",") if p]
    result = preprocess(inputs, args.output_prefix, args.tokenizer_type, args.vocab_file, args.merge_file,
                        args.jsonl_keys, args.append_eod, args.workers, args.log_interval,
                        args.tokenizer_engine, args.transform, args.fim_rate, args.fim_spm_rate, args.seed)
    for key, prefix in result["prefixes"].items():
        print(f"{prefix}.{{bin,idx}}: {result['documents'][key]} documents")
    print("documents by language: " + ", ".join(f"{language} {n}" for language, n in result["languages"].items()))
    if result["skipped"]:
        print("source files that are not documents, skipped: "
              + ", ".join(f"{reason} {n}" for reason, n in sorted(result["skipped"].items())))
    print(f"{result['tokens']} tokens from {result['bytes'] / 1e6:.2f} MB in {result['seconds']:.1f} s "
          f"({result['rates']}, {result['engine']} engine)")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
