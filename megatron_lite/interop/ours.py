"""Our checkpoint layout for converted weights: SAVE/global_stepN/{model_mp_rank_XX.safetensors, config.yml,
trainer_state.json}, SAVE/latest and the tokenizer (SAVE/tokenizer.json or tokenizer.model).

Converted checkpoints hold weights only (no optimizer or RNG state): train from one with `finetune: true`.
"""

import os
import shutil

from megatron_lite.config import Config
from megatron_lite.config_loader import dump_config, load_config
from megatron_lite.errors import UserError
from megatron_lite.training.checkpoint import (TrainerState, _fsync_dir, _load_tensors, _write_json, _write_tensors,
                                               resolve_checkpoint)


def new_output_dir(path: str) -> str:
    """A hidden temporary sibling of `path` to fill; refuse to overwrite a non-empty `path`."""
    if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
        raise UserError(f"output '{path}' already exists and is not empty; choose a new directory")
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".tmp-{os.path.basename(os.path.abspath(path))}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    return tmp


def publish(tmp: str, path: str) -> None:
    """Move a finished temporary output directory into place."""
    _fsync_dir(tmp)
    if os.path.isdir(path):
        os.rmdir(path)  # empty (checked by new_output_dir)
    os.rename(tmp, path)


def write_weights_checkpoint(save_dir: str, shards: list, cfg: Config, tokenizer, step: int = 0) -> str:
    """Write a weights-only checkpoint (one safetensors file per tensor-parallel rank) with its tokenizer,
    atomically; config.yml names that tokenizer."""
    if tokenizer.vocab_size > cfg.model.padded_vocab_size:
        raise UserError(f"the tokenizer ({cfg.data.vocab_file}) has {tokenizer.vocab_size} tokens but the model's "
                        f"vocabulary is {cfg.model.padded_vocab_size}: pass the tokenizer the model was trained with")
    cfg.parallel.model_parallel_size = len(shards)
    tmp = new_output_dir(save_dir)
    try:
        _copy_tokenizer(tokenizer, cfg, tmp, os.path.abspath(save_dir))
        step_dir = os.path.join(tmp, f"global_step{step}")
        os.makedirs(step_dir)
        for rank, shard in enumerate(shards):
            _write_tensors(os.path.join(step_dir, f"model_mp_rank_{rank:02d}.safetensors"), shard)
        with open(os.path.join(step_dir, "config.yml"), "w", encoding="utf-8") as f:
            f.write(dump_config(cfg))
        # Marks the directory as a checkpoint (so `load` may name global_stepN itself); no optimizer or RNG state.
        _write_json(os.path.join(step_dir, "trainer_state.json"), {**TrainerState(iteration=step).__dict__, "rng": None})
        with open(os.path.join(tmp, "latest"), "w") as f:
            f.write(f"global_step{step}\n")
        publish(tmp, save_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return os.path.join(save_dir, f"global_step{step}")


def _copy_tokenizer(tokenizer, cfg: Config, tmp: str, final: str) -> None:
    """Save the tokenizer next to the checkpoint and point the config's tokenizer keys at it."""
    if tokenizer.hf is None:  # sentencepiece: its .model file is the whole tokenizer
        name, cfg.data.tokenizer_type = "tokenizer.model", "SPMTokenizer"
        shutil.copyfile(cfg.data.vocab_file, os.path.join(tmp, name))
    else:  # the tokenizers object we encode with, whichever files it was built from
        name, cfg.data.tokenizer_type = "tokenizer.json", "HFTokenizer"
        tokenizer.hf.save(os.path.join(tmp, name))
    cfg.data.vocab_file, cfg.data.merge_file = os.path.join(final, name), None


def read_weights_checkpoint(path: str):
    """(resolved Config, [state dict per tensor-parallel rank]) of our checkpoint (save dir or global_stepN)."""
    ckpt = resolve_checkpoint(path)
    ranks = sorted(f for f in os.listdir(ckpt) if f.startswith("model_mp_rank_") and f.endswith(".safetensors"))
    # Its config is valid with the processes that saved it: one RNG file each (tp x dp), or tp for converted
    # weights, which have none.
    world = len([f for f in os.listdir(ckpt) if f.startswith("rng_rank_")]) or len(ranks)
    cfg = load_config([os.path.join(ckpt, "config.yml")], env={"WORLD_SIZE": str(max(1, world))})
    expected = [f"model_mp_rank_{r:02d}.safetensors" for r in range(len(ranks))]
    if not ranks or ranks != expected:
        raise UserError(f"checkpoint {ckpt}: expected model_mp_rank_00.safetensors, ... one per rank, found {ranks}")
    return cfg, [_load_tensors(os.path.join(ckpt, f)) for f in ranks]

