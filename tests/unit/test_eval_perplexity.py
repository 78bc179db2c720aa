"""Per-language perplexity: rolling windows score each token once, batched scoring matches a per-token
reference, and a model with uniform logits scores exactly its vocabulary size in every language."""

import contextlib
import math
import os
import sysconfig

import pygments.lexers
import pytest
import torch
import torch.nn.functional as F

from megatron_lite.config import ModelConfig
from megatron_lite.data.tokenizer import Tokenizer, train_byte_level_bpe
from megatron_lite.errors import UserError
from megatron_lite.evaluation.eval_files import find_eval_files
from megatron_lite.evaluation.perplexity import rolling_windows, score_files, summarize
from megatron_lite.evaluation.report import markdown_table, write_perplexity_report
from megatron_lite.model.gpt import GPTModel
from tests.conftest import tiny_model_config

STDLIB = sysconfig.get_paths()["stdlib"]
SOURCES = {  # a few files per language, real code where this machine has it
    "Python": ["json/__init__.py", "json/decoder.py", "textwrap.py"],
    "C": ["int main(void) {\n    return 0;\n}\n", "#include <stdio.h>\nvoid f(int x) { printf(\"%d\", x); }\n"],
    "Rust": ["fn main() {\n    println!(\"hi\");\n}\n"],
    "Go": ["package main\n\nfunc main() {}\n", "package x\n// empty\n", " \n\t\n"],  # the last: whitespace only
}
SUFFIX = {"Python": ".py", "C": ".c", "Rust": ".rs", "Go": ".go"}


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """One folder per language (PolyCoder's test-set layout) plus a file of no language."""
    root = tmp_path_factory.mktemp("langs")
    for language, items in SOURCES.items():
        (root / language).mkdir()
        for i, item in enumerate(items):
            text = open(os.path.join(STDLIB, item)).read()[:3000] if language == "Python" else item
            (root / language / f"f{i}{SUFFIX[language]}").write_text(text)
    (root / "README.txt").write_text("not code")
    return root


@pytest.fixture(scope="module")
def tokenizer(tree):
    texts = [p.read_text() for p in sorted(tree.rglob("*.*"))]
    return Tokenizer(train_byte_level_bpe(texts, 400), "test")


def tiny_model(vocab, uniform=False, seed=0):
    torch.manual_seed(seed)
    cfg = tiny_model_config(num_layers=2, hidden_size=32, num_attention_heads=4, seq_length=32,
                      max_position_embeddings=64, padded_vocab_size=vocab, rotary_pct=0.5)
    model = GPTModel(cfg).eval()
    if uniform:
        with torch.no_grad():
            model.embed_out.weight.zero_()  # every logit 0: the uniform distribution over the vocabulary
    return model


def score(model, tokenizer, files, context, stride, batch=16):
    return score_files(model, tokenizer, files, context, stride, batch, torch.device("cpu"), contextlib.nullcontext)


@pytest.mark.parametrize("n,context,stride", [(1, 8, 8), (7, 8, 8), (8, 8, 8), (9, 8, 8), (50, 8, 3), (50, 8, 1),
                                              (33, 16, 16), (100, 16, 5)])
def test_rolling_windows_score_every_token_once_within_the_context(n, context, stride):
    windows = rolling_windows(n, context, stride)
    scored = [t for start, end, k in windows for t in range(end - k + 1, end + 1)]  # target positions
    assert scored == list(range(1, n + 1))
    for i, (start, end, k) in enumerate(windows):
        assert 0 <= start < end and end - start <= context and 0 < k <= end - start
        if i > 0:  # later windows give each scored token at least context - stride tokens before it
            assert end - k - start >= min(context - stride, end - k)


def test_batched_scoring_matches_one_forward_per_token(tree, tokenizer):
    """The plain reference: each token's loss from its own forward pass over the context the windows give it."""
    model = tiny_model(512)
    files = find_eval_files(str(tree), [], ["C", "Go", "Rust"])
    context, stride = 12, 5
    table = score(model, tokenizer, files, context, stride)
    for (path, _), row in zip(files, table):
        nll, tokens, size, _ = row
        if not open(path).read().strip():
            assert not row.any()  # whitespace only: skipped
            continue
        ids = [tokenizer.eod] + tokenizer.encode(open(path).read())
        expected = 0.0
        for start, end, k in rolling_windows(len(ids) - 1, context, stride):
            for target in range(end - k + 1, end + 1):
                logits = model(torch.tensor([ids[start:target]]))[0, -1].double()  # [v]
                expected += F.cross_entropy(logits[None], torch.tensor([ids[target]])).item()
        assert tokens == len(ids) - 1 and size == os.path.getsize(path)
        assert nll == pytest.approx(expected, rel=1e-5)


