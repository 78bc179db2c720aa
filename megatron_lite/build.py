"""Shared construction steps of the entry points: tokenizer with padded vocab, and a trained model to use."""

import os
from typing import Optional

import torch

from megatron_lite.config import Config, pad_vocab_size
from megatron_lite.data.tokenizer import build_tokenizer
from megatron_lite.errors import UserError
from megatron_lite.interop.hf import is_hf_dir, load_hf_dir
from megatron_lite.model.gpt import GPTModel
from megatron_lite.parallel import state as parallel_state
from megatron_lite.parallel.reshard import partition_facts, split_tp
from megatron_lite.training.checkpoint import (latest_checkpoint, load_model_weights, load_state_checked,
                                               resolve_checkpoint, saved_config)


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def checkpoint_padded_vocab_size(load: str, tp_size: int) -> Optional[int]:
    """The padded vocabulary size in the config.yml of our checkpoint that `load` names (a save directory or
    global_stepN), or None when there is none yet. Padding depends on the tp size the checkpoint was trained
    at (50257 tokens: 50304 rows at tp=1, 50432 at tp=2), so loading at another tp size must keep it."""
    if os.path.isfile(os.path.join(load, "trainer_state.json")):
        ckpt = load
    elif os.path.isdir(load):
        ckpt = latest_checkpoint(load)
    else:
        ckpt = None
    saved = saved_config(ckpt).get("padded_vocab_size") if ckpt else None
    if saved is None:
        return None
    if saved % tp_size:
        raise UserError(
            f"checkpoint {ckpt} has a padded vocabulary of {saved} rows, which model-parallel-size {tp_size} "
            f"does not divide: load it at a tensor-parallel size that divides {saved}"
        )
    return int(saved)


def build_tokenizer_for(cfg: Config):
    """Build the tokenizer and derive the model's padded vocabulary size from it (or, when loading one of
    our checkpoints, take the size it was trained with, so that it loads at another tp size)."""
    tokenizer = build_tokenizer(cfg.data.tokenizer_type, cfg.data.vocab_file, cfg.data.merge_file)
    if cfg.model.padded_vocab_size is None and cfg.train.load:
        cfg.model.padded_vocab_size = checkpoint_padded_vocab_size(cfg.train.load, cfg.parallel.model_parallel_size)
    if cfg.model.padded_vocab_size is None:
        cfg.model.padded_vocab_size = pad_vocab_size(
            tokenizer.vocab_size, cfg.model.make_vocab_size_divisible_by, cfg.parallel.model_parallel_size)
    elif cfg.model.padded_vocab_size < tokenizer.vocab_size:
        raise UserError(
            f"padded-vocab-size {cfg.model.padded_vocab_size} is smaller than the tokenizer's "
            f"{tokenizer.vocab_size} tokens"
        )
    return tokenizer


def load_trained_model(cfg: Config):
    """(model in eval mode, tokenizer, device) from the checkpoint that 'load' names: our save directory,
    a global_stepN directory, or a Hugging Face GPT-NeoX directory (its config.json and tokenizer win)."""
    if not cfg.train.load:
        raise UserError("no checkpoint to use: set 'load' to a save directory or a global_stepN directory")
    hf_weights = load_hf_dir(cfg.train.load, cfg.model, cfg.data) if is_hf_dir(cfg.train.load) else None
    ckpt = None if hf_weights is not None else resolve_checkpoint(cfg.train.load)
    tokenizer = build_tokenizer_for(cfg)
    device = default_device()
    par = parallel_state.initialize(cfg.parallel)  # under the launcher with tp > 1 each rank holds a shard
    with torch.device("meta"):  # every weight comes from the checkpoint: allocate nothing, draw nothing
        model = GPTModel(cfg.model)
    if hf_weights is not None:
        load_state_checked(model, split_tp(hf_weights, par.tp_size, partition_facts(model))[par.tp_rank],
                           cfg.train.load)
    else:
        load_model_weights(ckpt, model, par.tp_rank, par.tp_size)
    return model.to(device).eval(), tokenizer, device
