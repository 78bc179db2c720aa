"""GPT training samples: seq_length+1 token windows over a shuffled, multi-epoch stream of a split's documents."""

import math
import os
from typing import List, Optional, Tuple

import numpy as np

from megatron_lite.data.indexed_dataset import IndexedDataset
from megatron_lite.errors import UserError, warn_once
from megatron_lite.files import atomic_write

SPLIT_NAMES = ("train", "valid", "test")


def parse_split(split: str) -> List[float]:
    """'949,50,1' (or '949/50/1', fewer parts = zeros) -> three proportions summing to 1."""
    try:
        parts = [float(p) for p in str(split).replace("/", ",").split(",")]
    except ValueError:
        parts = None
    if not parts or len(parts) > 3 or any(not math.isfinite(p) or p < 0 for p in parts) or sum(parts) <= 0:
        raise UserError(f"split '{split}' is not valid: expected up to 3 non-negative numbers like '949,50,1'")
    parts += [0.0] * (3 - len(parts))
    return [p / sum(parts) for p in parts]


def split_ranges(split: str, num_docs: int) -> List[Tuple[int, int]]:
    """[start, end) document ranges of train, valid, test, in document order."""
    bounds = [0] + [int(round(c * num_docs)) for c in np.cumsum(parse_split(split))]
    bounds[-1] = num_docs
    return [(bounds[i], bounds[i + 1]) for i in range(3)]


