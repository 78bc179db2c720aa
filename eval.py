#!/usr/bin/env python3
"""Evaluate a trained model: ./deepy.py eval.py CONF.yml [...] [--key value ...]

Tasks (`eval-tasks`):
  perplexity  per language over whole files (`eval-data-dir` / `eval-files`, several ranks under torchrun),
              else over the valid or test split of `data-path` (`eval-split`);
  humaneval   pass@k of sampled (or given, `humaneval-samples-file`) completions, executed in a sandbox.
"""

import functools
import math
import os
import sys
import tempfile

from megatron_lite.config_loader import load_config_from_argv, print_usage_if_asked
from megatron_lite.errors import UserError, exit_on_user_error

TASKS = ("perplexity", "humaneval")


def split_perplexity(cfg, model, device, amp, rank):
    """Perplexity of the valid or test split of data-path, as in training's validation."""
    from megatron_lite.data.gpt_dataset import build_train_valid_test_datasets
    from megatron_lite.evaluation.perplexity import perplexity, unigram_entropy

    if cfg.data.data_path is None:
        raise UserError("no evaluation data: set 'data-path' to a preprocessed PREFIX, or 'eval-data-dir' / 'eval-files'")
    want = (0, 1, 0) if cfg.eval.eval_split == "valid" else (0, 0, 1)  # one pass over the chosen split
    splits = build_train_valid_test_datasets(cfg.data.data_path, cfg.data.split, cfg.model.seq_length,
                                             num_samples=want, seed=cfg.train.seed)
    dataset = splits[1] if cfg.eval.eval_split == "valid" else splits[2]
    if dataset is None:
        raise UserError(f"split '{cfg.data.split}' gives the {cfg.eval.eval_split} split no documents (key 'split')")
    result = perplexity(model, dataset, cfg.train.train_micro_batch_size_per_gpu, device, amp)
    if rank != 0:
        return {}
    unigram = result["unigram_entropy"] = unigram_entropy(dataset)
    print(f"{cfg.eval.eval_split} perplexity {result['perplexity']:.3f} (loss {result['loss']:.4f} nats/token "
          f"over {result['tokens']} tokens; a unigram model of this split: perplexity {math.exp(unigram):.3f}, "
          f"loss {unigram:.4f})")
    if cfg.eval.eval_results_prefix:
        from megatron_lite.evaluation.report import write_json

        print(f"wrote {write_json(f'{cfg.eval.eval_results_prefix}_perplexity.json', {cfg.eval.eval_split: result})}")
    return {cfg.eval.eval_split: result}


def plan_language_perplexity(cfg):
    """(files, context, stride) to score, checked before any model is loaded."""
    from megatron_lite.data.languages import parse_languages
    from megatron_lite.evaluation.eval_files import find_eval_files

    e = cfg.eval
    try:
        languages = parse_languages(e.eval_languages)
    except ValueError as err:
        raise UserError(f"eval-languages: {err}") from None
    context = e.eval_context_length or cfg.model.seq_length
    if e.eval_polycoder_compat:
        if e.eval_context_length or e.eval_stride:
            raise UserError("eval-polycoder-compat sets the windows itself (disjoint, max-position-embeddings "
                            "tokens); leave eval-context-length and eval-stride unset")
        context = cfg.model.max_position_embeddings
    stride = e.eval_stride or context
    if not 1 < context <= cfg.model.max_position_embeddings:
        raise UserError(f"eval-context-length {context} must be between 2 and max-position-embeddings "
                        f"{cfg.model.max_position_embeddings}")
    if not 0 < stride <= context:
        raise UserError(f"eval-stride {stride} must be between 1 and the context length {context}")
    if e.eval_batch_size < 1:
        raise UserError(f"eval-batch-size must be a positive integer, got {e.eval_batch_size}")
    return find_eval_files(e.eval_data_dir, e.eval_files, languages), context, stride


