"""eval.py from the command line: perplexity per language (one and two ranks), HumanEval, bad input."""

import json
import math
import os
import re
import shutil
import subprocess
import sys
import sysconfig

import pygments.lexers
import pytest

from megatron_lite.evaluation.humaneval import load_problems
from tests.conftest import REPO, cpu_env, run_tool

pytestmark = pytest.mark.timeout(300)
STDLIB = sysconfig.get_paths()["stdlib"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, small_corpus):
    """A micro model trained for a few steps on the small corpus; returns (config path, checkpoint dir)."""
    root = tmp_path_factory.mktemp("eval_model")
    config = root / "micro.yml"
    config.write_text(f"""
num-layers: 2
hidden-size: 64
num-attention-heads: 4
seq-length: 64
max-position-embeddings: 64
pos-emb: rotary
no-weight-tying: true
tokenizer-type: HFTokenizer
train_micro_batch_size_per_gpu: 4
train-iters: 6
lr: 0.003
data-path: {small_corpus['prefix']}
vocab-file: {small_corpus['tokenizer']}
save: {root / 'ckpt'}
""")
    run_tool("deepy.py", "train.py", str(config))
    return str(config), str(root / "ckpt")


def language_tree(root):
    """One folder per language with real files (stdlib Python, small C and Go), plus a file of no language."""
    for name in ("Python", "C", "Go"):
        (root / name).mkdir(parents=True)
    for name in ("json/scanner.py", "textwrap.py", "colorsys.py"):
        shutil.copy(os.path.join(STDLIB, name), root / "Python" / os.path.basename(name))
    (root / "C" / "add.c").write_text("int add(int a, int b) {\n    return a + b;\n}\n")
    (root / "C" / "add.h").write_text("int add(int a, int b);\n")
    (root / "Go" / "main.go").write_text("package main\n\nimport \"fmt\"\n\nfunc main() {\n\tfmt.Println(1)\n}\n")
    (root / "NOTES.txt").write_text("not scored")


def test_perplexity_per_language_on_one_and_two_ranks(tmp_path, trained):
    config, ckpt = trained
    language_tree(tmp_path / "langs")
    args = [config, "--load", ckpt, "--eval-data-dir", str(tmp_path / "langs"), "--eval-context-length", "32",
            "--eval-stride", "24", "--eval-batch-size", "8"]
    out = run_tool("deepy.py", "eval.py", *args, "--eval-results-prefix", str(tmp_path / "one" / "run")).stdout
    assert "| Python | 3 |" in out and "| C | 2 |" in out and "| Go | 1 |" in out
    assert "1 files in" in out and "not scored (1 .txt)" in out and "overall perplexity" in out
    one = json.load(open(tmp_path / "one" / "run_perplexity.json"))
    assert sorted(os.listdir(tmp_path / "one")) == ["run_perplexity.json", "run_perplexity.md", "run_perplexity.png",
                                                    "run_results.json"]
    assert one["overall"]["files"] == 6 and one["overall"]["bytes"] == sum(
        os.path.getsize(p) for p in (tmp_path / "langs").rglob("*.*") if p.suffix != ".txt")

    env = cpu_env(OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "eval.py", *args, "--eval-results-prefix", str(tmp_path / "two" / "run")],
                          cwd=REPO, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 rank(s)" in proc.stdout
    two = json.load(open(tmp_path / "two" / "run_perplexity.json"))
    assert one.keys() == two.keys()
    for name in one:
        assert {k: v for k, v in one[name].items() if k in ("files", "tokens", "bytes")} == \
               {k: v for k, v in two[name].items() if k in ("files", "tokens", "bytes")}
        assert two[name]["loss"] == pytest.approx(one[name]["loss"], rel=1e-5)


