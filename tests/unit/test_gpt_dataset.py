"""GPTDataset: windows of the token stream, determinism, cached index maps, splits, epochs, errors."""

import os
import time

import numpy as np
import pytest

import megatron_lite.data.gpt_dataset as gd
from megatron_lite.data.gpt_dataset import build_train_valid_test_datasets, split_ranges
from megatron_lite.data.indexed_dataset import IndexedDatasetBuilder
from megatron_lite.errors import UserError


def make_data(path, n_docs=50, seed=0, max_len=40):
    """Documents of random lengths (some empty); returns (prefix, list of token lists)."""
    rng = np.random.default_rng(seed)
    docs = [rng.integers(0, 5000, rng.integers(0, max_len)).tolist() for _ in range(n_docs)]
    builder = IndexedDatasetBuilder(str(path), np.uint16)
    for d in docs:
        builder.add_document(d)
    builder.finalize()
    return str(path), docs


def reference_windows(ds, docs, seq_length):
    """Plain python: concatenate documents in the dataset's order and cut overlapping windows."""
    stream = [t for d in ds.doc_idx for t in docs[int(d)]]
    n = (len(stream) - 1) // seq_length
    return [stream[k * seq_length: k * seq_length + seq_length + 1] for k in range(n)]


def test_samples_are_contiguous_windows_of_the_stream(tmp_path):
    prefix, docs = make_data(tmp_path / "d")
    train, valid, test = build_train_valid_test_datasets(prefix, "1", 16, (30, 0, 0), seed=5)
    assert valid is None and test is None
    windows = reference_windows(train, docs, 16)
    assert len(train) == len(windows) >= 30
    assert sorted(train.shuffle_idx.tolist()) == list(range(len(train)))
    for i in range(len(train)):
        sample = train[i]["text"]
        assert sample.dtype == np.int64 and sample.shape == (17,)
        assert sample.tolist() == windows[int(train.shuffle_idx[i])]
    with pytest.raises(IndexError):
        train[len(train)]


def test_deterministic_and_seed_dependent(tmp_path):
    builds = []
    for sub, seed in (("a", 1), ("b", 1), ("c", 2)):
        os.makedirs(tmp_path / sub)
        prefix, _ = make_data(tmp_path / sub / "d")
        train = build_train_valid_test_datasets(prefix, "1", 8, (40, 0, 0), seed)[0]
        builds.append(np.stack([train[i]["text"] for i in range(len(train))]))
    assert np.array_equal(builds[0], builds[1])
    assert not np.array_equal(builds[0], builds[2])


def test_index_maps_are_cached_and_reused(tmp_path, monkeypatch):
    prefix, _ = make_data(tmp_path / "d")
    first = build_train_valid_test_datasets(prefix, "1", 8, (40, 0, 0), 3)[0]
    names = sorted(os.listdir(tmp_path))
    for kind in ("doc", "sample", "shuffle"):
        assert f"d_train_indexmap_40ns_8sl_3s_{kind}_idx.npy" in names
    assert not any(".tmp" in n for n in names)

    def no_rebuild(*args, **kwargs):
        raise AssertionError("index maps were rebuilt instead of loaded")

    monkeypatch.setattr(gd, "build_indices", no_rebuild)
    second = build_train_valid_test_datasets(prefix, "1", 8, (40, 0, 0), 3)[0]
    assert all(np.array_equal(first[i]["text"], second[i]["text"]) for i in range(len(first)))


def test_stale_cache_for_another_split_is_rebuilt(tmp_path):
    prefix, docs = make_data(tmp_path / "d", n_docs=100)
    build_train_valid_test_datasets(prefix, "1", 8, (40, 0, 0), 3)
    train = build_train_valid_test_datasets(prefix, "50,50", 8, (40, 0, 0), 3)[0]
    assert set(train.doc_idx.tolist()) <= set(range(50))
    assert [train[i]["text"].tolist() for i in range(len(train))] == \
        [reference_windows(train, docs, 8)[int(k)] for k in train.shuffle_idx]


