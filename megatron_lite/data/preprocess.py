"""Tokenize documents (jsonl records, source files) in parallel into `{prefix}_{key}_document.{bin,idx}`."""

import itertools
import os
import sys
import time
from collections import deque
from typing import Dict, Iterator, List, Optional, Sequence

import numpy as np

from megatron_lite.data.corpus import check_inputs, iter_documents
from megatron_lite.data.fast_bpe import encoder_for
from megatron_lite.data.indexed_dataset import IndexedDatasetBuilder, best_dtype
from megatron_lite.data.tokenizer import build_tokenizer
from megatron_lite.errors import UserError, warn_once

CHUNK_DOCS = 64  # documents per encode_batch call / per task sent to a worker
CHUNK_BYTES = 1 << 20  # ... or fewer when they are large, so a task stays around a megabyte

ENGINES = ("auto", "tiktoken", "hf")

_worker_encode = None


def output_prefix_for(output_prefix: str, key: str) -> str:
    """GPT-NeoX's naming: PREFIX_KEY_document."""
    return f"{output_prefix}_{key}_document"


def make_encoder(tokenizer_args, engine: str):
    """(texts -> token lists, engine used): tiktoken's engine where it reproduces the tokenizer, else HF's."""
    tokenizer = build_tokenizer(*tokenizer_args)
    if engine != "hf":
        fast, reason = encoder_for(tokenizer.hf) if tokenizer.hf is not None else (None, "it is not a BPE")
        if fast is not None:
            return (lambda texts: [fast(t) for t in texts]), "tiktoken"
        if engine == "tiktoken":
            raise UserError(f"tokenizer-engine 'tiktoken' cannot encode vocab-file '{tokenizer_args[1]}': {reason}")
    # One encode per document: with the Rust thread pool off in workers, encode_batch is slower than a loop.
    return (lambda texts: [tokenizer.encode(t) for t in texts]), ("hf" if tokenizer.hf else "sentencepiece")


def _init_worker(tokenizer_args, engine):
    global _worker_encode
    _worker_encode, _ = make_encoder(tokenizer_args, engine)


def _encode_chunk(texts: List[str]) -> List[np.ndarray]:
    # int32 arrays pickle far smaller than lists of Python ints on the way back from a worker.
    return [np.asarray(ids, dtype=np.int32) for ids in _worker_encode(texts)]


def _chunks(docs: Iterator[Dict[str, str]], keys: Sequence[str]) -> Iterator[List[str]]:
    """Flat lists of texts (document-major, then key) of up to CHUNK_DOCS documents / about CHUNK_BYTES."""
    chunk, size = [], 0
    for doc in docs:
        chunk.extend(doc[k] for k in keys)
        size += sum(len(doc[k]) for k in keys)
        if len(chunk) >= CHUNK_DOCS * len(keys) or size >= CHUNK_BYTES:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def _encoded(chunks: Iterator[List[str]], tokenizer_args, engine: str, workers: int):
    """(texts, token arrays) per chunk, in input order; at most 2 x workers chunks in flight, so memory stays flat."""
    if workers == 1:
        _init_worker(tokenizer_args, engine)
        for texts in chunks:
            yield texts, _encode_chunk(texts)
        return
    import multiprocessing as mp

    # Workers encode one chunk each; the Rust thread pool inside each would only oversubscribe the cores.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
    pool = ctx.Pool(workers, initializer=_init_worker, initargs=(tokenizer_args, engine))
    try:
        pending = deque()
        for texts in chunks:
            pending.append((texts, pool.apply_async(_encode_chunk, (texts,))))
            if len(pending) >= 2 * workers:
                texts, result = pending.popleft()
                yield texts, result.get()
        while pending:
            texts, result = pending.popleft()
            yield texts, result.get()
        pool.close()
    finally:
        pool.terminate()
        pool.join()


