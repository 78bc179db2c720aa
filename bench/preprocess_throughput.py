#!/usr/bin/env python
"""Preprocessing throughput: our tools/preprocess_data.py pipeline vs megatron-core's IndexedDatasetBuilder.

The peer is driven the way Megatron-LM's tools/preprocess_data.py drives it: a multiprocessing Pool whose
workers json-decode one line and encode one document per call (imap, chunksize 32), and the main process adds
each document to megatron-core's IndexedDatasetBuilder. Both use the same tokenizer file, the same worker count,
the same jsonl input (this Python's standard library) and --append-eod; both outputs are checked byte-identical.
Ours also runs with the plain HF engine, so the output shows where the gain comes from.
"""

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import sysconfig
import tempfile
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # as Megatron's workers encode one document each

from megatron_lite.data.corpus import CorpusStats, collect  # noqa: E402
from megatron_lite.data.preprocess import preprocess  # noqa: E402
from megatron_lite.data.tokenizer import save_tokenizer, train_byte_level_bpe  # noqa: E402


class MegatronEncoder:
    """Megatron's Encoder: the tokenizer is built once per worker; encode() takes one raw jsonl line."""

    def __init__(self, vocab_file: str):
        self.vocab_file = vocab_file

    def initializer(self):
        from tokenizers import Tokenizer

        MegatronEncoder.tokenizer = Tokenizer.from_file(self.vocab_file)
        MegatronEncoder.eod = MegatronEncoder.tokenizer.token_to_id("<|endoftext|>")

    def encode(self, json_line: str):
        text = json.loads(json_line)["text"]
        ids = MegatronEncoder.tokenizer.encode(text, add_special_tokens=False).ids
        ids.append(MegatronEncoder.eod)
        return ids, [len(ids)], len(json_line)


def run_peer(corpus: str, vocab_file: str, workers: int, prefix: str) -> None:
    from tokenizers import Tokenizer

    with warnings.catch_warnings():  # megatron.core warns that Apex / Transformer Engine are absent
        warnings.simplefilter("ignore")
        from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder

    encoder = MegatronEncoder(vocab_file)
    vocab_size = Tokenizer.from_file(vocab_file).get_vocab_size()
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=DType.optimal_dtype(vocab_size))
    with open(corpus, encoding="utf-8") as fin, mp.get_context("fork").Pool(workers, encoder.initializer) as pool:
        for ids, lengths, _ in pool.imap(encoder.encode, fin, 32):
            builder.add_document(ids, lengths)
    builder.finalize(prefix + ".idx")


def run_ours(corpus: str, vocab_file: str, workers: int, prefix: str, engine: str) -> None:
    preprocess([corpus], prefix, "HFTokenizer", vocab_file, append_eod=True, workers=workers,
               log_interval=10 ** 12, engine=engine)


def prepare(work: str, source: str, vocab_size: int):
    """The stdlib's Python files as a corpus jsonl, and a tokenizer trained on 5% of them."""
    corpus = os.path.join(work, "corpus.jsonl")
    with open(corpus, "w", encoding="utf-8") as f:
        for record in collect([source], ["Python"], stats=CorpusStats()):
            f.write(json.dumps({"text": record["text"]}, ensure_ascii=False) + "\n")
    with open(corpus, encoding="utf-8") as f:
        sample = [json.loads(line)["text"] for i, line in enumerate(f) if i % 20 == 0]
    save_tokenizer(train_byte_level_bpe(sample, vocab_size), os.path.join(work, "tok"))
    return corpus, os.path.join(work, "tok", "tokenizer.json")


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--source", default=sysconfig.get_paths()["stdlib"], help="source tree to preprocess")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--vocab-size", type=int, default=8192)
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as work:
        corpus, vocab_file = prepare(work, args.source, args.vocab_size)
        mb = os.path.getsize(corpus) / 1e6
        print(f"input: {corpus} ({mb:.1f} MB jsonl of {args.source}), workers {args.workers}, vocab {args.vocab_size}")
        runners = {
            "ours": lambda prefix: run_ours(corpus, vocab_file, args.workers, prefix, "auto"),
            "ours-hf-engine": lambda prefix: run_ours(corpus, vocab_file, args.workers, prefix, "hf"),
            "megatron-core": lambda prefix: run_peer(corpus, vocab_file, args.workers, prefix),
        }
        outputs = {name: os.path.join(work, name.replace("-", "_")) for name in runners}
        times = {name: [] for name in runners}
        for rep in range(args.repeats + 1):  # repetition 0 is the warm-up (page cache, imports)
            for name, run in runners.items():  # interleaved, so load from other processes hits all alike
                start = time.perf_counter()
                run(outputs[name])
                if rep:
                    times[name].append(time.perf_counter() - start)
        ours_bin = outputs["ours"] + "_text_document"
        for name, prefix in (("ours-hf-engine", outputs["ours-hf-engine"] + "_text_document"),
                             ("megatron-core", outputs["megatron-core"])):
            for ext in (".bin", ".idx"):
                with open(ours_bin + ext, "rb") as a, open(prefix + ext, "rb") as b:
                    if a.read() != b.read():
                        sys.exit(f"error: {name}{ext} differs from ours: not a like-for-like comparison")
        print("outputs: .bin and .idx byte-identical across all three (same tokens, same format)")
        for name, ts in times.items():
            med = statistics.median(ts)
            print(f"{name:15s} median {med:6.2f} s  {mb / med:6.2f} MB/s   runs: {', '.join(f'{t:.2f}' for t in ts)}")
        peer = statistics.median(times["megatron-core"])
        print(f"ours with HF engine vs peer: {peer / statistics.median(times['ours-hf-engine']):.2f}x")
        print(f"RATIO preprocess {peer / statistics.median(times['ours']):.2f}")


if __name__ == "__main__":
    main()
