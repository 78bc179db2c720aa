"""eval.py at model-parallel-size 2 and 2 x 2 data-parallel gives one process's results: per-language perplexity
(vocabulary-parallel log-likelihood, files split over data-parallel ranks only), split perplexity, and HumanEval
(generation on the tensor-parallel group, execution on rank 0)."""

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO, cpu_env, run_tool
from tests.e2e.test_eval_cli import language_tree, trained  # noqa: F401 - a fixture

pytestmark = pytest.mark.timeout(600)
HUMANEVAL = """
humaneval-limit: 2
humaneval-num-samples: 2
humaneval-batch-size: 2
humaneval-k: [1]
humaneval-workers: 1
maximum-tokens: 12
temperature: 0.0
"""


def eval_run(configs, ckpt, prefix, procs, tp, *extra):
    """eval.py in `procs` processes (gloo on the CPU, also on a GPU machine), fp32 (tensor parallelism changes
    the order of sums: bf16 would differ by its rounding); its results JSON."""
    args = ["eval.py", *configs, "--load", ckpt, "--model-parallel-size", str(tp), "--eval-results-prefix", prefix,
            "--inference-precision", "fp32", *extra]
    if procs == 1:
        run_tool(*args)
    else:
        env = cpu_env(OMP_NUM_THREADS="1")
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                               str(procs), *args], cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
    return json.load(open(f"{prefix}_results.json"))


def assert_same_perplexity(one: dict, other: dict):
    assert one.keys() == other.keys()
    for name in one:
        for key in ("files", "tokens", "bytes", "pygments_tokens"):
            assert one[name][key] == other[name][key], (name, key)
        assert other[name]["loss"] == pytest.approx(one[name]["loss"], rel=1e-5), name


# Both tests in one pytest worker: the module's model is trained once.
@pytest.mark.xdist_group("eval_parallel")
def test_per_language_perplexity_at_tp2_dp2_equals_one_process(tmp_path, trained):  # noqa: F811
    """tp 2 x dp 2: the vocabulary split within each group and the files split between the groups at once (tp 2
    alone is covered below)."""
    config, ckpt = trained
    language_tree(tmp_path / "langs")
    extra = ["--eval-data-dir", str(tmp_path / "langs"), "--eval-context-length", "32", "--eval-stride", "24"]
    one = eval_run([config], ckpt, str(tmp_path / "one" / "run"), 1, 1, *extra)["languages"]
    other = eval_run([config], ckpt, str(tmp_path / "4x2" / "run"), 4, 2, *extra)["languages"]
    assert_same_perplexity(one, other)


@pytest.mark.xdist_group("eval_parallel")
def test_split_perplexity_and_humaneval_at_tp2_and_tp2_dp2_equal_one_process(tmp_path, trained):  # noqa: F811
    config, ckpt = trained
    overrides = tmp_path / "humaneval.yml"
    overrides.write_text(HUMANEVAL)
    results = []
    for procs, tp in ((1, 1), (2, 2), (4, 2)):
        prefix = str(tmp_path / f"{procs}x{tp}" / "run")
        results.append(eval_run([config, str(overrides)], ckpt, prefix, procs, tp, "--eval-tasks",
                                "[perplexity, humaneval]", "--eval-split", "valid"))
        results[-1]["samples"] = open(f"{prefix}_humaneval_samples.jsonl").read()
    one = results[0]
    assert one["valid"]["tokens"] > 0 and len(one["samples"].splitlines()) == 4
    for other in results[1:]:
        assert other["valid"]["tokens"] == one["valid"]["tokens"]
        assert other["valid"]["loss"] == pytest.approx(one["valid"]["loss"], rel=1e-5)
        assert other["samples"] == one["samples"]  # greedy: the same text
        assert other["humaneval"]["samples"] == 4 and other["humaneval"]["pass_at_k"] == one["humaneval"]["pass_at_k"]
