"""The conversions behind tools/convert_checkpoint.py; each writes its output atomically and checks its input."""

import os

from megatron_lite.config import Config
from megatron_lite.config_loader import load_config
from megatron_lite.data.tokenizer import build_tokenizer
from megatron_lite.errors import UserError
from megatron_lite.interop.hf import load_hf_dir, save_hf_dir
from megatron_lite.interop.neox import layer_files, read_neox_checkpoint
from megatron_lite.model.gpt import meta_model
from megatron_lite.parallel.reshard import merge_tp_shards, partition_facts, split_tp
from megatron_lite.training.checkpoint import (STEP_DIR, read_weights_checkpoint, resolve_checkpoint,
                                               write_weights_checkpoint)


def _tokenizer(cfg: Config):
    d = cfg.data
    return build_tokenizer(d.tokenizer_type, d.vocab_file, d.merge_file)


def _step_of(step_dir: str) -> int:
    m = STEP_DIR.match(os.path.basename(os.path.normpath(step_dir)))
    return int(m.group(1)) if m else 0


def _full_model_config(cfg: Config, weights: dict) -> None:
    """Fix the vocabulary size to the weights' (it was padded for the training run's tp size)."""
    cfg.model.padded_vocab_size = weights["embed_in.weight"].size(0)


def ours_to_hf(load: str, out: str) -> None:
    """Our checkpoint (any tp size) -> a Hugging Face GPTNeoXForCausalLM directory."""
    cfg, shards = read_weights_checkpoint(load)
    weights = merge_tp_shards(shards, partition_facts(meta_model(cfg.model)))
    _full_model_config(cfg, weights)
    save_hf_dir(out, weights, cfg.model, _tokenizer(cfg))


def hf_to_ours(src: str, out: str) -> str:
    """A Hugging Face GPT-NeoX directory -> our weights-only checkpoint OUT/global_step0 (tp 1)."""
    if not os.path.isfile(os.path.join(src, "config.json")):
        raise UserError(f"{src} is not a Hugging Face model directory (no config.json)")
    cfg = load_config([], ["--train-micro-batch-size-per-gpu", "1"])
    cfg.train.gradient_accumulation_steps = cfg.train.train_batch_size = None  # left to the user's training config
    weights = load_hf_dir(src, cfg.model, cfg.data)
    cfg.model.seq_length = cfg.model.max_position_embeddings
    return write_weights_checkpoint(out, [weights], cfg, _tokenizer(cfg))


def neox_to_ours(step_dir: str, config_paths: list, out: str, overrides: list = ()) -> str:
    """A GPT-NeoX pipeline checkpoint (global_stepN) + its config files -> our checkpoint (tp 1)."""
    if not config_paths:
        configs = os.path.join(step_dir, "configs")  # GPT-NeoX saves the run's config files here
        config_paths = sorted(os.path.join(configs, f) for f in os.listdir(configs)
                              if f.endswith((".yml", ".yaml"))) if os.path.isdir(configs) else []
    if not config_paths:
        raise UserError(f"no config for {step_dir}: pass the run's config files with --config")
    tp = len(next(iter(layer_files(step_dir).values())))
    cfg = load_config(config_paths, overrides, env={"WORLD_SIZE": str(tp)})
    if cfg.parallel.model_parallel_size != tp:
        raise UserError(f"{step_dir} holds {tp} tensor-parallel ranks but the config says "
                        f"model-parallel-size {cfg.parallel.model_parallel_size}")
    weights = read_neox_checkpoint(step_dir, cfg.model)
    _full_model_config(cfg, weights)
    return write_weights_checkpoint(out, [weights], cfg, _tokenizer(cfg), step=_step_of(step_dir))


def reshard_ours(load: str, tp: int, out: str) -> str:
    """Our checkpoint at tp size n -> the same weights at tp size m (model files only)."""
    cfg, shards = read_weights_checkpoint(load)
    facts = partition_facts(meta_model(cfg.model))
    weights = merge_tp_shards(shards, facts)
    _full_model_config(cfg, weights)
    return write_weights_checkpoint(out, split_tp(weights, tp, facts), cfg, _tokenizer(cfg),
                                    step=_step_of(resolve_checkpoint(load)))