def test_uniform_logits_score_exactly_the_vocabulary_size_per_language(tree, tokenizer):
    vocab = 512
    files = find_eval_files(str(tree), [], ["C", "Go", "Python", "Rust"])
    summary = summarize(files, score(tiny_model(vocab, uniform=True), tokenizer, files, context=32, stride=13))
    assert list(summary) == ["C", "Go", "Python", "Rust", "overall"]
    for name, s in summary.items():  # each position's log-softmax is fp32 (as lm-eval's): within 1e-7 of log(512)
        assert s["perplexity"] == pytest.approx(vocab, rel=1e-6), name
        assert s["bits_per_byte"] == pytest.approx(math.log2(vocab) * s["tokens"] / s["bytes"], rel=1e-6)
        # The PolyCoder fork's units: the summed log-likelihood over the summed bytes or Pygments tokens.
        assert s["byte_perplexity"] == pytest.approx(vocab ** (s["tokens"] / s["bytes"]), rel=1e-6)
        assert s["word_perplexity"] == pytest.approx(vocab ** (s["tokens"] / s["pygments_tokens"]), rel=1e-6)
    # Pygments tokens as the fork's count_words: the language's lexer by its lower-cased name, whitespace included.
    for language in ("C", "Go", "Python", "Rust"):
        lexer = pygments.lexers.get_lexer_by_name(language.lower())
        texts = [p.read_text() for p in (tree / language).iterdir()]
        assert summary[language]["pygments_tokens"] == sum(len(list(lexer.get_tokens(t))) for t in texts if t.strip())
    # A whitespace-only file is skipped, as the fork's harness skips it: not counted, nothing scored.
    assert summary["Python"]["files"] == 3 and summary["Go"]["files"] == 2 and summary["overall"]["files"] == 8


def test_language_selection_and_explicit_files(tree):
    assert {lang for _, lang in find_eval_files(str(tree), [], ["Go"])} == {"Go"}
    c_file = str(tree / "C" / "f0.c")
    assert find_eval_files(None, [c_file], ["Python"]) == [(c_file, "C")]  # named files are always scored
    with pytest.raises(UserError, match="README.txt has an extension of none"):
        find_eval_files(None, [str(tree / "README.txt")], ["C"])
    with pytest.raises(UserError, match="does not exist"):
        find_eval_files(None, [str(tree / "nope.c")], ["C"])
    with pytest.raises(UserError, match="no files of Java"):
        find_eval_files(str(tree), [], ["Java"])


def test_bad_stride_is_a_user_error(tree, tokenizer):
    files = find_eval_files(str(tree), [], ["Go"])
    with pytest.raises(UserError, match="eval-stride 9 must be between 1 and the context length 8"):
        score(tiny_model(512), tokenizer, files, context=8, stride=9)


def test_report_files(tmp_path):
    row = {"files": 2, "tokens": 10, "pygments_tokens": 16, "bytes": 40, "loss": 1.0, "perplexity": math.e,
           "bits_per_byte": 0.36, "byte_perplexity": 1.25, "word_perplexity": 1.87}
    summary = {"C": row, "overall": row}
    paths = write_perplexity_report(str(tmp_path / "run"), summary, "test")
    assert [os.path.basename(p) for p in paths] == ["run_perplexity.json", "run_perplexity.md", "run_perplexity.png"]
    table = markdown_table(summary)
    assert table.startswith("| language | files | tokens | Pygments tokens | bytes | perplexity per Pygments token |")
    assert "| C | 2 | 10 | 16 | 40 | 1.8700 | 1.2500 | 0.3600 | 2.7183 |" in table
    assert open(paths[2], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert sorted(os.listdir(tmp_path)) == ["run_perplexity.json", "run_perplexity.md", "run_perplexity.png"]
