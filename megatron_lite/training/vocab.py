"""The tokenizer a run uses and the padded vocabulary size the model takes from it, or from the checkpoint it
loads (padding depends on the tp size a checkpoint was trained at)."""

import os
from typing import Optional

from megatron_lite.config import Config, pad_vocab_size
from megatron_lite.data.tokenizer import build_tokenizer
from megatron_lite.errors import UserError
from megatron_lite.training.checkpoint import latest_checkpoint, saved_config


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
