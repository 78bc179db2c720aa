"""Our .bin/.idx and megatron-core's IndexedDataset read each other's files; both builders write the same bytes."""

import warnings

import numpy as np
import pytest
import torch

from megatron_lite.data.gpt_dataset import build_train_valid_test_datasets
from megatron_lite.data.indexed_dataset import IndexedDataset, IndexedDatasetBuilder
from megatron_lite.errors import UserError

with warnings.catch_warnings():  # megatron.core warns that Apex / Transformer Engine are absent
    warnings.simplefilter("ignore")
    from megatron.core.datasets import indexed_dataset as mcore


def test_megatron_core_reads_our_preprocessed_corpus(small_corpus):
    ours = IndexedDataset(small_corpus["prefix"])
    theirs = mcore.IndexedDataset(small_corpus["prefix"])
    assert theirs.index.dtype == np.uint16 == ours.dtype
    assert len(theirs) == len(ours) > 20
    assert np.array_equal(theirs.document_indices, ours.doc_idx)
    assert np.array_equal(theirs.sequence_lengths, ours.sizes)
    for i in range(len(ours)):
        assert np.array_equal(theirs[i], ours[i])
    assert np.array_equal(theirs.get(3, offset=2, length=5), ours.get(3, 2, 5))


@pytest.mark.parametrize("dtype", [np.uint16, np.int32])
def test_both_builders_write_identical_files_and_read_each_other(tmp_path, dtype):
    rng = np.random.RandomState(0)
    high = 65_000 if dtype == np.uint16 else 200_000  # int32: the vocabulary-above-65500 layout
    # Documents of one or several sequences (Megatron's sentence split), one of them empty.
    docs = [[rng.randint(0, high, size=rng.randint(0, 40)) for _ in range(rng.randint(1, 4))] for _ in range(30)]
    ours = IndexedDatasetBuilder(str(tmp_path / "ours"), dtype)
    theirs = mcore.IndexedDatasetBuilder(str(tmp_path / "theirs.bin"), dtype=dtype)
    for doc in docs:
        for seq in doc:
            ours.add_item(seq)
            theirs.add_item(torch.from_numpy(seq))
        ours.end_document()
        theirs.end_document()
    ours.finalize()
    theirs.finalize(str(tmp_path / "theirs.idx"))
    for ext in (".bin", ".idx"):
        assert open(tmp_path / f"ours{ext}", "rb").read() == open(tmp_path / f"theirs{ext}", "rb").read()
    flat = [seq for doc in docs for seq in doc]
    read_ours = IndexedDataset(str(tmp_path / "theirs"))
    read_theirs = mcore.IndexedDataset(str(tmp_path / "ours"))
    assert read_ours.dtype == dtype and len(read_ours) == len(read_theirs) == len(flat)
    for i, seq in enumerate(flat):
        assert read_ours[i].tolist() == read_theirs[i].tolist() == seq.tolist()


def test_training_samples_from_a_megatron_core_dataset(tmp_path):
    builder = mcore.IndexedDatasetBuilder(str(tmp_path / "m.bin"), dtype=np.uint16)
    stream = np.arange(2000) % 1000
    for start in range(0, 2000, 100):
        builder.add_document(stream[start:start + 100].tolist(), [100])
    builder.finalize(str(tmp_path / "m.idx"))
    train, _, _ = build_train_valid_test_datasets(str(tmp_path / "m"), "1,0,0", 16, (10, 0, 0), 1)
    assert len(train) >= 10  # a whole epoch of windows
    for i in range(len(train)):
        window = train[i]["text"]
        # Documents are 100 consecutive values, so a 17-token window crosses at most one document boundary.
        assert window.shape == (17,) and np.count_nonzero(np.diff(window) % 1000 != 1) <= 1


def test_truncated_index_is_a_clear_error(tmp_path):
    builder = IndexedDatasetBuilder(str(tmp_path / "t"), np.uint16)
    builder.add_document([1, 2, 3])
    builder.finalize()
    raw = open(tmp_path / "t.idx", "rb").read()
    open(tmp_path / "t.idx", "wb").write(raw[:-5])
    with pytest.raises(UserError, match=r"t\.idx is truncated or corrupt"):
        IndexedDataset(str(tmp_path / "t"))
