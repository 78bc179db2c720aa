"""Tokenize documents (jsonl records, source files) in parallel into `{prefix}_{key}_document.{bin,idx}`."""

import itertools
import os
import sys
import time
from collections import Counter, deque
from typing import Callable, Dict, Iterator, List, Optional, Sequence

import numpy as np

from megatron_lite.data.corpus import check_inputs, iter_documents
from megatron_lite.data.fast_bpe import encoder_for
from megatron_lite.data.indexed_dataset import IndexedDatasetBuilder, best_dtype
from megatron_lite.data.tokenizer import build_tokenizer
from megatron_lite.data.transforms import FIM_TOKENS, TEXT_TRANSFORMS, Segment, check_fim, fim_segments
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
        fast, reason = encoder_for(tokenizer.hf) if tokenizer.hf is not None else (None, "it is sentencepiece")
        if fast is not None:
            return (lambda texts: [fast(t) for t in texts]), "tiktoken"
        if engine == "tiktoken":
            raise UserError(f"tokenizer-engine 'tiktoken' cannot encode vocab-file '{tokenizer_args[1]}': {reason}")
    # One encode per document: with the Rust thread pool off in workers, encode_batch is slower than a loop.
    return (lambda texts: [tokenizer.encode(t) for t in texts]), ("hf" if tokenizer.hf is not None else "sentencepiece")


def _init_worker(tokenizer_args, engine):
    global _worker_encode
    _worker_encode, _ = make_encoder(tokenizer_args, engine)


def _encode_chunk(texts: List[str]) -> List[np.ndarray]:
    # int32 arrays pickle far smaller than lists of Python ints on the way back from a worker.
    return [np.asarray(ids, dtype=np.int32) for ids in _worker_encode(texts)]


def _items(docs: Iterator[Dict[str, str]], keys: Sequence[str], transform: Callable[[str], List[str]]):
    """(key, text) of every non-empty text after the text transform (which may make 0, 1 or more of one)."""
    for doc in docs:
        for k in keys:
            for text in transform(doc[k]):
                if text:  # an empty document adds nothing but an EOD; skip it as GPT-NeoX does
                    yield k, text


def _chunks(items, fim: Optional[Callable[[str], List[Segment]]]):
    """(layout, texts) of up to CHUNK_DOCS items / about CHUNK_BYTES: layout is [(key, segments)], texts the
    segments to encode, in order (a segment is a text, or a token id such as a FIM sentinel)."""
    layout, texts, size = [], [], 0
    for key, text in items:
        segments = fim(text) if fim else [text]
        layout.append((key, segments))
        texts.extend(s for s in segments if isinstance(s, str))
        size += len(text)
        if len(layout) >= CHUNK_DOCS or size >= CHUNK_BYTES:
            yield layout, texts
            layout, texts, size = [], [], 0
    if layout:
        yield layout, texts


def _encoded(chunks, tokenizer_args, engine: str, workers: int):
    """(layout, token arrays) per chunk, in input order; at most 2 x workers chunks in flight: memory stays flat."""
    if workers == 1:
        _init_worker(tokenizer_args, engine)
        for layout, texts in chunks:
            yield layout, _encode_chunk(texts)
        return
    import multiprocessing as mp

    # Workers encode one chunk each; the Rust thread pool inside each would only oversubscribe the cores.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
    pool = ctx.Pool(workers, initializer=_init_worker, initargs=(tokenizer_args, engine))
    try:
        pending = deque()
        for layout, texts in chunks:
            pending.append((layout, pool.apply_async(_encode_chunk, (texts,))))
            if len(pending) >= 2 * workers:
                layout, result = pending.popleft()
                yield layout, result.get()
        while pending:
            layout, result = pending.popleft()
            yield layout, result.get()
        pool.close()
    finally:
        pool.terminate()
        pool.join()


def _assemble(segments: List[Segment], encoded: Iterator[np.ndarray]) -> np.ndarray:
    """One document's tokens: encoded texts and literal ids in segment order."""
    parts = [next(encoded) if isinstance(s, str) else np.array([s], np.int32) for s in segments]
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


class _Progress:
    """A tqdm bar over input bytes (ETA when the input size is known: plain files), with documents/s and MB/s;
    without a terminal, one stdout line per log_interval documents (stderr stays for errors)."""

    def __init__(self, log_interval: int, total_bytes: Optional[int]):
        from tqdm import tqdm

        self.bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc="encode", disable=None, file=sys.stderr)
        self.interval, self.start, self.total = max(1, log_interval), time.time(), total_bytes
        self.docs = self.bytes = self.tokens = 0

    def rates(self) -> str:
        dt = max(time.time() - self.start, 1e-9)
        return f"{self.docs / dt:.1f} docs/s, {self.bytes / dt / 1e6:.2f} MB/s"

    def eta(self) -> str:
        if not self.total or not self.bytes:
            return ""
        left = max(self.total - self.bytes, 0) * (time.time() - self.start) / self.bytes
        return f", ETA {int(left) // 60}:{int(left) % 60:02d}"

    def update(self, docs: int, nbytes: int, tokens: int):
        crossed = (self.docs + docs) // self.interval > self.docs // self.interval
        self.docs, self.bytes, self.tokens = self.docs + docs, self.bytes + nbytes, self.tokens + tokens
        if self.bar.disable:
            if crossed:
                print(f"processed {self.docs} documents ({self.rates()}{self.eta()})", flush=True)
        else:
            self.bar.update(min(nbytes, max(self.bar.total - self.bar.n, 0)) if self.bar.total else nbytes)
            if crossed:
                self.bar.set_postfix_str(f"{self.docs / max(time.time() - self.start, 1e-9):.1f} docs/s")

    def close(self, complete: bool = False):
        if complete and self.bar.total:  # text bytes undercount the file (JSON escapes): the input is all read
            self.bar.update(self.bar.total - self.bar.n)
        self.bar.close()