def language_perplexity(cfg, plan, model, tokenizer, device, amp, rank, world_size):
    """Perplexity per language of whole files scored with rolling windows; files shared out across data-parallel
    ranks."""
    from megatron_lite.evaluation.perplexity import score_files, summarize
    from megatron_lite.evaluation.report import markdown_table, write_perplexity_report

    e = cfg.eval
    files, context, stride = plan
    table = score_files(model, tokenizer, files, context, stride, e.eval_batch_size, device, amp)
    summary = summarize(files, table)
    if rank == 0:
        print(markdown_table(summary), end="")
        overall = summary["overall"]
        print(f"overall perplexity {overall['perplexity']:.3f} per token, {overall['word_perplexity']:.3f} per "
              f"Pygments token ({overall['bits_per_byte']:.3f} bits/byte, "
              f"{overall['files']} files, {overall['tokens']} tokens, context {context}, stride {stride}, "
              f"{world_size} rank(s))")
        if e.eval_results_prefix:
            title = f"Perplexity per language ({cfg.train.load})"
            for path in write_perplexity_report(e.eval_results_prefix, summary, title):
                print(f"wrote {path}")
    return {"languages": summary}


def plan_humaneval(cfg):
    """(problems, given completions or None), checked before any model is loaded."""
    from megatron_lite.evaluation import humaneval as he
    from megatron_lite.evaluation.sandbox import MAX_WORKERS

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
    from megatron_lite.evaluation import humaneval as he
    from megatron_lite.evaluation.report import write_json
    from megatron_lite.evaluation.sandbox import Sandbox, SandboxLimits
    import torch.distributed as dist

    from megatron_lite.parallel import state as parallel_state

    e = cfg.eval
    problems, samples = plan
    prefix = e.eval_results_prefix
    par = parallel_state.get()
    if samples is None:
        from megatron_lite.generation.engine import TextGenerator

        if par.dp_rank != 0:
            return {}
        generator = TextGenerator(model, tokenizer, cfg.generate, cfg.model.max_position_embeddings, seed=cfg.train.seed,
                                  precision=precision)
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
    unknown = set(cfg.eval.eval_tasks) - set(TASKS)
    if unknown:
        raise UserError(f"eval-tasks: unknown task(s) {sorted(unknown)}; available: {', '.join(TASKS)}")
    rank, world_size = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1:
        import torch
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    by_language = "perplexity" in cfg.eval.eval_tasks and (cfg.eval.eval_data_dir or cfg.eval.eval_files)
    plan = plan_language_perplexity(cfg) if by_language else None
    coding = plan_humaneval(cfg) if "humaneval" in cfg.eval.eval_tasks else None
    model, tokenizer, device, precision = None, None, None, None
    if not (cfg.eval.eval_tasks == ["humaneval"] and cfg.eval.humaneval_samples_file):  # no model needed
        from megatron_lite.build import load_trained_model

        from megatron_lite.precision import resolve_inference_precision

        model, tokenizer, device = load_trained_model(cfg)
        precision = resolve_inference_precision(cfg.precision.inference_precision, device)  # once, for every task
        if rank == 0:
            print(f"inference precision: {precision.name} ({precision.reason})")
    results = {}
    if "perplexity" in cfg.eval.eval_tasks:
        from megatron_lite.precision import autocast

        amp = functools.partial(autocast, device, precision.name)
        if by_language:
            results.update(language_perplexity(cfg, plan, model, tokenizer, device, amp, rank, world_size))
        else:  # every rank: data-parallel ranks share the batches, tensor-parallel ranks hold vocabulary slices
            results.update(split_perplexity(cfg, model, device, amp, rank))
    if "humaneval" in cfg.eval.eval_tasks:
        results.update(humaneval(cfg, coding, model, tokenizer, precision.name if precision else None, rank))
    if cfg.eval.eval_results_prefix and rank == 0:
        from megatron_lite.evaluation.report import merge_into_json

        merge_into_json(f"{cfg.eval.eval_results_prefix}_results.json", results)  # keeps earlier tasks' results
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
