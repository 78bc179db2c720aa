"""Blending datasets by weight (GPT-NeoX's train/valid/test-data-paths), and the datasets a data config describes."""

import math
from typing import List, Optional, Sequence, Tuple

import numpy as np

from megatron_lite.data.gpt_dataset import GPTDataset, build_train_valid_test_datasets
from megatron_lite.data.indexed_dataset import IndexedDataset
from megatron_lite.errors import UserError

# Each part gets a little more than its share, so rounding never leaves the blend short (Megatron uses 0.5%).
_MARGIN = 1.005


def weights_by_num_documents(num_documents: Sequence[int], alpha: float) -> List[float]:
    """GPT-NeoX's smoothing (from XLM): p_i^alpha renormalised, times (1 - p_i), renormalised; p_i = share of docs."""
    total = sum(num_documents)
    p = [n / total for n in num_documents]
    smoothed = [x ** alpha for x in p]
    smoothed = [x / sum(smoothed) for x in smoothed]
    weights = [s * (1 - x) for s, x in zip(smoothed, p)]
    if sum(weights) == 0:  # a single dataset: (1 - p) is 0
        return [1.0 / len(p)] * len(p)
    return [w / sum(weights) for w in weights]


def blending_indices(weights: Sequence[float], num_samples: int) -> Tuple[np.ndarray, np.ndarray]:
    """(dataset of sample i, its index within that dataset): each dataset spread evenly through the blend.

    Dataset d's k-th sample is due at time (k + 0.5) / w_d; samples are taken in order of due time, so after any
    prefix of n samples each dataset has contributed within one sample of w_d * n.
    """
    w = np.asarray(weights, dtype=np.float64)
    due, owner, rank = [], [], []
    for d, wd in enumerate(w):
        if wd <= 0:
            continue
        k = np.arange(int(math.ceil(wd * num_samples)) + 1)
        due.append((k + 0.5) / wd)
        owner.append(np.full(k.size, d, dtype=np.int64))
        rank.append(k)
    order = np.argsort(np.concatenate(due), kind="stable")[:num_samples]
    return np.concatenate(owner)[order], np.concatenate(rank)[order].astype(np.int64)


class BlendedDataset:
    """`ds[i]` is sample `sample_index[i]` of dataset `dataset_index[i]`."""

    def __init__(self, datasets: Sequence[GPTDataset], weights: Sequence[float], num_samples: int):
        self.datasets, self.weights = list(datasets), list(weights)
        self.dataset_index, self.sample_index = blending_indices(weights, num_samples)

    def __len__(self) -> int:
        return len(self.dataset_index)

    def split_size(self) -> tuple:
        """(documents, tokens) of the blended datasets, one epoch each."""
        sizes = [d.split_size() for d in self.datasets]
        return sum(docs for docs, _ in sizes), sum(tokens for _, tokens in sizes)

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(f"sample {i} out of range for {len(self)} samples")
        dataset = self.datasets[int(self.dataset_index[i])]
        return dataset[int(self.sample_index[i]) % len(dataset)]


def _weights(data, split: str, paths: List[str]) -> List[float]:
    given = list(getattr(data, f"{split}_data_weights"))
    if data.weight_by_num_documents:
        if not 0 <= data.weighted_sampler_alpha <= 1:
            raise UserError(f"weighted-sampler-alpha must be in [0, 1], got {data.weighted_sampler_alpha}")
        return weights_by_num_documents([len(IndexedDataset(p)) for p in paths],  # sequences, as GPT-NeoX
                                        data.weighted_sampler_alpha)
    if not given:
        return [1.0 / len(paths)] * len(paths)
    if len(given) != len(paths):
        raise UserError(f"{split}-data-weights has {len(given)} entries but {split}-data-paths has {len(paths)}")
    if any(not math.isfinite(x) or x < 0 for x in given) or sum(given) <= 0:
        raise UserError(f"{split}-data-weights {given} must be non-negative numbers with a positive sum")
    return [x / sum(given) for x in given]


def blend(data, split: str, seq_length: int, num_samples: int, seed: int) -> Optional[BlendedDataset]:
    """The blend of `{split}-data-paths`, or None when it lists no paths or no samples are wanted."""
    paths = list(getattr(data, f"{split}_data_paths"))
    if not paths or num_samples == 0:
        return None
    weights = _weights(data, split, paths)
    parts = []
    for i, (path, weight) in enumerate(zip(paths, weights)):
        indexed = IndexedDataset(path)
        wanted = max(1, int(math.ceil(num_samples * weight * _MARGIN)))
        documents = np.arange(len(indexed), dtype=np.int64)  # sequences, as build_train_valid_test_datasets
        if documents.size == 0:
            raise UserError(f"{split}-data-paths entry '{path}' holds no documents")
        # A distinct seed per part, so two copies of one dataset in a blend are not read in lockstep.
        parts.append(GPTDataset(f"{split}{i}", path, indexed, documents, seq_length, wanted, seed + i))
    return BlendedDataset(parts, weights, num_samples)


def datasets_from_config(data, seq_length: int, num_samples: Tuple[int, int, int], seed: int):
    """(train, valid, test) from the data section: `data-path` split by `split`, or blends of `*-data-paths`."""
    blended = data.train_data_paths or data.valid_data_paths or data.test_data_paths
    if data.data_path is not None and blended:
        raise UserError("set either 'data-path' (with 'split') or 'train-data-paths' / 'valid-data-paths' / "
                        "'test-data-paths', not both")
    if data.data_path is not None:
        return build_train_valid_test_datasets(data.data_path, data.split, seq_length, num_samples, seed)
    if not data.train_data_paths:
        raise UserError("no training data: set 'data-path' to a preprocessed PREFIX (PREFIX.bin / PREFIX.idx) "
                        "or 'train-data-paths' to a list of them")
    return tuple(blend(data, split, seq_length, int(n), seed) for split, n in zip(("train", "valid", "test"), num_samples))


def check_token_ids(data, vocab_size: int, tokenizer_file: str) -> None:
    """Every dataset's ids (its first 16M tokens) must be ids of this tokenizer, or the embedding would fail."""
    for path in [data.data_path] if data.data_path else [*data.train_data_paths, *data.valid_data_paths,
                                                          *data.test_data_paths]:
        largest = IndexedDataset(path).max_token_id()
        if largest >= vocab_size:
            raise UserError(f"dataset {path}.bin holds token id {largest}, but the tokenizer '{tokenizer_file}' has "
                            f"{vocab_size} tokens: preprocess the data with this tokenizer (or set 'vocab-file' "
                            f"to the one it was made with)")
