"""Languages by extension, and tools/collect_corpus.py: skip rules, exact dedup, record fields, jsonl pass-through."""

import hashlib
import json
import os
import subprocess
import sys

import pytest

from megatron_lite.data.corpus import CorpusStats, collect
from megatron_lite.data.languages import LANGUAGES, language_of, parse_languages
from megatron_lite.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_language_of():
    assert len(LANGUAGES) == 12
    cases = {"a.py": "Python", "x/y.C": "C", "h.h": "C", "k.hpp": "C++", "m.cc": "C++", "p.cs": "C#", "g.go": "Go",
             "J.java": "Java", "j.js": "JavaScript", "t.tsx": "TypeScript", "r.rb": "Ruby", "r.rs": "Rust",
             "s.scala": "Scala", "i.php": "PHP", "README.md": None, "Makefile": None, "x.pyc": None}
    for path, lang in cases.items():
        assert language_of(path) == lang, path
    assert parse_languages(["python", "C++", "Python"]) == ["Python", "C++"]
    assert parse_languages(None) == list(LANGUAGES)
    with pytest.raises(ValueError, match="cobol"):
        parse_languages(["cobol"])


def write(root, rel, data):
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode("utf-8"))


@pytest.fixture
def tree(tmp_path):
    root = str(tmp_path / "myrepo")
    write(root, "b.py", "print('b')\r\n")
    write(root, "a/z.c", "int z;\n")
    write(root, "a/copy.py", "print('b')\r\n")  # duplicate of b.py
    write(root, "big.js", "x" * 2000)
    write(root, "bin.py", b"\x00\x01\x02")
    write(root, "latin1.py", b"caf\xe9 = 1\n")
    write(root, "empty.go", b"")
    write(root, "README.md", "# readme\n")
    write(root, ".git/hooks/h.py", "hook = 1\n")
    write(root, "env/site-packages/p.py", "dep = 1\n")
    write(root, "src/__pycache__/m.py", "cached = 1\n")
    write(root, "web/node_modules/n.js", "mod = 1\n")
    write(root, "main.rs", "fn main() {}\n")
    return root


def test_skip_rules_dedup_and_fields(tree):
    stats = CorpusStats()
    records = list(collect([tree], max_file_bytes=1000, stats=stats))
    assert [r["path"] for r in records] == ["a/copy.py", "a/z.c", "main.rs"]  # sorted walk; b.py is the duplicate
    assert records[0] == {"text": "print('b')\r\n", "language": "Python", "repository": "myrepo", "path": "a/copy.py",
                          "sha256": hashlib.sha256(b"print('b')\r\n").hexdigest()}
    assert (stats.seen, stats.kept) == (9, 3)
    assert dict(stats.skipped) == {"duplicate": 1, "too-large": 1, "binary": 1, "not-utf8": 1, "empty": 1,
                                   "not-source": 1}
    assert "9 files seen, 3 kept" in stats.summary()


def test_language_filter_and_exclude_dirs(tree):
    records = list(collect([tree], languages=["Python"], exclude_dirs=[".git"]))
    paths = [r["path"] for r in records]
    assert paths == ["a/copy.py", "env/site-packages/p.py", "src/__pycache__/m.py"]


def test_jsonl_records_pass_through_and_dedup_across_inputs(tree, tmp_path):
    path = tmp_path / "extra.jsonl"
    with open(path, "w") as f:
        f.write(json.dumps({"text": "int z;\n", "path": "dup.c"}) + "\n")  # same text as a/z.c
        f.write(json.dumps({"text": "fun x() = 1\n", "path": "x.kt"}) + "\n")  # not one of the 12 languages
        f.write(json.dumps({"text": "puts 1\n", "language": "Ruby", "stars": 5}) + "\n")
    stats = CorpusStats()
    records = list(collect([tree, str(path)], stats=stats))
    last = records[-1]
    assert last["text"] == "puts 1\n" and last["language"] == "Ruby" and last["stars"] == 5
    assert last["repository"] == "extra" and last["sha256"] == hashlib.sha256(b"puts 1\n").hexdigest()
    assert stats.skipped["duplicate"] == 2 and stats.skipped["language"] == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a"}\n[1, 2]\n')
    with pytest.raises(UserError, match=r"bad.jsonl:2: expected a JSON object"):
        list(collect([str(bad)]))


def run(*args):
    return subprocess.run([sys.executable, os.path.join(REPO, "tools", "collect_corpus.py"), *args],
                          capture_output=True, text=True, timeout=60)


def test_tool_output_and_errors(tree, tmp_path):
    out = tmp_path / "corpus" / "c.jsonl"
    proc = run("--input", tree, "--output", str(out), "--languages", "Python,Rust", "--max-file-bytes", "1000",
               "--min-tokens", "0", "--keep-order")
    assert proc.returncode == 0, proc.stderr
    assert "files seen" in proc.stdout and "duplicate 1" in proc.stdout
    assert "documents written in the order found: " in proc.stdout
    lines = [json.loads(line) for line in open(out, encoding="utf-8")]
    assert [r["path"] for r in lines] == ["a/copy.py", "main.rs"]
    assert os.listdir(out.parent) == ["c.jsonl"]
    os.makedirs(tmp_path / "empty")
    for args in (["--input", str(tmp_path / "empty")], ["--input", str(tmp_path / "missing")],
                 ["--input", tree, "--languages", "Cobol"], ["--input", tree, "--max-file-bytes", "0"]):
        proc = run(*args, "--output", str(tmp_path / "bad" / "x.jsonl"))
        assert proc.returncode != 0 and proc.stderr.startswith("error:"), proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
        assert not os.path.exists(tmp_path / "bad" / "x.jsonl")


def test_documents_are_shuffled_so_that_contiguous_splits_mix_repositories(tmp_path):
    """Collected repository by repository, an unshuffled corpus would put only the last repository's files in
    the valid / test splits (the last documents)."""
    for repo, ext in (("alpha", "py"), ("beta", "go"), ("gamma", "c")):
        os.makedirs(tmp_path / "src" / repo / ".git")
        for i in range(30):
            (tmp_path / "src" / repo / f"f{i}.{ext}").write_text(f"value_{repo}_{i} = {i} + {i * 7} * total_{i}\n")
    args = ["--input", str(tmp_path / "src"), "--min-tokens", "0", "--near-dedup-threshold", "0"]
    ordered, mixed, again = (tmp_path / f"{name}.jsonl" for name in ("ordered", "mixed", "again"))
    for out, extra in ((ordered, ["--keep-order"]), (mixed, []), (again, [])):
        proc = run(*args, "--output", str(out), *extra)
        assert proc.returncode == 0, proc.stderr
    assert "documents written (shuffled): " in proc.stdout and "Python 30" in proc.stdout and "Go 30" in proc.stdout

    def repositories(path):
        return [json.loads(line)["repository"] for line in open(path)]

    assert repositories(ordered)[-10:] == ["gamma"] * 10
    assert set(repositories(mixed)[-10:]) == {"alpha", "beta", "gamma"}  # the last 10 documents: all three repos
    assert sorted(open(mixed)) == sorted(open(ordered)) and open(mixed).read() == open(again).read()  # seeded
    assert sorted(os.listdir(tmp_path)) == ["again.jsonl", "mixed.jsonl", "ordered.jsonl", "src"]  # no leftovers
