"""The tiktoken engine: the same ids as HF tokenizers (the reference) on code, tricky text and whole datasets."""

import os
import subprocess
import sys

import pytest

from megatron_lite.data.corpus import iter_documents
from megatron_lite.data.fast_bpe import byte_level_alphabet, encoder_for
from megatron_lite.data.tokenizer import EOD_TOKEN, build_tokenizer, save_tokenizer, train_byte_level_bpe
from tests.conftest import REPO, STDLIB

TRICKY = ["def f(x):\n\treturn x  \n", "a\r\n\r\n  \t\n", "naïve ✓ 世界 🚀 \u00a0\u2028\u3000 \x1c\x0b",
          f"x = '{EOD_TOKEN}'\n", "don't we'll I'M 12345 3.14e-10 0x1F", " " * 33 + "\n" * 5 + "\t" * 3, ""]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    texts = [doc["text"] for doc in iter_documents([os.path.join(STDLIB, "json")])]
    out = str(tmp_path_factory.mktemp("fasttok"))
    save_tokenizer(train_byte_level_bpe(texts * 2, 2000), out)
    return out


def test_alphabet_is_a_byte_bijection():
    chars = byte_level_alphabet()
    assert sorted(chars.values()) == list(range(256)) and len(chars) == 256


def test_same_ids_as_hf_on_tricky_text_and_real_code(tok_dir):
    tok = build_tokenizer("HFTokenizer", os.path.join(tok_dir, "tokenizer.json"))
    fast, reason = encoder_for(tok.hf)
    assert fast is not None, reason
    code = [doc["text"] for doc in iter_documents([os.path.join(STDLIB, "email")])]  # not what it was trained on
    for text in TRICKY + code:
        assert fast(text) == tok.encode(text), text[:80]
    gpt2 = build_tokenizer("GPT2BPETokenizer", os.path.join(tok_dir, "vocab.json"), os.path.join(tok_dir, "merges.txt"))
    gpt2_fast, _ = encoder_for(gpt2.hf)
    assert all(gpt2_fast(t) == gpt2.encode(t) for t in TRICKY + code[:20])


def test_ineligible_tokenizers_are_refused_with_a_reason(tok_dir):
    from tokenizers import normalizers, pre_tokenizers

    tok = build_tokenizer("HFTokenizer", os.path.join(tok_dir, "tokenizer.json")).hf
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    assert encoder_for(tok) == (None, "its pre-tokenizer is not ByteLevel(add_prefix_space=False)")
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.normalizer = normalizers.NFC()
    assert encoder_for(tok) == (None, "it has a normalizer")


def run_preprocess(tok_dir, src, prefix, *extra):
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", "preprocess_data.py"), "--input", src,
                           "--vocab-file", os.path.join(tok_dir, "tokenizer.json"), "--append-eod",
                           "--output-prefix", prefix, *extra], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_preprocess_engines_write_identical_files(tok_dir, tmp_path):
    src = os.path.join(STDLIB, "email")
    out = {}
    for engine, workers in (("hf", "1"), ("tiktoken", "2"), ("auto", "1")):
        prefix = str(tmp_path / engine)
        stdout = run_preprocess(tok_dir, src, prefix, "--tokenizer-engine", engine, "--workers", workers)
        assert f"{'tiktoken' if engine == 'auto' else engine} engine" in stdout
        out[engine] = [open(f"{prefix}_text_document{ext}", "rb").read() for ext in (".bin", ".idx")]
    assert out["hf"] == out["tiktoken"] == out["auto"]


def test_a_disagreeing_engine_is_not_used(tok_dir, monkeypatch):
    from megatron_lite.data import preprocess
    from megatron_lite.errors import UserError

    args = ("HFTokenizer", os.path.join(tok_dir, "tokenizer.json"), None)
    assert preprocess.checked_engine(args, "auto", TRICKY) == "tiktoken"
    monkeypatch.setattr(preprocess, "encoder_for", lambda hf: (lambda text: [0], ""))
    assert preprocess.checked_engine(args, "auto", TRICKY) == "hf"
    with pytest.raises(UserError, match="tokenizer-engine 'tiktoken' gives other ids"):
        preprocess.checked_engine(args, "tiktoken", TRICKY)
    with pytest.raises(UserError, match="tokenizer-engine 'fast' is unknown"):
        preprocess.checked_engine(args, "fast", TRICKY)
