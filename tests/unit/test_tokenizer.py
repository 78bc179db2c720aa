"""Tokenizer training (tools/train_tokenizer.py) and loading: exact round trips, both file formats agree."""

import json
import os
import subprocess
import sys

import pytest

from megatron_lite.data.tokenizer import EOD_TOKEN, build_tokenizer
from megatron_lite.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRICKY = [
    "def f(x):\n\treturn x  \n",
    "int main() {\r\n\tprintf(\"hi\\n\");\r\n}\r\n",
    "x = 1    \t  \n\n\n    y = 2   ",
    "    leading spaces and trailing tab\t",
    "s = 'héllo wörld — 世界 🚀 ∑'\n",
    "a" * 50 + " " * 17 + "\u00a0\u2028\ufeff\n",
    f"before {EOD_TOKEN} after",
    "",
]


def make_code_corpus(root, n=40):
    """A small tree of Python / C / JavaScript files with tabs, CRLF, trailing spaces and unicode."""
    os.makedirs(os.path.join(root, "pkg"), exist_ok=True)
    for i in range(n):
        with open(os.path.join(root, "pkg", f"mod{i}.py"), "w", newline="") as f:
            f.write(f"def func_{i}(value):\n    \"\"\"Return value plus {i} — ok.\"\"\"\n"
                    f"    if value > {i}:  \n\t\treturn value + {i}\n    return None\n")
        with open(os.path.join(root, f"file{i}.c"), "w", newline="") as f:
            f.write(f"int add_{i}(int a) {{\r\n\treturn a + {i};\r\n}}\r\n")
        with open(os.path.join(root, f"s{i}.js"), "w", newline="", encoding="utf-8") as f:
            f.write(f"const msg{i} = \"héllo {i}\";   \nconsole.log(msg{i});\n")
    return root