def _num_epochs(tokens_per_epoch: int, seq_length: int, num_samples: int) -> int:
    # Sample k needs tokens [k*seq, (k+1)*seq] inclusive, so n samples need n*seq + 1 tokens.
    return max(1, -(-(num_samples * seq_length + 1) // tokens_per_epoch))


def build_indices(sizes: np.ndarray, documents: np.ndarray, seq_length: int, num_samples: int, seed: int):
    """(doc_idx, sample_idx, shuffle_idx) with numpy only; sample k spans stream tokens [k*seq, (k+1)*seq]."""
    tokens_per_epoch = int(sizes[documents].sum())
    num_epochs = _num_epochs(tokens_per_epoch, seq_length, num_samples)
    rng = np.random.RandomState(seed)
    # A fresh permutation of the documents per epoch: each is seen once before any is seen twice.
    doc_idx = np.concatenate([rng.permutation(documents) for _ in range(num_epochs)]).astype(np.int64)
    ends = np.cumsum(sizes[doc_idx].astype(np.int64))
    starts_of_docs = np.concatenate([[0], ends])
    n = int((starts_of_docs[-1] - 1) // seq_length)
    first_token = np.arange(n + 1, dtype=np.int64) * seq_length
    # side="right" skips empty documents: a position lands in the document that holds it.
    position = np.searchsorted(starts_of_docs, first_token, side="right") - 1
    sample_idx = np.stack([position, first_token - starts_of_docs[position]], axis=1).astype(np.int64)
    # Shuffle samples within their epoch, so the order keeps "whole epochs first".
    epoch = first_token[:n] // tokens_per_epoch
    shuffle_idx = np.lexsort((rng.random_sample(n), epoch)).astype(np.int64)
    return doc_idx, sample_idx, shuffle_idx


def _cache_paths(prefix: str, name: str, num_samples: int, seq_length: int, seed: int) -> List[str]:
    stem = f"{prefix}_{name}_indexmap_{num_samples}ns_{seq_length}sl_{seed}s"
    return [f"{stem}_{kind}_idx.npy" for kind in ("doc", "sample", "shuffle")]


def _load_cached(paths, documents: np.ndarray, num_epochs: int, num_tokens: int, seq_length: int):
    """The cached arrays if they exist and fit this split (a changed split or dataset means rebuild), else None."""
    if not all(os.path.isfile(p) for p in paths):
        return None
    try:
        doc_idx, sample_idx, shuffle_idx = (np.load(p, mmap_mode="r", allow_pickle=False) for p in paths)
    except (OSError, ValueError):
        return None
    n = (num_tokens - 1) // seq_length
    ok = (doc_idx.shape == (num_epochs * len(documents),) and sample_idx.shape == (n + 1, 2)
          and shuffle_idx.shape == (n,) and int(doc_idx.min()) == int(documents[0])
          and int(doc_idx.max()) == int(documents[-1]))
    return (doc_idx, sample_idx, shuffle_idx) if ok else None


def _save_cached(paths, arrays) -> None:
    for path, arr in zip(paths, arrays):
        def write(tmp, arr=arr):
            with open(tmp, "wb") as f:
                np.save(f, arr, allow_pickle=False)

        atomic_write(path, write)


class GPTDataset:
    """`ds[i]["text"]`: np.int64[seq_length + 1], a window of the split's shuffled token stream."""

    def __init__(self, name: str, prefix: str, indexed: IndexedDataset, documents: np.ndarray,
                 seq_length: int, num_samples: int, seed: int):
        self.name, self.indexed, self.seq_length, self.documents = name, indexed, seq_length, documents
        sizes = indexed.sizes
        num_tokens_epoch = int(sizes[documents].astype(np.int64).sum())
        if num_tokens_epoch < seq_length + 1:
            raise UserError(
                f"the {name} split of {prefix} holds {num_tokens_epoch} tokens in {len(documents)} documents, "
                f"fewer than seq-length + 1 = {seq_length + 1}: the data is too small for seq-length {seq_length}")
        num_epochs = _num_epochs(num_tokens_epoch, seq_length, num_samples)
        paths = _cache_paths(prefix, name, num_samples, seq_length, seed)
        cached = _load_cached(paths, documents, num_epochs, num_epochs * num_tokens_epoch, seq_length)
        if cached is None:
            cached = build_indices(sizes, documents, seq_length, num_samples, seed)
            cache_dir = os.path.dirname(os.path.abspath(prefix))
            try:
                if not os.access(cache_dir, os.W_OK):
                    raise PermissionError(13, "not writable")
                _save_cached(paths, cached)
            except OSError as e:
                warn_once(f"cannot cache the {name} index maps in {cache_dir} ({e.strerror}); keeping them in memory")
        self.doc_idx, self.sample_idx, self.shuffle_idx = cached
        self.num_epochs, self.cache_paths = num_epochs, paths
        self.num_tokens_epoch = num_tokens_epoch

    def __len__(self) -> int:
        return len(self.shuffle_idx)

    def split_size(self) -> tuple:
        """(documents, tokens) of the split, one epoch."""
        return len(self.documents), self.num_tokens_epoch

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(f"sample {i} out of range for {len(self)} samples")
        k = int(self.shuffle_idx[i])
        (d0, o0), (d1, o1) = self.sample_idx[k], self.sample_idx[k + 1]
        d0, o0, d1, o1 = int(d0), int(o0), int(d1), int(o1)
        get = self.indexed.get
        if d0 == d1:
            parts = [get(int(self.doc_idx[d0]), o0, o1 - o0 + 1)]
        else:  # the window runs across document boundaries, as Megatron's does
            parts = [get(int(self.doc_idx[d0]), o0)]
            parts += [get(int(self.doc_idx[d])) for d in range(d0 + 1, d1)]
            parts.append(get(int(self.doc_idx[d1]), 0, o1 + 1))
        return {"text": np.concatenate(parts).astype(np.int64)}


def build_train_valid_test_datasets(data_prefix: str, split: str, seq_length: int,
                                    num_samples: Tuple[int, int, int], seed: int
                                    ) -> Tuple[Optional[GPTDataset], Optional[GPTDataset], Optional[GPTDataset]]:
    """Split the documents in order by `split`; a split with no documents or no samples wanted is None."""
    if seq_length < 1:
        raise UserError(f"seq-length must be positive, got {seq_length}")
    if len(num_samples) != 3 or any(int(n) < 0 for n in num_samples):
        raise ValueError(f"num_samples must be three non-negative counts, got {num_samples}")
    parse_split(split)  # validate the split string before touching the data
    indexed = IndexedDataset(data_prefix)
    ranges = split_ranges(split, len(indexed))
    out = []
    for name, (start, end), n in zip(SPLIT_NAMES, ranges, num_samples):
        if end <= start or int(n) == 0:
            out.append(None)
            continue
        documents = np.arange(start, end, dtype=np.int64)
        out.append(GPTDataset(name, data_prefix, indexed, documents, seq_length, int(n), seed))
    return tuple(out)
