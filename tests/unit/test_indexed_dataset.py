"""MMIDIDX .bin/.idx: round trip, the exact header layout, dtype choice, merge, and user errors."""

import os
import struct

import numpy as np
import pytest

from megatron_lite.data.indexed_dataset import (
    IndexedDataset, IndexedDatasetBuilder, best_dtype, data_file_path, index_file_path)
from megatron_lite.errors import UserError


def write(prefix, documents, dtype=np.uint16):
    """documents: list of documents, each a list of sequences."""
    builder = IndexedDatasetBuilder(str(prefix), dtype)
    for doc in documents:
        for seq in doc:
            builder.add_item(seq)
        builder.end_document()
    builder.finalize()
    return str(prefix)


def random_documents(rng, n_docs, vocab=1000):
    return [[rng.integers(0, vocab, rng.integers(0, 20)).tolist() for _ in range(rng.integers(1, 4))]
            for _ in range(n_docs)]


def test_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    docs = random_documents(rng, 30)
    ds = IndexedDataset(write(tmp_path / "d", docs))
    seqs = [s for d in docs for s in d]
    assert len(ds) == len(seqs)
    assert ds.dtype == np.uint16
    for i, s in enumerate(seqs):
        assert ds[i].tolist() == s
    assert ds[-1].tolist() == seqs[-1]
    assert [a.tolist() for a in ds[2:5]] == seqs[2:5]
    assert ds.sizes.tolist() == [len(s) for s in seqs]
    assert ds.doc_idx.tolist() == [0] + np.cumsum([len(d) for d in docs]).tolist()
    longest = int(np.argmax(ds.sizes))
    assert ds.get(longest, offset=2, length=3).tolist() == seqs[longest][2:5]
    assert ds.get(longest, offset=1).tolist() == seqs[longest][1:]
    with pytest.raises(IndexError):
        ds[len(seqs)]


def test_header_bytes_field_by_field(tmp_path):
    prefix = write(tmp_path / "h", [[[1, 2, 3]], [[4], [5, 6]]])
    raw = open(index_file_path(prefix), "rb").read()
    assert raw[0:9] == b"MMIDIDX\x00\x00"
    assert struct.unpack("<Q", raw[9:17]) == (1,)  # version
    assert raw[17] == 8  # dtype code of uint16
    assert struct.unpack("<Q", raw[18:26]) == (3,)  # number of sequences
    assert struct.unpack("<Q", raw[26:34]) == (3,)  # len(doc_idx): [0, 1, 3]
    assert struct.unpack("<3i", raw[34:46]) == (3, 1, 2)  # sizes, int32
    assert struct.unpack("<3q", raw[46:70]) == (0, 6, 8)  # pointers: byte offsets into .bin
    assert struct.unpack("<3q", raw[70:94]) == (0, 1, 3)  # doc_idx
    assert len(raw) == 94
    assert open(data_file_path(prefix), "rb").read() == struct.pack("<6H", 1, 2, 3, 4, 5, 6)


def test_dtype_choice_and_int32_layout(tmp_path):
    assert best_dtype(50257) == np.uint16
    assert best_dtype(65499) == np.uint16
    assert best_dtype(65500) == np.int32
    assert best_dtype(None) == np.int32
    prefix = write(tmp_path / "w", [[[70000, 1]], [[2]]], dtype=best_dtype(100000))
    raw = open(index_file_path(prefix), "rb").read()
    assert raw[17] == 4  # int32
    assert struct.unpack("<2q", raw[18 + 16 + 8:18 + 16 + 8 + 16]) == (0, 8)  # 4-byte tokens
    ds = IndexedDataset(prefix)
    assert ds.dtype == np.int32 and ds[0].tolist() == [70000, 1]
    with pytest.raises(ValueError):
        IndexedDatasetBuilder(str(tmp_path / "x"), np.uint16).add_item([70000])


def test_merge(tmp_path):
    rng = np.random.default_rng(1)
    a_docs, b_docs = random_documents(rng, 5), random_documents(rng, 7)
    a, b = write(tmp_path / "a", a_docs), write(tmp_path / "b", b_docs)
    both = write(tmp_path / "both", a_docs + b_docs)
    builder = IndexedDatasetBuilder(str(tmp_path / "m"), np.uint16)
    builder.merge_file_(a)
    builder.merge_file_(b)
    builder.finalize()
    for ext in (".bin", ".idx"):
        assert open(str(tmp_path / "m") + ext, "rb").read() == open(both + ext, "rb").read()
    with pytest.raises(UserError, match="dtype"):
        IndexedDatasetBuilder(str(tmp_path / "n"), np.int32).merge_file_(a)


def test_nothing_final_until_finalize_and_abort_cleans_up(tmp_path):
    builder = IndexedDatasetBuilder(str(tmp_path / "p"), np.uint16)
    builder.add_document([1, 2])
    assert not any(name.endswith((".bin", ".idx")) for name in os.listdir(tmp_path))
    builder.abort()
    assert os.listdir(tmp_path) == []


def test_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        IndexedDataset(str(tmp_path / "missing"))
    prefix = write(tmp_path / "ok", [[[1, 2]]])
    os.remove(data_file_path(prefix))
    with pytest.raises(UserError, match=r"ok\.bin does not exist"):
        IndexedDataset(prefix)
    prefix = write(tmp_path / "bad", [[[1, 2]]])
    raw = bytearray(open(index_file_path(prefix), "rb").read())
    raw[0:7] = b"TNTIDX\x00"
    open(index_file_path(prefix), "wb").write(raw)
    with pytest.raises(UserError, match="magic"):
        IndexedDataset(prefix)
    prefix = write(tmp_path / "short", [[[1, 2, 3]]])
    open(data_file_path(prefix), "wb").write(b"\x01\x00")
    with pytest.raises(UserError, match="truncated"):
        IndexedDataset(prefix)


def test_empty_dataset_and_pickle(tmp_path):
    import pickle

    ds = IndexedDataset(write(tmp_path / "e", []))
    assert len(ds) == 0 and ds.doc_idx.tolist() == [0]
    ds = IndexedDataset(write(tmp_path / "f", [[[5, 6, 7]]]))
    assert pickle.loads(pickle.dumps(ds))[0].tolist() == [5, 6, 7]