def run_tool(*args):
    return subprocess.run([sys.executable, os.path.join(REPO, "tools", "train_tokenizer.py"), *args],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tok")
    corpus = make_code_corpus(str(tmp / "corpus"))
    out = str(tmp / "tokenizer")
    proc = run_tool("--input", corpus, "--vocab-size", "400", "--output", out)
    assert proc.returncode == 0, proc.stderr
    assert "bytes per token" in proc.stdout
    return out


def test_tool_writes_all_formats(trained):
    assert sorted(os.listdir(trained)) == ["merges.txt", "tokenizer.json", "vocab.json"]
    spec = json.load(open(os.path.join(trained, "tokenizer.json")))
    assert spec["normalizer"] is None
    assert spec["pre_tokenizer"]["type"] == "ByteLevel" and spec["pre_tokenizer"]["add_prefix_space"] is False
    assert spec["decoder"]["type"] == "ByteLevel"


@pytest.mark.parametrize("kind", ["HFTokenizer", "GPT2BPETokenizer"])
def test_decode_encode_is_exact(trained, kind):
    tok = build_tokenizer(kind, os.path.join(trained, "tokenizer.json" if kind == "HFTokenizer" else "vocab.json"),
                          os.path.join(trained, "merges.txt"))
    for text in TRICKY:
        assert tok.decode(tok.encode(text)) == text
    assert [tok.decode(ids) for ids in tok.encode_batch(TRICKY)] == TRICKY
    assert tok.decode([tok.eod]) == EOD_TOKEN
    assert 300 < tok.vocab_size <= 400


def test_both_formats_agree(trained):
    hf = build_tokenizer("HFTokenizer", os.path.join(trained, "tokenizer.json"), None)
    gpt2 = build_tokenizer("GPT2BPETokenizer", os.path.join(trained, "vocab.json"), os.path.join(trained, "merges.txt"))
    assert (hf.vocab_size, hf.eod) == (gpt2.vocab_size, gpt2.eod)
    assert hf.encode_batch(TRICKY) == gpt2.encode_batch(TRICKY)
    code = open(__file__, encoding="utf-8").read()
    assert hf.encode(code) == gpt2.encode(code)
    assert len(hf.encode(code)) < len(code.encode("utf-8"))  # the merges learned something


def test_jsonl_input_and_sample_rate(tmp_path):
    path = tmp_path / "c.jsonl"
    with open(path, "w") as f:
        for i in range(50):
            f.write(json.dumps({"text": f"print({i})\r\n\tpass  \n", "other": 1}) + "\n")
    proc = run_tool("--input", str(path), "--vocab-size", "300", "--output", str(tmp_path / "t"),
                    "--sample-rate", "0.5", "--seed", "3")
    assert proc.returncode == 0, proc.stderr
    tok = build_tokenizer("HFTokenizer", str(tmp_path / "t" / "tokenizer.json"), None)
    assert tok.decode(tok.encode("print(7)\r\n\tpass  \n")) == "print(7)\r\n\tpass  \n"


@pytest.mark.parametrize("case", ["empty", "missing", "small-vocab"])
def test_tool_user_errors(tmp_path, case):
    (tmp_path / "empty").mkdir()
    args = {"empty": [str(tmp_path / "empty"), "--vocab-size", "300"],
            "missing": [str(tmp_path / "nope"), "--vocab-size", "300"],
            "small-vocab": [make_code_corpus(str(tmp_path / "c"), 2), "--vocab-size", "100"]}[case]
    proc = run_tool("--input", *args, "--output", str(tmp_path / "out"))
    assert proc.returncode != 0
    assert proc.stderr.startswith("error:") and len(proc.stderr.strip().splitlines()) == 1
    assert not os.path.exists(tmp_path / "out")


def test_load_errors_name_the_file_and_key(trained, tmp_path):
    with pytest.raises(UserError, match="valid: HFTokenizer, GPT2BPETokenizer"):
        build_tokenizer("SentencePiece", None, None)
    with pytest.raises(UserError, match=r"vocab-file '.*nope\.json' does not exist"):
        build_tokenizer("HFTokenizer", str(tmp_path / "nope.json"), None)
    with pytest.raises(UserError, match="vocab-file .*merges.txt' is not a tokenizers tokenizer.json"):
        build_tokenizer("HFTokenizer", os.path.join(trained, "merges.txt"), None)
    with pytest.raises(UserError, match="'merge-file' is not set"):
        build_tokenizer("GPT2BPETokenizer", os.path.join(trained, "vocab.json"), None)
    with pytest.raises(UserError, match=r"merge-file '.*missing\.txt' does not exist"):
        build_tokenizer("GPT2BPETokenizer", os.path.join(trained, "vocab.json"), str(tmp_path / "missing.txt"))
    with pytest.raises(UserError, match="merge-file .*tokenizer.json.* is not a GPT-2 merges.txt"):
        build_tokenizer("GPT2BPETokenizer", os.path.join(trained, "vocab.json"), os.path.join(trained, "tokenizer.json"))
    with pytest.raises(UserError, match="is a tokenizers tokenizer.json: set tokenizer-type: HFTokenizer"):
        build_tokenizer("GPT2BPETokenizer", os.path.join(trained, "tokenizer.json"), None)  # GPT-NeoX's default type
    with pytest.raises(UserError, match="vocab-file .* is not a GPT-2 vocab.json"):
        build_tokenizer("GPT2BPETokenizer", os.path.join(trained, "merges.txt"), os.path.join(trained, "merges.txt"))


def test_sample_rate_floor_and_bytes_per_token_per_language(tmp_path):
    corpus = make_code_corpus(str(tmp_path / "c"), 40)  # 120 documents in three languages
    proc = run_tool("--input", corpus, "--vocab-size", "300", "--output", str(tmp_path / "t"),
                    "--sample-rate", "0.05", "--min-documents", "30")
    assert proc.returncode == 0, proc.stderr
    assert "sample rate 0.25" in proc.stdout  # 5% of 120 is 6 documents, below the floor of 30
    trained_on = int(proc.stdout.split("trained on ")[1].split()[0])
    assert 10 <= trained_on <= 55
    per_language = [line.split()[0] for line in proc.stdout.splitlines() if line.startswith("  ")]
    assert per_language == ["C", "JavaScript", "Python"]
    assert all("bytes per token" in line for line in proc.stdout.splitlines() if line.startswith("  "))


def test_sentencepiece_trains_round_trips_and_preprocesses(tmp_path):
    corpus = make_code_corpus(str(tmp_path / "c"), 40)
    out = str(tmp_path / "spm")
    proc = run_tool("--input", corpus, "--vocab-size", "400", "--output", out, "--tokenizer-type", "SPMTokenizer")
    assert proc.returncode == 0, proc.stderr
    assert os.listdir(out) == ["tokenizer.model"] and "bytes per token" in proc.stdout
    tok = build_tokenizer("SPMTokenizer", os.path.join(out, "tokenizer.model"))
    for text in TRICKY:
        assert tok.decode(tok.encode(text)) == text
    assert tok.decode([tok.eod]) == EOD_TOKEN and tok.vocab_size == 400
    texts = [open(os.path.join(corpus, "pkg", f"mod{i}.py"), newline="").read() for i in range(3)]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", "preprocess_data.py"), "--input", str(src),
                           "--tokenizer-type", "SPMTokenizer", "--vocab-file", os.path.join(out, "tokenizer.model"),
                           "--append-eod", "--output-prefix", str(tmp_path / "p")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and "sentencepiece engine" in proc.stdout, proc.stderr
    from megatron_lite.data.indexed_dataset import IndexedDataset

    ds = IndexedDataset(str(tmp_path / "p_text_document"))
    assert [tok.decode(ds[i][:-1]) for i in range(len(ds))] == texts
    with pytest.raises(UserError, match=r"vocab-file '.*file0.c' is not a sentencepiece .model"):
        build_tokenizer("SPMTokenizer", str(tmp_path / "c" / "file0.c"))
