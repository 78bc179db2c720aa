#!/usr/bin/env python
"""Collect source trees, git checkouts and jsonl(.zst / .gz) records into one filtered, deduplicated corpus."""

import argparse
import json
import os
import sys
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_lite.data.corpus import (  # noqa: E402
    DEFAULT_EXCLUDE_DIRS, DEFAULT_MAX_FILE_BYTES, CorpusStats, check_inputs, collect, walk_source_files)
from megatron_lite.data.filters import SECRET_MODES, FilterSettings, lexical_token_count  # noqa: E402
from megatron_lite.data.jsonl import open_binary, shuffle_lines  # noqa: E402
from megatron_lite.data.languages import parse_languages  # noqa: E402
from megatron_lite.errors import UserError, exit_on_user_error  # noqa: E402


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--input", nargs="+", required=True,
                   help="source directories / git checkouts and/or .jsonl, .jsonl.zst, .json.gz files")
    p.add_argument("--output", required=True, help="corpus .jsonl or .jsonl.zst to write")
    p.add_argument("--index", default=None, help="also write a jsonl index: sha256, repository, path, language, minhash")
    p.add_argument("--languages", default=None, help="comma-separated languages to keep (default: all 12)")
    p.add_argument("--majority-language", action="store_true",
                   help="keep only each repository's majority language (PolyCoder's rule)")
    p.add_argument("--keep-order", action="store_true",
                   help="write documents in the order found (default: shuffled with --seed, so that the contiguous "
                        "train / valid / test splits of the documents mix repositories and languages)")
    p.add_argument("--seed", type=int, default=1234, help="seed of the document shuffle")
    p.add_argument("--exclude-dirs", default=",".join(DEFAULT_EXCLUDE_DIRS),
                   help="comma-separated directory names not to descend into")
    f = p.add_argument_group("filters (0 turns a numeric filter off)")
    f.add_argument("--max-file-bytes", type=int, default=DEFAULT_MAX_FILE_BYTES, help="drop larger files")
    f.add_argument("--min-tokens", type=int, default=100, help="drop files with fewer tokens (PolyCoder: 100)")
    f.add_argument("--vocab-file", default=None,
                   help="tokenizer.json to count --min-tokens in; default: lexical tokens (words, symbols)")
    f.add_argument("--max-line-length", type=int, default=1000, help="drop files with a longer line")
    f.add_argument("--max-mean-line-length", type=float, default=100, help="drop files with longer mean line length")
    f.add_argument("--min-alnum-fraction", type=float, default=0.25, help="drop files with fewer alphanumerics")
    f.add_argument("--keep-generated", action="store_true", help="keep files marked auto-generated")
    f.add_argument("--secrets", default="redact", choices=SECRET_MODES, help="what to do with files holding secrets")
    f.add_argument("--near-dedup-threshold", type=float, default=0.85,
                   help="drop files whose estimated Jaccard similarity to a kept file is at least this (0: off)")
    return p.parse_args(argv)


def _settings(args) -> FilterSettings:
    if args.max_file_bytes <= 0:
        raise UserError(f"max-file-bytes must be positive, got {args.max_file_bytes}")
    for name in ("min_tokens", "max_line_length", "max_mean_line_length"):
        if getattr(args, name) < 0:
            raise UserError(f"{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if not 0 <= args.min_alnum_fraction <= 1:
        raise UserError(f"min-alnum-fraction must be in [0, 1], got {args.min_alnum_fraction}")
    if not 0 <= args.near_dedup_threshold <= 1:
        raise UserError(f"near-dedup-threshold must be in [0, 1], got {args.near_dedup_threshold}")
    return FilterSettings(args.max_file_bytes, args.min_tokens, args.max_line_length, args.max_mean_line_length,
                          args.min_alnum_fraction, not args.keep_generated, args.secrets)


def _token_counter(vocab_file):
    if vocab_file is None:
        return lexical_token_count
    from megatron_lite.data.preprocess import make_encoder

    encode, _ = make_encoder(("HFTokenizer", vocab_file, None), "auto")
    return lambda text: len(encode([text])[0])


def _file_count(inputs, exclude):
    """Files to look at, for the progress bar's ETA: known when every input is a directory (a quick walk)."""
    if not all(os.path.isdir(p) for p in inputs):
        return None
    return sum(1 for p in inputs for _ in walk_source_files(p, exclude))


def _staging_name(path: str, tag: str = "") -> str:
    """A temporary name in the same directory that keeps the suffix (.zst decides the compression)."""
    head, tail = os.path.split(os.path.abspath(path))
    return os.path.join(head, f".tmp-{os.getpid()}-{tag}{tail}")


@exit_on_user_error
def main(argv=None):
    from tqdm import tqdm

    args = parse_args(argv)
    try:
        languages = parse_languages(args.languages.split(",") if args.languages else None)
    except ValueError as e:
        raise UserError(f"languages: {e}") from None
    settings = _settings(args)
    exclude = [d for d in args.exclude_dirs.split(",") if d]
    check_inputs(args.input)
    for key, path in (("output", args.output), ("index", args.index)):
        if path is not None and os.path.isdir(path):
            raise UserError(f"{key} '{path}' is a directory (expected a .jsonl file name)")
    count_tokens = _token_counter(args.vocab_file)
    staged = {args.output: _staging_name(args.output)}
    if args.index:
        staged[args.index] = _staging_name(args.index)
    for final in staged:
        os.makedirs(os.path.dirname(os.path.abspath(final)), exist_ok=True)
    stats, written = CorpusStats(), Counter()  # written: documents per language
    try:
        index = open_binary(staged[args.index], "wb") if args.index else None

        def add_to_index(record, signature):
            if index is not None:
                entry = {k: record[k] for k in ("sha256", "repository", "path", "language")}
                entry["minhash"] = signature
                index.write((json.dumps(entry, ensure_ascii=False) + "\n").encode("utf-8"))

        with open_binary(staged[args.output], "wb") as out, \
                tqdm(total=_file_count(args.input, exclude), unit="file", desc="collect", file=sys.stderr,
                     disable=None) as bar:
            records = collect(args.input, languages, settings.max_file_bytes, exclude, stats, settings,
                              args.near_dedup_threshold or None, args.majority_language, count_tokens, add_to_index)
            for record in records:
                out.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
                written[record["language"]] += 1
                bar.update(stats.seen - bar.n)
            bar.update(stats.seen - bar.n)
        if index is not None:
            index.close()
        if stats.kept == 0:
            raise UserError(f"no files kept from {' '.join(args.input)} ({stats.summary()}): the corpus would be empty")
        if not args.keep_order:  # into a second staging file, which takes the first one's place
            ordered, staged[args.output] = staged[args.output], _staging_name(args.output, "shuffled-")
            try:
                shuffle_lines(ordered, staged[args.output], args.seed)
            finally:
                os.remove(ordered)
        for final, tmp in staged.items():
            os.replace(tmp, final)
    finally:
        for tmp in staged.values():
            if os.path.exists(tmp):
                os.remove(tmp)
    print(f"{args.output}: {stats.summary()}")
    print(f"documents written{' in the order found' if args.keep_order else ' (shuffled)'}: "
          + ", ".join(f"{language} {n}" for language, n in written.most_common()))
    return stats


if __name__ == "__main__":
    main(sys.argv[1:])