def test_unwritable_directory_keeps_maps_in_memory(tmp_path, monkeypatch, capsys):
    prefix, _ = make_data(tmp_path / "d")
    monkeypatch.setattr(gd.os, "access", lambda path, mode: False)
    train = build_train_valid_test_datasets(prefix, "1", 8, (10, 0, 0), 3)[0]
    assert len(train) >= 10 and not any(n.endswith(".npy") for n in os.listdir(tmp_path))
    err = capsys.readouterr().err
    assert "warning:" in err and "in memory" in err and len(err.strip().splitlines()) == 1


def test_split_proportions(tmp_path):
    assert split_ranges("949,50,1", 1000) == [(0, 949), (949, 999), (999, 1000)]
    assert split_ranges("8/1/1", 100) == [(0, 80), (80, 90), (90, 100)]
    assert split_ranges("1", 10) == [(0, 10), (10, 10), (10, 10)]
    prefix, _ = make_data(tmp_path / "d", n_docs=100, max_len=80)
    train, valid, test = build_train_valid_test_datasets(prefix, "80,10,10", 8, (20, 5, 5), 1)
    assert set(train.doc_idx.tolist()) == set(range(80))
    assert set(valid.doc_idx.tolist()) == set(range(80, 90))
    assert set(test.doc_idx.tolist()) == set(range(90, 100))
    assert build_train_valid_test_datasets(prefix, "80,20,0", 8, (20, 5, 5), 1)[2] is None
    assert build_train_valid_test_datasets(prefix, "80,10,10", 8, (20, 0, 5), 1)[1] is None
    for bad in ("", "a,b", "1,2,3,4", "-1,2", "0,0,0", "nan,1"):
        with pytest.raises(UserError, match="split"):
            build_train_valid_test_datasets(prefix, bad, 8, (1, 1, 1), 1)


def test_multiple_epochs(tmp_path):
    prefix, docs = make_data(tmp_path / "d", n_docs=10)
    tokens = sum(map(len, docs))
    train = build_train_valid_test_datasets(prefix, "1", 8, (5 * tokens // 8, 0, 0), 7)[0]
    assert train.num_epochs >= 5 and len(train) >= 5 * tokens // 8
    blocks = train.doc_idx.reshape(train.num_epochs, 10)
    for block in blocks:
        assert sorted(block.tolist()) == list(range(10))
    assert len({tuple(b) for b in blocks.tolist()}) > 1  # a fresh permutation per epoch
    windows = reference_windows(train, docs, 8)
    assert all(train[i]["text"].tolist() == windows[int(train.shuffle_idx[i])] for i in range(len(train)))
    # samples of epoch e are served before those of epoch e+1
    epochs = (train.shuffle_idx * 8) // tokens
    assert np.all(np.diff(epochs) >= 0)


def test_too_small_for_seq_length(tmp_path):
    prefix, docs = make_data(tmp_path / "d", n_docs=3, max_len=10)
    with pytest.raises(UserError, match="too small for seq-length 64"):
        build_train_valid_test_datasets(prefix, "1", 64, (1, 0, 0), 1)
    with pytest.raises(UserError, match="does not exist"):
        build_train_valid_test_datasets(str(tmp_path / "none"), "1", 8, (1, 0, 0), 1)


def test_large_index_build_is_vectorised(tmp_path):
    rng = np.random.default_rng(0)
    builder = IndexedDatasetBuilder(str(tmp_path / "big"), np.uint16)
    for size in rng.integers(1, 64, 100_000):
        builder.add_document(np.zeros(size, np.uint16))
    builder.finalize()
    start = time.time()
    train = build_train_valid_test_datasets(str(tmp_path / "big"), "1", 16, (2_000_000, 0, 0), 1)[0]
    assert len(train) >= 2_000_000
    assert time.time() - start < 10
