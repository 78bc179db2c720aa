#!/usr/bin/env python
"""Merge several Megatron/GPT-NeoX .bin/.idx datasets (same dtype) into one, documents in input order."""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_lite.data.indexed_dataset import IndexedDataset, IndexedDatasetBuilder  # noqa: E402
from megatron_lite.errors import UserError, exit_on_user_error  # noqa: E402


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--input", nargs="+", required=True,
                   help="dataset prefixes (PREFIX.bin + PREFIX.idx), or a directory: every prefix in it, by name")
    p.add_argument("--output-prefix", required=True, help="writes OUTPUT_PREFIX.bin and OUTPUT_PREFIX.idx")
    return p.parse_args(argv)


def input_prefixes(inputs):
    prefixes = []
    for path in inputs:
        if os.path.isdir(path):
            found = sorted(name[:-4] for name in os.listdir(path) if name.endswith(".idx"))
            if not found:
                raise UserError(f"input directory '{path}' holds no .idx files")
            prefixes += [os.path.join(path, name) for name in found]
        else:
            prefixes.append(path[:-4] if path.endswith((".bin", ".idx")) else path)
    return prefixes


@exit_on_user_error
def main(argv=None):
    args = parse_args(argv)
    prefixes = input_prefixes(args.input)
    if os.path.abspath(args.output_prefix) in {os.path.abspath(p) for p in prefixes}:
        raise UserError(f"output-prefix '{args.output_prefix}' is also an input")
    datasets = [IndexedDataset(p) for p in prefixes]  # checks every input before anything is written
    dtypes = {str(d.dtype) for d in datasets}
    if len(dtypes) > 1:
        raise UserError(f"inputs have different token dtypes ({', '.join(sorted(dtypes))}); merge needs one")
    os.makedirs(os.path.dirname(os.path.abspath(args.output_prefix)), exist_ok=True)
    builder = IndexedDatasetBuilder(args.output_prefix, datasets[0].dtype)
    try:
        for prefix in prefixes:
            builder.merge_file_(prefix)
        builder.finalize()
    except BaseException:
        builder.abort()
        raise
    docs = sum(len(d.doc_idx) - 1 for d in datasets)
    tokens = sum(int(d.sizes.sum()) for d in datasets)
    print(f"{args.output_prefix}.{{bin,idx}}: {len(prefixes)} datasets, {docs} documents, {tokens} tokens")


if __name__ == "__main__":
    main(sys.argv[1:])