def test_each_file_log_likelihood_equals_lm_eval_harness_on_the_exported_model(tmp_path, trained):
    """Independent check of eval.py's numbers: the trained model exported with convert_checkpoint.py to-hf and
    scored by lm-eval-harness's own Hugging Face model class (loglikelihood_rolling: end-of-text as the first
    token's context, disjoint windows of max_length, the last one back-filled) gives each file the log-likelihood
    eval.py gives it in its PolyCoder-compatible mode (one file per language, fp32, windows of the model's 64
    positions), and the PolyCoder fork's perplexity per Pygments token follows from it."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    config, ckpt = trained
    run_tool("tools/convert_checkpoint.py", "to-hf", "--load", ckpt, "--output", str(tmp_path / "hf"))
    language_tree(tmp_path / "langs")
    files = {"Python": tmp_path / "langs" / "Python" / "textwrap.py", "C": tmp_path / "langs" / "C" / "add.c",
             "Go": tmp_path / "langs" / "Go" / "main.go"}
    run_tool("deepy.py", "eval.py", config, "--load", ckpt, "--eval-files", ",".join(map(str, files.values())),
             "--eval-polycoder-compat", "true", "--eval-batch-size", "8", "--eval-results-prefix", str(tmp_path / "run"),
             "--precision", "fp32")
    ours = json.load(open(tmp_path / "run_perplexity.json"))
    harness = HFLM(pretrained=str(tmp_path / "hf"), device="cpu", dtype="float32", batch_size=1, max_length=64)
    texts = [path.read_text() for path in files.values()]
    theirs = harness.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), i)
                                            for i, text in enumerate(texts)])
    assert ours["Python"]["tokens"] > 10 * 64  # many windows, the last one back-filled
    for language, value, text in zip(files, theirs, texts):
        assert -ours[language]["loss"] * ours[language]["tokens"] == pytest.approx(value, rel=1e-5), language
        words = len(list(pygments.lexers.get_lexer_by_name(language.lower()).get_tokens(text)))  # the fork's count
        assert ours[language]["word_perplexity"] == pytest.approx(math.exp(-value / words), rel=1e-5), language


def test_humaneval_of_given_completions(tmp_path):
    problems = load_problems()
    samples = tmp_path / "samples.jsonl"
    with open(samples, "w") as f:
        for p in problems:
            f.write(json.dumps({"task_id": p["task_id"], "completion": p["canonical_solution"]}) + "\n")
            f.write(json.dumps({"task_id": p["task_id"], "completion": "    while True:\n        pass\n"}) + "\n")
    prefix = str(tmp_path / "he")
    args = ["eval.py", "configs/tiny.yml", "configs/eval_humaneval.yml", "--humaneval-samples-file", str(samples),
            "--humaneval-limit", "8", "--humaneval-cpu-timeout", "0.5", "--eval-results-prefix", prefix]
    out = run_tool(*args).stdout
    assert "humaneval pass@1 0.5000 (8 of 16 samples passed, 8 tasks)" in out
    report = json.load(open(f"{prefix}_humaneval.json"))
    assert [r["status"] for r in report["samples_detail"][:2]] == ["passed", "timed out"]
    cached = len(open(f"{prefix}_humaneval_cache.jsonl").read().splitlines())
    assert cached == 16
    assert run_tool(*args).stdout == out  # the rerun takes every verdict from the cache
    assert len(open(f"{prefix}_humaneval_cache.jsonl").read().splitlines()) == cached


def test_each_task_writes_its_file_and_the_results_file_keeps_earlier_tasks(tmp_path, trained):
    config, ckpt = trained
    prefix = str(tmp_path / "run")
    out = run_tool("deepy.py", "eval.py", config, "--load", ckpt, "--eval-split", "valid",
                   "--eval-results-prefix", prefix).stdout
    assert re.search(r"a unigram model of this split: perplexity [0-9.]+, loss [0-9.]+\)", out), out
    assert set(json.load(open(f"{prefix}_perplexity.json"))) == {"valid"}
    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps({"task_id": p["task_id"], "completion": p["canonical_solution"]}) + "\n"
                               for p in load_problems()[:2]))
    run_tool("eval.py", config, "--eval-tasks", "humaneval", "--humaneval-samples-file", str(samples),
             "--humaneval-limit", "2", "--eval-results-prefix", prefix)
    assert set(json.load(open(f"{prefix}_results.json"))) == {"valid", "humaneval"}  # perplexity is still there


def test_humaneval_sampling_from_a_trained_model_resumes(tmp_path, trained):
    config, ckpt = trained
    prefix = str(tmp_path / "he")
    args = ["deepy.py", "eval.py", config, "--load", ckpt, "--eval-tasks", "[humaneval]", "--humaneval-limit", "2",
            "--humaneval-num-samples", "3", "--humaneval-k", "[1, 2]", "--maximum-tokens", "12", "--temperature",
            "0.8", "--eval-results-prefix", prefix]
    out = run_tool(*args).stdout
    assert "humaneval pass@1" in out and "pass@2" in out and "of 6 samples passed, 2 tasks" in out
    lines = open(f"{prefix}_humaneval_samples.jsonl").read().splitlines()
    assert [json.loads(line)["task_id"] for line in lines] == ["HumanEval/0"] * 3 + ["HumanEval/1"] * 3
    assert run_tool(*args).stdout == out  # nothing is sampled or executed again
    assert open(f"{prefix}_humaneval_samples.jsonl").read().splitlines() == lines


@pytest.mark.parametrize("extra,message", [
    (["--eval-tasks", "[perplexity, mbpp]"], "eval-tasks: unknown task(s) ['mbpp']"),
    (["--eval-files", "[/nonexistent/x.py]"], "eval-files: /nonexistent/x.py does not exist"),
    (["--eval-files", "[eval.py]", "--eval-context-length", "16", "--eval-stride", "32"],
     "eval-stride 32 must be between 1 and the context length 16"),
    (["--eval-files", "[eval.py]", "--eval-languages", "[Cobol]"], "eval-languages: unknown language 'Cobol'"),
    (["--eval-tasks", "[humaneval]", "--humaneval-samples-file", "/nonexistent.jsonl"],
     "humaneval-samples-file: /nonexistent.jsonl does not exist"),
    (["--eval-tasks", "[humaneval]", "--humaneval-k", "[0, 10]"], "humaneval-k needs positive integers"),
])
def test_bad_input_is_one_line(trained, extra, message):
    config, ckpt = trained
    proc = run_tool("deepy.py", "eval.py", config, "--load", ckpt, *extra, check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ") and message in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_lm_eval_harness_scores_what_eval_py_scores(tmp_path, trained):
    """lm-eval's bits per byte of a local task (its own metric code) equals eval.py's on the same files."""
    config, ckpt = trained
    docs = [open(os.path.join(STDLIB, name)).read()[:2000] for name in ("colorsys.py", "json/scanner.py")]
    (tmp_path / "files").mkdir()
    for i, text in enumerate(docs):
        (tmp_path / "files" / f"d{i}.py").write_text(text)
    with open(tmp_path / "docs.jsonl", "w") as f:
        f.writelines(json.dumps({"text": text}) + "\n" for text in docs)
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "code.yaml").write_text(f"""task: local_code
dataset_path: json
dataset_kwargs:
  data_files:
    test: {tmp_path / 'docs.jsonl'}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: bits_per_byte
""")
    env = cpu_env(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", HF_DATASETS_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "-m", "megatron_lite.evaluation.lm_eval_adapter", "run", "--model",
                           "megatron_lite", "--model_args", f"config={config},load={ckpt}", "--include_path",
                           str(tmp_path / "tasks"), "--tasks", "local_code"],
                          cwd=REPO, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    theirs = float(re.search(r"bits_per_byte\s*\|\S*\s*\|\s*([0-9.]+)", proc.stdout).group(1))
    out = run_tool("deepy.py", "eval.py", config, "--load", ckpt, "--eval-data-dir", str(tmp_path / "files"),
                   "--eval-context-length", "64").stdout
    ours = float(re.search(r"overall perplexity \S+ per token, \S+ per Pygments token \(([0-9.]+) bits/byte",
                           out).group(1))
    assert theirs == pytest.approx(ours, abs=2e-3)  # both printed rounded
