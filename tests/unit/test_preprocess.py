"""tools/preprocess_data.py end to end: inputs -> .bin/.idx -> decoded documents equal the inputs exactly."""

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from megatron_lite.data.indexed_dataset import IndexedDataset
from megatron_lite.data.tokenizer import build_tokenizer, save_tokenizer, train_byte_level_bpe

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def jsonl_texts(n):
    texts = [f"def f{i}(a, b):\r\n\treturn a + b * {i}   \n\n# naïve ✓ {i}\n" + "    " * (i % 5) for i in range(n)]
    texts[3] = ""  # empty documents are skipped
    return texts


def make_tree(root):
    """Source files (one document each) next to files that are not documents."""
    files = {
        "a.py": "import os\r\n\r\nprint(os.sep)  \n",
        "lib/b.c": "int main(void) {\n\treturn 0;\n}\n",
        "lib/c.rs": "fn main() { println!(\"ü\"); }\n",
        "notes.txt": "not source code\n",
        "node_modules/x.js": "skipped();\n",
    }
    for rel, text in files.items():
        os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
        with open(os.path.join(root, rel), "w", newline="", encoding="utf-8") as f:
            f.write(text)
    with open(os.path.join(root, "blob.py"), "wb") as f:
        f.write(b"\x00\x01binary")
    return [files["a.py"], files["lib/b.c"], files["lib/c.rs"]]  # sorted walk order


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("tokenizer"))
    save_tokenizer(train_byte_level_bpe(jsonl_texts(40) * 3, 350), out)
    return out


def run(*args):
    return subprocess.run([sys.executable, os.path.join(REPO, "tools", "preprocess_data.py"), *args],
                          capture_output=True, text=True, timeout=120)


def preprocess(tokenizer_dir, inputs, prefix, *extra):
    proc = run("--input", ",".join(inputs), "--tokenizer-type", "HFTokenizer",
               "--vocab-file", os.path.join(tokenizer_dir, "tokenizer.json"), "--output-prefix", prefix, *extra)
    assert proc.returncode == 0, proc.stderr
    return proc


def decoded_documents(prefix, tokenizer, eod=True):
    ds = IndexedDataset(prefix)
    assert ds.doc_idx.tolist() == list(range(len(ds) + 1))  # one sequence per document
    docs = []
    for i in range(len(ds)):
        ids = ds[i].tolist()
        if eod:
            assert ids[-1] == tokenizer.eod
            ids = ids[:-1]
        docs.append(tokenizer.decode(ids))
    return docs


def test_directory_and_jsonl_round_trip(tmp_path, tokenizer_dir):
    tree_texts = make_tree(str(tmp_path / "tree"))
    texts = jsonl_texts(10)
    with open(tmp_path / "docs.jsonl", "w") as f:
        for t in texts:
            f.write(json.dumps({"text": t, "meta": 1}) + "\n")
    prefix = str(tmp_path / "out" / "data")
    proc = preprocess(tokenizer_dir, [str(tmp_path / "tree"), str(tmp_path / "docs.jsonl")], prefix, "--append-eod")
    assert "docs/s" in proc.stdout and "MB/s" in proc.stdout
    assert "source files that are not documents, skipped: binary 1" in proc.stdout  # blob.py
    assert "documents by language: ? 10, Python 1, C 1, Rust 1" in proc.stdout  # jsonl records without a language
    tok = build_tokenizer("HFTokenizer", os.path.join(tokenizer_dir, "tokenizer.json"), None)
    assert decoded_documents(prefix + "_text_document", tok) == tree_texts + [t for t in texts if t]
    assert IndexedDataset(prefix + "_text_document").dtype == np.uint16


def test_without_eod_and_with_two_keys(tmp_path, tokenizer_dir):
    with open(tmp_path / "docs.jsonl", "w") as f:
        for i in range(5):
            f.write(json.dumps({"text": f"x = {i}\n", "code": f"\ty{i}  \r\n"}) + "\n")
    prefix = str(tmp_path / "k")
    preprocess(tokenizer_dir, [str(tmp_path / "docs.jsonl")], prefix, "--jsonl-keys", "text", "code")
    tok = build_tokenizer("HFTokenizer", os.path.join(tokenizer_dir, "tokenizer.json"), None)
    assert decoded_documents(prefix + "_text_document", tok, eod=False) == [f"x = {i}\n" for i in range(5)]
    assert decoded_documents(prefix + "_code_document", tok, eod=False) == [f"\ty{i}  \r\n" for i in range(5)]


def test_workers_give_identical_output(tmp_path, tokenizer_dir):
    with open(tmp_path / "docs.jsonl", "w") as f:
        for t in jsonl_texts(300):  # several chunks of 64 documents
            f.write(json.dumps({"text": t}) + "\n")
    outputs = []
    for workers in ("1", "2"):
        prefix = str(tmp_path / f"w{workers}")
        preprocess(tokenizer_dir, [str(tmp_path / "docs.jsonl")], prefix, "--append-eod", "--workers", workers,
                   "--log-interval", "50")
        outputs.append([open(prefix + "_text_document" + ext, "rb").read() for ext in (".bin", ".idx")])
    assert outputs[0] == outputs[1]


def test_gpt2_bpe_files_work_too(tmp_path, tokenizer_dir):
    with open(tmp_path / "d.jsonl", "w") as f:
        f.write(json.dumps({"text": "a\tb  \r\n"}) + "\n")
    proc = run("--input", str(tmp_path / "d.jsonl"), "--tokenizer-type", "GPT2BPETokenizer",
               "--vocab-file", os.path.join(tokenizer_dir, "vocab.json"),
               "--merge-file", os.path.join(tokenizer_dir, "merges.txt"), "--output-prefix", str(tmp_path / "g"))
    assert proc.returncode == 0, proc.stderr
    tok = build_tokenizer("HFTokenizer", os.path.join(tokenizer_dir, "tokenizer.json"), None)
    assert decoded_documents(str(tmp_path / "g_text_document"), tok, eod=False) == ["a\tb  \r\n"]


@pytest.mark.parametrize("case", ["missing-input", "empty-dir", "missing-tokenizer", "bad-jsonl", "missing-key",
                                  "bad-workers", "bad-impl"])
def test_user_errors_leave_nothing_behind(tmp_path, tokenizer_dir, case):
    (tmp_path / "empty").mkdir()
    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps({"text": t}) + "\n" for t in jsonl_texts(100)))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(good.read_text() + "{not json\n")
    vocab = os.path.join(tokenizer_dir, "tokenizer.json")
    args = {
        "missing-input": ["--input", str(tmp_path / "nope.jsonl"), "--vocab-file", vocab],
        "empty-dir": ["--input", str(tmp_path / "empty"), "--vocab-file", vocab],
        "missing-tokenizer": ["--input", str(good), "--vocab-file", str(tmp_path / "none.json")],
        "bad-jsonl": ["--input", f"{good},{bad}", "--vocab-file", vocab, "--workers", "2"],
        "missing-key": ["--input", str(good), "--vocab-file", vocab, "--jsonl-keys", "content"],
        "bad-workers": ["--input", str(good), "--vocab-file", vocab, "--workers", "0"],
        "bad-impl": ["--input", str(good), "--vocab-file", vocab, "--dataset-impl", "lazy"],
    }[case]
    out = tmp_path / "out"
    proc = run(*args, "--output-prefix", str(out / "data"))
    assert proc.returncode != 0
    assert proc.stderr.startswith("error:"), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert glob.glob(str(out / "*")) == []
    if case == "bad-jsonl":
        assert "bad.jsonl:101" in proc.stderr
