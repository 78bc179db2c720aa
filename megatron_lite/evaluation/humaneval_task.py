"""The HumanEval task: pass@k of sampled (or given, humaneval-samples-file) completions, executed in the sandbox."""

import functools
import os
import tempfile

import torch.distributed as dist

from megatron_lite.errors import UserError
from megatron_lite.evaluation import humaneval as he
from megatron_lite.evaluation.report import write_json
from megatron_lite.evaluation.sandbox import MAX_WORKERS, Sandbox, SandboxLimits
from megatron_lite.evaluation.tasks import EvalContext, EvalTask
from megatron_lite.generation.engine import TextGenerator
from megatron_lite.parallel import state as parallel_state


def plan(cfg):
    """(problems, given completions or None), checked before any model is loaded."""
    e = cfg.eval
    for key in ("humaneval_num_samples", "humaneval_batch_size", "humaneval_workers", "humaneval_memory_mb",
                "humaneval_disk_mb"):
        if getattr(e, key) < 1:
            raise UserError(f"{key.replace('_', '-')} must be a positive integer, got {getattr(e, key)}")
    if e.humaneval_workers > MAX_WORKERS:
        raise UserError(f"humaneval-workers must be at most {MAX_WORKERS}, got {e.humaneval_workers}")
    if e.humaneval_cpu_timeout <= 0 or e.humaneval_wall_timeout <= 0:
        raise UserError("humaneval-cpu-timeout and humaneval-wall-timeout must be positive")
    if not e.humaneval_k or min(e.humaneval_k) < 1 or e.humaneval_timeout_retries < 0:
        raise UserError(f"humaneval-k needs positive integers (got {e.humaneval_k}) and humaneval-timeout-retries "
                        f"a count >= 0 (got {e.humaneval_timeout_retries})")
    problems = he.load_problems(e.humaneval_problem_file, e.humaneval_limit)
    if not e.humaneval_samples_file:
        return problems, None
    if not os.path.isfile(e.humaneval_samples_file):
        raise UserError(f"humaneval-samples-file: {e.humaneval_samples_file} does not exist")
    wanted = {p["task_id"] for p in problems}
    samples = [s for s in he.read_jsonl(e.humaneval_samples_file) if s.get("task_id") in wanted]
    if any("completion" not in s for s in samples):
        raise UserError(f"humaneval-samples-file: {e.humaneval_samples_file}: every line needs 'completion'")
    return problems, samples


def humaneval(cfg, plan, model, tokenizer, precision, rank):
    """pass@k on HumanEval: sample (resumably) or take the given completions, execute them in the sandbox.
    The first data-parallel replica's tensor-parallel group generates (rank 0 writes); rank 0 executes."""
    e = cfg.eval
    problems, samples = plan
    prefix = e.eval_results_prefix
    par = parallel_state.get()
    if samples is None:
        if par.dp_rank != 0:
            return {}
        generator = TextGenerator(model, tokenizer, cfg.generate, cfg.model.max_position_embeddings,
                                  seed=cfg.train.seed, precision=precision)
        path = f"{prefix}_humaneval_samples.jsonl" if prefix else os.path.join(tempfile.mkdtemp(), "samples.jsonl")
        synced = functools.partial(dist.barrier, group=par.tp_group) if par.tp_size > 1 else None
        samples = he.generate_samples(generator, problems, e.humaneval_num_samples, e.humaneval_batch_size, path,
                                      cfg.train.seed, e.humaneval_style, write=rank == 0, after_reading=synced)
    if rank != 0:
        return {}
    limits = SandboxLimits(e.humaneval_cpu_timeout, e.humaneval_wall_timeout, e.humaneval_memory_mb,
                           disk_mb=e.humaneval_disk_mb, retries=e.humaneval_timeout_retries)
    cache = e.humaneval_cache or (f"{prefix}_humaneval_cache.jsonl" if prefix else None)
    with Sandbox(e.humaneval_workers, limits, cache, allow_unisolated=e.humaneval_allow_unisolated) as sandbox:
        print(f"sandbox: {e.humaneval_workers} workers, {limits.cpu_timeout} CPU s, {limits.memory_mb} MiB, "
              f"{limits.disk_mb} MiB of disk, "
              + ("isolated (user, mount, PID and network namespaces; read-only filesystem; tests judged outside)"
                 if sandbox.isolated else "NOT isolated (humaneval-allow-unisolated)"))
        result = he.evaluate(problems, samples, sandbox, e.humaneval_k)
    scores = "  ".join(f"{k} {v:.4f}" for k, v in result["pass_at_k"].items())
    print(f"humaneval {scores} ({result['passed']} of {result['samples']} samples passed, {result['tasks']} tasks)")
    per_sample = result.pop("results")
    if prefix:
        print(f"wrote {write_json(f'{prefix}_humaneval.json', dict(result, samples_detail=per_sample))}")
    return {"humaneval": result}


def run(cfg, planned, ctx: EvalContext) -> dict:
    return humaneval(cfg, planned, ctx.model, ctx.tokenizer, ctx.precision.name if ctx.precision else None, ctx.rank)


# Given completions need no model.
TASK = EvalTask("humaneval", plan, run, needs_model=lambda cfg, planned: planned[1] is None)
