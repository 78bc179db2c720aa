"""Preprocessing transforms: fill-in-the-middle (PSM / SPM), CERT sketches, PyMT5 method extraction."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from megatron_lite.data.indexed_dataset import IndexedDataset
from megatron_lite.data.tokenizer import build_tokenizer, save_tokenizer, train_byte_level_bpe
from megatron_lite.data.transforms import FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX, cert_sketch, fim_segments, python_methods
from tests.conftest import REPO, STDLIB

SOURCE = '''import numpy as np

def normalize(values, scale=2.5):
    """Scale an array."""
    arr = np.asarray(values) * scale
    return arr / np.linalg.norm(arr), 'done'


def helper(x):
    return x + 1


class Model:
    @property
    def size(self):
        """The size."""
        return 42
'''


def test_fim_segments_psm_and_spm():
    ids = {FIM_PREFIX: 1, FIM_MIDDLE: 2, FIM_SUFFIX: 3}
    text = "abcdefghij" * 5
    seen = set()
    rng = np.random.RandomState(0)
    for _ in range(50):
        segs = fim_segments(text, rng, 0.5, ids)
        if segs[1] == 3:  # SPM: <pre> <suf> suffix <mid> prefix middle
            _, _, suffix, mid, prefix, middle = segs
            seen.add("spm")
        else:  # PSM: <pre> prefix <suf> suffix <mid> middle
            _, prefix, _, suffix, mid, middle = segs
            seen.add("psm")
        assert segs[0] == 1 and mid == 2 and prefix + middle + suffix == text
    assert seen == {"psm", "spm"}
    a = fim_segments(text, np.random.RandomState(5), 0.5, ids)
    assert a == fim_segments(text, np.random.RandomState(5), 0.5, ids)


def test_cert_sketch_anonymises_user_names_and_literals():
    sketch = cert_sketch(SOURCE)
    assert "def name(name, name=number):" in sketch
    assert "name = np.asarray(name) * name" in sketch  # the library call stays
    assert "return name / np.linalg.norm(name), \"string\"" in sketch
    assert "return number" in sketch and "normalize" not in sketch and "42" not in sketch
    assert len(sketch.splitlines()) == len(SOURCE.splitlines())  # the layout stays
    assert cert_sketch("int main(void) { return 0; }") is None


def test_python_methods_are_documented_functions_with_signature_docstring_body():
    methods = python_methods(SOURCE)
    assert methods == [
        'def normalize(values, scale=2.5):\n    """Scale an array."""\n    arr = np.asarray(values) * scale\n'
        "    return arr / np.linalg.norm(arr), 'done'\n",
        '@property\ndef size(self):\n    """The size."""\n    return 42\n',
    ]
    assert python_methods("def broken(:\n") == []


def run(tool, *args):
    return subprocess.run([sys.executable, os.path.join(REPO, "tools", tool), *args], capture_output=True, text=True,
                          timeout=120)


@pytest.fixture(scope="module")
def fim_tokenizer(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("fimtok"))
    proc = run("train_tokenizer.py", "--input", os.path.join(STDLIB, "json"), "--vocab-size", "600",
               "--output", out, "--fim-tokens")
    assert proc.returncode == 0, proc.stderr
    return os.path.join(out, "tokenizer.json")


def test_preprocess_fim_documents_reassemble_exactly(tmp_path, fim_tokenizer):
    src = tmp_path / "in.jsonl"
    texts = [f"def f{i}(a):\r\n\treturn a * {i}  \n" for i in range(40)]
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    outputs = []
    for workers in ("1", "2"):
        prefix = str(tmp_path / f"w{workers}")
        proc = run("preprocess_data.py", "--input", str(src), "--vocab-file", fim_tokenizer, "--fim-rate", "0.5",
                   "--append-eod", "--workers", workers, "--output-prefix", prefix)
        assert proc.returncode == 0, proc.stderr
        outputs.append(open(prefix + "_text_document.bin", "rb").read())
    assert outputs[0] == outputs[1]  # the FIM draws do not depend on the worker count
    tok = build_tokenizer("HFTokenizer", fim_tokenizer)
    pre, mid, suf = (tok.special_id(t) for t in (FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX))
    ds = IndexedDataset(str(tmp_path / "w1_text_document"))
    kinds = set()
    for i, text in enumerate(texts):
        ids = ds[i][:-1].tolist()
        if ids[0] != pre:
            assert tok.decode(ids) == text
            kinds.add("plain")
            continue
        s, m = ids.index(suf), ids.index(mid)
        if s == 1:  # SPM
            suffix, rest = tok.decode(ids[2:m]), ids[m + 1:]
            kinds.add("spm")
            assert text.endswith(suffix) and tok.decode(rest) == text[:len(text) - len(suffix)]
        else:
            prefix, suffix, middle = tok.decode(ids[1:s]), tok.decode(ids[s + 1:m]), tok.decode(ids[m + 1:])
            kinds.add("psm")
            assert prefix + middle + suffix == text
    assert kinds == {"plain", "psm", "spm"}


def test_preprocess_transforms_and_fim_errors(tmp_path, fim_tokenizer):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"text": SOURCE}) + "\n" + json.dumps({"text": "x = 1\n"}) + "\n")
    proc = run("preprocess_data.py", "--input", str(src), "--vocab-file", fim_tokenizer, "--transform", "methods",
               "--output-prefix", str(tmp_path / "m"))
    assert proc.returncode == 0, proc.stderr
    tok = build_tokenizer("HFTokenizer", fim_tokenizer)
    ds = IndexedDataset(str(tmp_path / "m_text_document"))
    assert [tok.decode(ds[i]) for i in range(len(ds))] == python_methods(SOURCE)
    proc = run("preprocess_data.py", "--input", str(src), "--vocab-file", fim_tokenizer, "--transform", "sketch",
               "--output-prefix", str(tmp_path / "s"))
    ds = IndexedDataset(str(tmp_path / "s_text_document"))
    assert proc.returncode == 0 and tok.decode(ds[0]) == cert_sketch(SOURCE) and tok.decode(ds[1]) == "name = number\n"
    plain = str(tmp_path / "plain")
    save_tokenizer(train_byte_level_bpe([SOURCE] * 3, 300), plain)
    plain = os.path.join(plain, "tokenizer.json")
    for args, message in ((["--vocab-file", plain, "--fim-rate", "0.5"], "has no FIM sentinel token(s)"),
                          (["--vocab-file", fim_tokenizer, "--fim-rate", "1.5"], "fim-rate and fim-spm-rate must be")):
        proc = run("preprocess_data.py", "--input", str(src), *args, "--output-prefix", str(tmp_path / "bad" / "x"))
        assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
        assert not os.path.exists(tmp_path / "bad") or os.listdir(tmp_path / "bad") == []
