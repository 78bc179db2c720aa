"""Preprocessing at scale: peak memory does not grow with the input; every document round-trips exactly."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from megatron_lite.data.corpus import iter_documents
from megatron_lite.data.indexed_dataset import IndexedDataset
from megatron_lite.data.tokenizer import build_tokenizer, save_tokenizer, train_byte_level_bpe
from tests.conftest import REPO, STDLIB

# Runs the tool in a fresh process and reports the largest RSS of any of its descendants (tool and workers).
_MEASURE = """
import resource, subprocess, sys
proc = subprocess.run(sys.argv[1:], capture_output=True, text=True)
if proc.returncode:
    sys.exit(proc.stderr)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("scale")
    texts = [doc["text"] for package in ("email", "json", "logging") for doc in
             iter_documents([os.path.join(STDLIB, package)])]
    tok = str(root / "tok")
    save_tokenizer(train_byte_level_bpe(texts, 1000), tok)
    # CRLF, tabs and trailing spaces in every copy, which must all come back.
    texts = [t.replace("\n", "\r\n", 3) + "\t# copy  \n" for t in texts]
    inputs = {}
    for scale in (1, 10):
        copies = 3 * scale
        path = root / f"x{scale}.jsonl"
        with open(path, "w", encoding="utf-8") as f:
            for c in range(copies):
                for i, text in enumerate(texts):
                    f.write(json.dumps({"text": f"# {c} {i}\n{text}"}) + "\n")
        inputs[scale] = str(path)
    return root, os.path.join(tok, "tokenizer.json"), inputs


def peak_rss_kb(root, vocab, src, name):
    tool = [sys.executable, os.path.join(REPO, "tools", "preprocess_data.py"), "--input", src, "--vocab-file", vocab,
            "--append-eod", "--workers", "2", "--output-prefix", str(root / name)]
    out = subprocess.run([sys.executable, "-c", _MEASURE, *tool], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.strip())


def test_peak_memory_is_bounded_as_input_grows_tenfold(setup):
    root, vocab, inputs = setup
    assert os.path.getsize(inputs[10]) > 9 * os.path.getsize(inputs[1]) > 15e6
    small = peak_rss_kb(root, vocab, inputs[1], "x1")
    large = peak_rss_kb(root, vocab, inputs[10], "x10")
    print(f"peak RSS: {small / 1024:.0f} MiB for {os.path.getsize(inputs[1]) / 1e6:.1f} MB, "
          f"{large / 1024:.0f} MiB for {os.path.getsize(inputs[10]) / 1e6:.1f} MB ({large / small:.3f}x)")
    assert large < 1.2 * small
    ds = IndexedDataset(str(root / "x10_text_document"))
    tok = build_tokenizer("HFTokenizer", vocab)
    with open(inputs[10], encoding="utf-8") as f:
        for i, line in enumerate(f):
            tokens = ds[i]
            assert tokens[-1] == tok.eod
            assert tok.decode(tokens[:-1]) == json.loads(line)["text"]
    assert i + 1 == len(ds)


def test_vocabulary_above_65500_writes_int32_tokens(setup, tmp_path):
    from tokenizers import Tokenizer

    _, vocab, _ = setup
    tok = Tokenizer.from_file(vocab)
    tok.add_tokens([f"WORD{i:05d}" for i in range(66000)])
    big = str(tmp_path / "big.json")
    tok.save(big)
    src = tmp_path / "in.jsonl"
    texts = [f"x = WORD{65990 + i % 10}\r\n\tpass  " for i in range(20)]
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", "preprocess_data.py"), "--input", str(src),
                           "--vocab-file", big, "--output-prefix", str(tmp_path / "big")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "hf engine" in proc.stdout, proc.stderr  # too many added tokens for tiktoken
    ds = IndexedDataset(str(tmp_path / "big_text_document"))
    assert ds.dtype == np.int32 and max(int(ds[i].max()) for i in range(len(ds))) > 65535
    loaded = build_tokenizer("HFTokenizer", big)
    assert [loaded.decode(ds[i]) for i in range(len(ds))] == texts