class _Progress:
    """A tqdm bar on a terminal; otherwise one stdout line per log_interval documents (stderr stays for errors)."""

    def __init__(self, log_interval: int):
        from tqdm import tqdm

        self.bar = tqdm(unit="doc", desc="encode", disable=None, file=sys.stderr)
        self.interval, self.start = max(1, log_interval), time.time()
        self.docs = self.bytes = self.tokens = 0

    def rates(self) -> str:
        dt = max(time.time() - self.start, 1e-9)
        return f"{self.docs / dt:.1f} docs/s, {self.bytes / dt / 1e6:.2f} MB/s"

    def update(self, docs: int, nbytes: int, tokens: int):
        crossed = (self.docs + docs) // self.interval > self.docs // self.interval
        self.docs, self.bytes, self.tokens = self.docs + docs, self.bytes + nbytes, self.tokens + tokens
        if self.bar.disable:
            if crossed:
                print(f"processed {self.docs} documents ({self.rates()})", flush=True)
        else:
            self.bar.update(docs)
            if crossed:
                self.bar.set_postfix_str(f"{self.bytes / max(time.time() - self.start, 1e-9) / 1e6:.2f} MB/s")

    def close(self):
        self.bar.close()


def checked_engine(tokenizer_args, engine: str, sample: List[str]) -> str:
    """The engine to use: a fast engine must give HF's ids on `sample` (the first chunk), else HF's is used."""
    if engine not in ENGINES:
        raise UserError(f"tokenizer-engine '{engine}' is unknown; valid: {', '.join(ENGINES)}")
    encode, chosen = make_encoder(tokenizer_args, engine)
    if chosen != "tiktoken":
        return chosen
    if encode(sample) != build_tokenizer(*tokenizer_args).encode_batch(sample):
        if engine == "tiktoken":
            raise UserError(f"tokenizer-engine 'tiktoken' gives other ids than vocab-file '{tokenizer_args[1]}'")
        warn_once("the tiktoken engine disagrees with the tokenizer on the first documents; using HF tokenizers")
        return "hf"
    return chosen


def preprocess(inputs: Sequence[str], output_prefix: str, tokenizer_type: str, vocab_file: Optional[str],
               merge_file: Optional[str] = None, jsonl_keys: Sequence[str] = ("text",), append_eod: bool = False,
               workers: int = 1, log_interval: int = 100, engine: str = "auto") -> dict:
    """Encode every non-empty document; returns counts and the written prefixes. Nothing is left on failure."""
    check_inputs(inputs)
    if workers < 1:
        raise UserError(f"workers must be at least 1, got {workers}")
    if not jsonl_keys:
        raise UserError("jsonl-keys is empty: name at least one key (default: text)")
    tokenizer_args = (tokenizer_type, vocab_file, merge_file)
    tokenizer = build_tokenizer(*tokenizer_args)
    out_dir = os.path.dirname(os.path.abspath(output_prefix))
    os.makedirs(out_dir, exist_ok=True)
    prefixes = {k: output_prefix_for(output_prefix, k) for k in jsonl_keys}
    builders = {}
    progress = _Progress(log_interval)
    counts = {k: 0 for k in jsonl_keys}
    try:
        for k in jsonl_keys:
            builders[k] = IndexedDatasetBuilder(prefixes[k], best_dtype(tokenizer.vocab_size))
        chunks = _chunks(iter_documents(inputs, jsonl_keys), jsonl_keys)
        first = next(chunks, [])
        engine = checked_engine(tokenizer_args, engine, first)
        for texts, encoded in _encoded(itertools.chain([first], chunks), tokenizer_args, engine, workers):
            nbytes = ntokens = 0
            for j, (text, ids) in enumerate(zip(texts, encoded)):
                if not text:
                    continue  # an empty document adds nothing but an EOD; skip it as GPT-NeoX does
                key = jsonl_keys[j % len(jsonl_keys)]
                if append_eod:
                    ids = np.append(ids, np.int32(tokenizer.eod))
                builders[key].add_document(ids)
                counts[key] += 1
                nbytes += len(text.encode("utf-8"))
                ntokens += len(ids)
            progress.update(len(texts) // len(jsonl_keys), nbytes, ntokens)
        empty = [k for k in jsonl_keys if counts[k] == 0]
        if empty:
            raise UserError(f"no non-empty documents for key(s) {empty} in input {','.join(inputs)}")
        for b in builders.values():
            b.finalize()
    except BaseException:
        for b in builders.values():
            b.abort()
        raise
    finally:
        progress.close()
    seconds = time.time() - progress.start
    return {"documents": counts, "tokens": progress.tokens, "bytes": progress.bytes, "seconds": seconds,
            "prefixes": prefixes, "rates": progress.rates(), "engine": engine}
