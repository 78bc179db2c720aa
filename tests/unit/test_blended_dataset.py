"""Blending (train/valid/test-data-paths with weights), merge_datasets, and training on a blend."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from megatron_lite.config import DataConfig
from megatron_lite.data.blended_dataset import (BlendedDataset, blending_indices, datasets_from_config,
                                                weights_by_num_documents)
from megatron_lite.data.indexed_dataset import IndexedDataset, IndexedDatasetBuilder
from megatron_lite.errors import UserError
from tests.conftest import REPO, run_tool


def make(prefix, value, docs=20, length=50):
    """A dataset whose every token is `value`, so a sample tells which dataset it came from."""
    b = IndexedDatasetBuilder(str(prefix), np.uint16)
    for _ in range(docs):
        b.add_document(np.full(length, value))
    b.finalize()
    return str(prefix)


def test_weights_by_num_documents_matches_gpt_neox_formula():
    w = weights_by_num_documents([100, 10, 1], alpha=0.3)
    p = np.array([100, 10, 1]) / 111
    q = p ** 0.3 / (p ** 0.3).sum()
    expect = q * (1 - p) / (q * (1 - p)).sum()
    assert np.allclose(w, expect) and abs(sum(w) - 1) < 1e-12
    assert w[2] > 1 / 111 and w[0] < 100 / 111  # the small dataset is up-sampled, the large one down
    assert weights_by_num_documents([5], 0.3) == [1.0]


def test_blending_indices_follow_the_weights_at_every_prefix():
    weights = [0.5, 0.3, 0.2]
    dataset, sample = blending_indices(weights, 1000)
    assert len(dataset) == 1000
    for n in (10, 100, 555, 1000):
        counts = np.bincount(dataset[:n], minlength=3)
        assert np.all(np.abs(counts - np.array(weights) * n) <= 1.0), (n, counts)
    for d in range(3):  # each dataset's samples are taken in order 0, 1, 2, ...
        assert np.array_equal(sample[dataset == d], np.arange(np.count_nonzero(dataset == d)))
    zero, _ = blending_indices([0.0, 1.0], 50)
    assert set(zero.tolist()) == {1}


def test_datasets_from_config_blends_each_split(tmp_path):
    a, b, c = make(tmp_path / "a", 1), make(tmp_path / "b", 2, docs=5), make(tmp_path / "c", 3)
    data = DataConfig(train_data_paths=[a, b], train_data_weights=[3, 1], valid_data_paths=[c])
    train, valid, test = datasets_from_config(data, 16, (400, 40, 0), seed=7)
    assert isinstance(train, BlendedDataset) and len(train) == 400 and len(valid) == 40 and test is None
    sources = np.array([int(train[i]["text"][0]) for i in range(400)])
    assert np.count_nonzero(sources == 1) == 300 and np.count_nonzero(sources == 2) == 100
    assert all(train[i]["text"].shape == (17,) for i in range(0, 400, 37))
    assert {int(valid[i]["text"][0]) for i in range(40)} == {3}
    by_docs = DataConfig(train_data_paths=[a, b], weight_by_num_documents=True)
    train, _, _ = datasets_from_config(by_docs, 16, (100, 0, 0), seed=7)
    assert train.weights == pytest.approx(weights_by_num_documents([20, 5], 0.3))


@pytest.mark.parametrize("change, message", [
    ({"data_path": "x"}, "set either 'data-path'"),
    ({"train_data_weights": [1.0]}, "train-data-weights has 1 entries but train-data-paths has 2"),
    ({"train_data_weights": [1.0, -1.0]}, "must be non-negative numbers"),
    ({"weight_by_num_documents": True, "weighted_sampler_alpha": 2.0}, "weighted-sampler-alpha must be in"),
    ({"train_data_paths": []}, "no training data"),
])
def test_blend_config_errors(tmp_path, change, message):
    paths = [make(tmp_path / "a", 1), make(tmp_path / "b", 2)]
    fields = {"train_data_paths": paths, **change}
    with pytest.raises(UserError, match=message):
        datasets_from_config(DataConfig(**fields), 16, (10, 0, 0), seed=1)


def test_merge_datasets_tool(tmp_path):
    (tmp_path / "in").mkdir()
    make(tmp_path / "in" / "a", 1, docs=3)
    make(tmp_path / "in" / "b", 2, docs=4, length=7)
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", "merge_datasets.py"), "--input",
                           str(tmp_path / "in"), "--output-prefix", str(tmp_path / "m")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    merged = IndexedDataset(str(tmp_path / "m"))
    assert merged.doc_idx.tolist() == list(range(8)) and merged.sizes.tolist() == [50] * 3 + [7] * 4
    assert [int(merged[i][0]) for i in range(7)] == [1, 1, 1, 2, 2, 2, 2]
    IndexedDatasetBuilder(str(tmp_path / "in" / "c"), np.int32).finalize()
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", "merge_datasets.py"), "--input",
                           str(tmp_path / "in"), "--output-prefix", str(tmp_path / "n")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "different token dtypes" in proc.stderr and not os.path.exists(tmp_path / "n.bin")


def test_training_runs_on_a_blend(tmp_path, micro_config, small_corpus):
    text = open(micro_config).read().replace(f"data-path: {small_corpus['prefix']}",
                                             f"train-data-paths: [{small_corpus['prefix']}, {small_corpus['prefix']}]\n"
                                             f"train-data-weights: [2, 1]\nvalid-data-paths: [{small_corpus['prefix']}]")
    config = tmp_path / "blend.yml"
    config.write_text(text)
    run_tool("deepy.py", "train.py", str(config), "--train-iters", "4", "--eval-interval", "2", "--log-interval", "1")
    log = [json.loads(line) for line in open(tmp_path / "logs" / "metrics.jsonl")]
    assert [r["iteration"] for r in log if "loss" in r][-1] == 4
    assert any("val_loss" in r for r in log)
