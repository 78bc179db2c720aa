#!/usr/bin/env python
"""Collect source files (directories) and jsonl records into one deduplicated corpus jsonl."""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_lite.data.corpus import (  # noqa: E402
    DEFAULT_EXCLUDE_DIRS, DEFAULT_MAX_FILE_BYTES, CorpusStats, check_inputs, collect)
from megatron_lite.data.languages import parse_languages  # noqa: E402
from megatron_lite.errors import UserError, exit_on_user_error  # noqa: E402


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--input", nargs="+", required=True, help="source directories and/or .jsonl files")
    p.add_argument("--output", required=True, help="corpus .jsonl to write")
    p.add_argument("--languages", default=None, help="comma-separated languages to keep (default: all 12)")
    p.add_argument("--max-file-bytes", type=int, default=DEFAULT_MAX_FILE_BYTES, help="skip larger files")
    p.add_argument("--exclude-dirs", default=",".join(DEFAULT_EXCLUDE_DIRS),
                   help="comma-separated directory names not to descend into")
    return p.parse_args(argv)


@exit_on_user_error
def main(argv=None):
    from tqdm import tqdm

    args = parse_args(argv)
    try:
        languages = parse_languages(args.languages.split(",") if args.languages else None)
    except ValueError as e:
        raise UserError(f"languages: {e}") from None
    if args.max_file_bytes <= 0:
        raise UserError(f"max-file-bytes must be positive, got {args.max_file_bytes}")
    exclude = [d for d in args.exclude_dirs.split(",") if d]
    check_inputs(args.input)
    if os.path.isdir(args.output):
        raise UserError(f"output '{args.output}' is a directory (expected a .jsonl file name)")
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    tmp = f"{args.output}.tmp-{os.getpid()}"
    stats = CorpusStats()
    try:
        with open(tmp, "w", encoding="utf-8") as out, tqdm(unit="file", desc="collect", file=sys.stderr, disable=None) as bar:
            for record in collect(args.input, languages, args.max_file_bytes, exclude, stats):
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
                bar.update(stats.seen - bar.n)
            bar.update(stats.seen - bar.n)
        if stats.kept == 0:
            raise UserError(f"no files kept from {' '.join(args.input)} ({stats.summary()}): the corpus would be empty")
        os.replace(tmp, args.output)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    print(f"{args.output}: {stats.summary()}")
    return stats


if __name__ == "__main__":
    main(sys.argv[1:])
