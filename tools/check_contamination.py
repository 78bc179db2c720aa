#!/usr/bin/env python
"""Report which files of a test set appear in a corpus, exactly (SHA-256) or nearly (MinHash), from its index."""

import argparse
import base64
import hashlib
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_lite.data.corpus import check_inputs, read_source, walk_source_files  # noqa: E402
from megatron_lite.data.dedup import NUM_PERM, MinHashLSH, minhash  # noqa: E402
from megatron_lite.data.jsonl import iter_jsonl  # noqa: E402
from megatron_lite.data.languages import language_of  # noqa: E402
from megatron_lite.errors import UserError, exit_on_user_error  # noqa: E402


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--index", required=True, help="index written by tools/collect_corpus.py --index")
    p.add_argument("--test-set", nargs="+", required=True, help="directories and/or .jsonl files (key 'text')")
    p.add_argument("--threshold", type=float, default=0.85, help="estimated Jaccard similarity that counts as near")
    p.add_argument("--exact-only", action="store_true", help="only SHA-256 matches (for an index without minhash)")
    p.add_argument("--fail-if-found", action="store_true", help="exit with status 1 when any file is found")
    return p.parse_args(argv)


def load_index(path: str, near: "MinHashLSH | None"):
    """{sha256: 'repository/path'}, and the index's signatures inserted into `near`."""
    exact = {}
    for lineno, entry in iter_jsonl(path):
        if not isinstance(entry.get("sha256"), str):
            raise UserError(f"{path}:{lineno}: index entry has no 'sha256' (expected collect_corpus.py --index output)")
        name = f"{entry.get('repository', '')}/{entry.get('path', '')}"
        exact.setdefault(entry["sha256"], name)
        if near is not None:
            if not entry.get("minhash"):
                raise UserError(f"{path}:{lineno}: index entry has no minhash (built without near-dedup); "
                                f"use --exact-only or rebuild with --near-dedup-threshold > 0")
            sig = np.frombuffer(base64.b64decode(entry["minhash"]), dtype=np.uint32)
            if sig.size != NUM_PERM:
                raise UserError(f"{path}:{lineno}: minhash has {sig.size} values, expected {NUM_PERM}")
            near.insert(name, sig)
    return exact


def test_files(inputs):
    """(name, text) of each test-set document."""
    for path in inputs:
        if os.path.isdir(path):
            for full, rel in walk_source_files(path):
                if language_of(full) is not None:
                    text, _ = read_source(full)
                    if text is not None:
                        yield rel, text
        else:
            for lineno, record in iter_jsonl(path):
                if not isinstance(record.get("text"), str):
                    raise UserError(f"{path}:{lineno}: record has no string 'text' key")
                yield record.get("path") or f"{os.path.basename(path)}:{lineno}", record["text"]


@exit_on_user_error
def main(argv=None):
    args = parse_args(argv)
    if not os.path.isfile(args.index):
        raise UserError(f"index '{args.index}' does not exist (expected collect_corpus.py --index output)")
    if not 0 < args.threshold <= 1:
        raise UserError(f"threshold must be in (0, 1], got {args.threshold}")
    check_inputs(args.test_set, "test-set")
    near = None if args.exact_only else MinHashLSH(args.threshold)
    exact = load_index(args.index, near)
    found = {"exact": 0, "near": 0}
    total = 0
    for name, text in test_files(args.test_set):
        total += 1
        match = exact.get(hashlib.sha256(text.encode("utf-8")).hexdigest())
        if match is not None:
            found["exact"] += 1
            print(f"exact  {name}  ==  {match}")
            continue
        hit = near.query(minhash(text)) if near is not None else None
        if hit is not None:
            found["near"] += 1
            print(f"near   {name}  ~   {hit[0]}  (Jaccard ~{hit[1]:.2f})")
    if total == 0:
        raise UserError(f"test-set {' '.join(args.test_set)} holds no source files or records")
    print(f"{found['exact'] + found['near']} of {total} test files found in the corpus "
          f"({found['exact']} exact, {found['near']} near at Jaccard >= {args.threshold}; index of {len(exact)} files)")
    if args.fail_if_found and found["exact"] + found["near"]:
        sys.exit(1)
    return found


if __name__ == "__main__":
    main(sys.argv[1:])