def _input_bytes(inputs: Sequence[str]) -> Optional[int]:
    """Total size of the inputs when they are all plain files (a compressed or directory size says little)."""
    if all(os.path.isfile(p) and p.endswith(".jsonl") for p in inputs):
        return sum(os.path.getsize(p) for p in inputs)
    return None


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


def _fim(tokenizer, vocab_file, rate: float, spm_rate: float, seed: int):
    """The FIM segmenter (None when rate is 0): the same draws whatever the worker count, as it runs here."""
    ids = {t: tokenizer.special_id(t) for t in FIM_TOKENS}
    check_fim(rate, spm_rate, ids, vocab_file)
    if rate == 0:
        return None
    rng = np.random.RandomState(seed)
    return lambda text: fim_segments(text, rng, spm_rate, ids) if rng.random_sample() < rate else [text]


def preprocess(inputs: Sequence[str], output_prefix: str, tokenizer_type: str, vocab_file: Optional[str],
               merge_file: Optional[str] = None, jsonl_keys: Sequence[str] = ("text",), append_eod: bool = False,
               workers: int = 1, log_interval: int = 100, engine: str = "auto", transform: str = "none",
               fim_rate: float = 0.0, fim_spm_rate: float = 0.5, seed: int = 1234) -> dict:
    """Encode every non-empty document; returns counts and the written prefixes. Nothing is left on failure."""
    check_inputs(inputs)
    if workers < 1:
        raise UserError(f"workers must be at least 1, got {workers}")
    if not jsonl_keys:
        raise UserError("jsonl-keys is empty: name at least one key (default: text)")
    if transform not in TEXT_TRANSFORMS:
        raise UserError(f"transform '{transform}' is unknown; valid: {', '.join(TEXT_TRANSFORMS)}")
    tokenizer_args = (tokenizer_type, vocab_file, merge_file)
    tokenizer = build_tokenizer(*tokenizer_args)
    fim = _fim(tokenizer, vocab_file, fim_rate, fim_spm_rate, seed)
    out_dir = os.path.dirname(os.path.abspath(output_prefix))
    os.makedirs(out_dir, exist_ok=True)
    prefixes = {k: output_prefix_for(output_prefix, k) for k in jsonl_keys}
    builders = {}
    progress = _Progress(log_interval, _input_bytes(inputs))
    counts = {k: 0 for k in jsonl_keys}
    try:
        for k in jsonl_keys:
            builders[k] = IndexedDatasetBuilder(prefixes[k], best_dtype(tokenizer.vocab_size))
        skipped, languages = Counter(), Counter()
        items = _items(iter_documents(inputs, jsonl_keys, skipped=skipped, languages=languages), jsonl_keys,
                       TEXT_TRANSFORMS[transform])
        chunks = _chunks(items, fim)
        first = next(chunks, ([], []))
        engine = checked_engine(tokenizer_args, engine, first[1])
        for layout, encoded in _encoded(itertools.chain([first], chunks), tokenizer_args, engine, workers):
            nbytes = ntokens = 0
            arrays = iter(encoded)
            for key, segments in layout:
                ids = _assemble(segments, arrays)
                if append_eod:
                    ids = np.append(ids, np.int32(tokenizer.eod))
                builders[key].add_document(ids)
                counts[key] += 1
                nbytes += sum(len(s.encode("utf-8")) for s in segments if isinstance(s, str))
                ntokens += len(ids)
            progress.update(len(layout), nbytes, ntokens)
        empty = [k for k in jsonl_keys if counts[k] == 0]
        if empty:
            raise UserError(f"no non-empty documents for key(s) {empty} in input {','.join(inputs)}"
                            + (f" after transform '{transform}'" if transform != "none" else ""))
        for b in builders.values():
            b.finalize()
        progress.close(complete=True)
    except BaseException:
        for b in builders.values():
            b.abort()
        raise
    finally:
        progress.close()
    seconds = time.time() - progress.start
    return {"documents": counts, "tokens": progress.tokens, "bytes": progress.bytes, "seconds": seconds,
            "prefixes": prefixes, "rates": progress.rates(), "engine": engine, "skipped": dict(skipped),
            "languages": dict(languages.most_common())}
