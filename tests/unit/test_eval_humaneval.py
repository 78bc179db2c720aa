"""HumanEval: canonical solutions pass 164/164 in the sandbox; truncation; resumable, reproducible sampling."""

import json

import pytest
import torch

from megatron_lite.config import GenerateConfig, ModelConfig
from megatron_lite.data.tokenizer import Tokenizer, train_byte_level_bpe
from megatron_lite.errors import UserError
from megatron_lite.evaluation import humaneval as he
from megatron_lite.evaluation.sandbox import Sandbox, SandboxLimits
from megatron_lite.generation.engine import TextGenerator
from megatron_lite.model.gpt import GPTModel
from tests.conftest import tiny_model_config

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def problems():
    return he.load_problems()


def test_canonical_solutions_pass_all_164(problems):
    samples = [{"task_id": p["task_id"], "completion": p["canonical_solution"]} for p in problems]
    samples += [{"task_id": p["task_id"], "completion": "    return None\n"} for p in problems[:20]]
    with Sandbox(4, SandboxLimits(), uid_base=63000) as sandbox:
        result = he.evaluate(problems, samples, sandbox, [1, 10])
    assert len(problems) == 164 and result["tasks"] == 164
    assert result["passed"] == 164, [r["task_id"] for r in result["results"][:164] if not r["passed"]]
    assert not any(r["passed"] for r in result["results"][164:])  # a wrong body fails every one of its tests
    assert result["pass_at_k"] == {"pass@1": pytest.approx((144 + 20 * 0.5) / 164)}  # n = 1 or 2: no pass@10


def test_truncation_stops_at_a_new_top_level_statement():
    body = "    x = 1\n    if x:\n        return x\n"
    for tail in ("\ndef other():\n    pass\n", "\nclass A:\n    pass\n", "\nif __name__ == '__main__':\n",
                 "\nprint(f(1))\n", "\n# tests\n", "\n@decorator\ndef g(): pass\n"):
        assert he.truncate(body + tail) == body
    assert he.truncate(body) == body
    assert he.truncate("    return [x for x in y\n            if x]\n") == "    return [x for x in y\n            if x]\n"


def test_polycoder_style_is_the_fork_s_first_block_and_stripped_prompt(problems):
    """As frankxu2004/gpt-neox human_eval.py: samples were generated from prompt.strip(), then each completion is
    split at the first of its stop strings (no trailing space, so `\nifx` stops too) and right-stripped."""
    text = "    x = 1\n    return x  \n\nifx = 2\ndef g(): pass\n"
    assert he.truncate(text, "polycoder") == "    x = 1\n    return x"
    assert he.truncate(text) == "    x = 1\n    return x  \n\nifx = 2"  # codex: a whole `if ` statement only
    assert he.generation_prompt(problems[0], "polycoder") == problems[0]["prompt"].strip()
    assert he.generation_prompt(problems[0]) == problems[0]["prompt"]


def test_job_runs_the_completion_inside_and_the_tests_in_the_judge(problems):
    job = he.job_of(problems[0], problems[0]["canonical_solution"])
    assert job.code == problems[0]["prompt"] + problems[0]["canonical_solution"]
    assert job.check.startswith(problems[0]["test"]) and job.check.endswith("check(has_close_elements)\n")
    assert job.context == problems[0]["prompt"] + "    pass\n" and job.entry_point == "has_close_elements"


def test_bad_inputs(tmp_path, problems):
    with pytest.raises(UserError, match="does not exist"):
        he.load_problems(str(tmp_path / "missing.jsonl"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"task_id": "x"}) + "\n")
    with pytest.raises(UserError, match="is not HumanEval jsonl"):
        he.load_problems(str(bad))
    with Sandbox(1, SandboxLimits(), uid_base=63010) as sandbox:
        with pytest.raises(UserError, match="not in the problem file"):
            he.evaluate(problems[:1], [{"task_id": "Other/1", "completion": ""}], sandbox, [1])
        with pytest.raises(UserError, match="no samples for 1 task"):
            he.evaluate(problems[:2], [{"task_id": problems[0]["task_id"], "completion": ""}], sandbox, [1])


def test_sampling_resumes_where_it_stopped_and_samples_the_same(tmp_path, problems):
    tokenizer = Tokenizer(train_byte_level_bpe([p["prompt"] for p in problems[:20]], 300), "test")
    torch.manual_seed(0)
    model = GPTModel(tiny_model_config(num_layers=1, hidden_size=32, num_attention_heads=4, seq_length=64,
                                 max_position_embeddings=64, padded_vocab_size=320)).eval()
    generator = TextGenerator(model, tokenizer, GenerateConfig(maximum_tokens=6, temperature=1.0), 64)
    whole, resumed = tmp_path / "whole.jsonl", tmp_path / "resumed.jsonl"
    first = he.generate_samples(generator, problems[:3], 4, 3, str(whole), seed=7)
    assert [s["task_id"] for s in first] == [p["task_id"] for p in problems[:3] for _ in range(4)]
    he.generate_samples(generator, problems[:3], 3, 3, str(resumed), seed=7)  # a run stopped after 3 per task
    with open(resumed, "a") as f:
        f.write('{"task_id": "HumanEval/0", "compl')  # ... while writing a line
    again = he.generate_samples(generator, problems[:3], 4, 3, str(resumed), seed=7)
    assert sorted(json.dumps(s) for s in again) == sorted(json.dumps(s) for s in first)
    assert len(resumed.read_text().splitlines()) == 13  # 12 samples and the cut-short line, on its own
    assert len({s["completion"] for s in first}) > 1  # sampled, not one repeated string
    fewer = he.generate_samples(generator, problems[:2], 2, 3, str(resumed), seed=7)  # n=2 of what is there
    assert fewer == [s for p in problems[:2] for s in [x for x in first if x["task_id"] == p["task_id"]][:2]]


def test_one_and_eight_workers_give_identical_humaneval_verdicts(problems):
    samples = [{"task_id": p["task_id"], "completion": p["canonical_solution"]} for p in problems]
    samples += [{"task_id": p["task_id"], "completion": "    return None\n"} for p in problems[:20]]
    samples += [{"task_id": problems[0]["task_id"], "completion": "    while True:\n        pass\n"}]
    runs = []
    for workers in (1, 8):
        with Sandbox(workers, SandboxLimits(cpu_timeout=1.0)) as sandbox:
            result = he.evaluate(problems, samples, sandbox, [1])
        runs.append([(r["status"], r["detail"]) for r in result["results"]])
    assert runs[0] == runs[1]
    assert runs[0][-1][0] == "timed out" and sum(s == "passed" for s, _ in runs[0]) == 164
