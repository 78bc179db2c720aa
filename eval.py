#!/usr/bin/env python3
"""Evaluate a trained model: ./deepy.py eval.py CONF.yml [...] [--key value ...]

Tasks (`eval-tasks`):
  perplexity  per language over whole files (`eval-data-dir` / `eval-files`, several ranks under torchrun),
              else over the valid or test split of `data-path` (`eval-split`);
  humaneval   pass@k of sampled (or given, `humaneval-samples-file`) completions, executed in a sandbox.
"""

import os
import sys

from megatron_lite.config_loader import load_config_from_argv, print_usage_if_asked
from megatron_lite.errors import exit_on_user_error


@exit_on_user_error
def main(argv):
    if print_usage_if_asked(argv, __doc__):
        return
    cfg = load_config_from_argv(argv, training=False)  # no batch keys needed
    from megatron_lite.parallel import state as parallel_state

    try:
        return evaluate(cfg)
    finally:
        parallel_state.destroy()  # leave the process group before exit: gloo can abort at exit otherwise


def evaluate(cfg) -> dict:
    """Run the configured eval-tasks; rank 0 reports and writes the results."""
    # torch and the tasks are imported once the config is known good (a bad key fails fast)
    import torch
    import torch.distributed as dist

    from megatron_lite.build import load_trained_model
    from megatron_lite.evaluation.registry import tasks_for
    from megatron_lite.evaluation.report import merge_into_json
    from megatron_lite.evaluation.tasks import EvalContext
    from megatron_lite.precision import resolve_inference_precision

    tasks = tasks_for(cfg.eval.eval_tasks)
    rank, world_size = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    plans = [task.plan(cfg) for task in tasks]  # every task's inputs are checked before a model is loaded
    ctx = EvalContext(None, None, None, None, rank, world_size)
    if any(task.needs_model(cfg, plan) for task, plan in zip(tasks, plans)):
        ctx.model, ctx.tokenizer, ctx.device = load_trained_model(cfg)
        ctx.precision = resolve_inference_precision(cfg.precision.inference_precision, ctx.device)  # every task's
        if rank == 0:
            print(f"inference precision: {ctx.precision.name} ({ctx.precision.reason})")
    results = {}
    for task, plan in zip(tasks, plans):
        results.update(task.run(cfg, plan, ctx))
    if cfg.eval.eval_results_prefix and rank == 0:
        merge_into_json(f"{cfg.eval.eval_results_prefix}_results.json", results)  # keeps earlier tasks' results
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
