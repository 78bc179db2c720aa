"""The perplexity task: per language over whole files (eval-data-dir / eval-files, files shared out over
data-parallel ranks), else over the valid or test split of data-path (eval-split), as training validates."""

import functools
import math

from megatron_lite.data.gpt_dataset import build_train_valid_test_datasets
from megatron_lite.data.languages import parse_languages
from megatron_lite.errors import UserError
from megatron_lite.evaluation.eval_files import find_eval_files
from megatron_lite.evaluation.perplexity import perplexity, score_files, summarize, unigram_entropy
from megatron_lite.evaluation.report import markdown_table, write_json, write_perplexity_report
from megatron_lite.evaluation.tasks import EvalContext, EvalTask
from megatron_lite.precision import autocast


def split_perplexity(cfg, model, device, amp, rank):
    """Perplexity of the valid or test split of data-path, as in training's validation."""
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
        print(f"wrote {write_json(f'{cfg.eval.eval_results_prefix}_perplexity.json', {cfg.eval.eval_split: result})}")
    return {cfg.eval.eval_split: result}


def plan_language_perplexity(cfg):
    """(files, context, stride) to score, checked before any model is loaded."""
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


def plan(cfg):
    """('languages', (files, context, stride)) or ('split', None), checked before any model is loaded."""
    if cfg.eval.eval_data_dir or cfg.eval.eval_files:
        return "languages", plan_language_perplexity(cfg)
    if cfg.data.data_path is None:
        raise UserError("no evaluation data: set 'data-path' to a preprocessed PREFIX, or 'eval-data-dir' / "
                        "'eval-files'")
    return "split", None


def run(cfg, planned, ctx: EvalContext) -> dict:
    amp = functools.partial(autocast, ctx.device, ctx.precision.name)
    kind, files = planned
    if kind == "languages":
        return language_perplexity(cfg, files, ctx.model, ctx.tokenizer, ctx.device, amp, ctx.rank, ctx.world_size)
    # every rank: data-parallel ranks share the batches, tensor-parallel ranks hold vocabulary slices
    return split_perplexity(cfg, ctx.model, ctx.device, amp, ctx.rank)


TASK = EvalTask("perplexity", plan, run)
