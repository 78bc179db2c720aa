"""For the entry points (generate.py, eval.py, the lm-eval adapter, benches): a trained model to use."""

import torch

from megatron_lite.config import Config
from megatron_lite.errors import UserError
from megatron_lite.interop.hf import is_hf_dir, load_hf_dir
from megatron_lite.model.gpt import GPTModel
from megatron_lite.parallel import state as parallel_state
from megatron_lite.parallel.reshard import partition_facts, split_tp
from megatron_lite.precision import default_device
from megatron_lite.training.checkpoint import load_model_weights, load_state_checked, resolve_checkpoint
from megatron_lite.training.vocab import build_tokenizer_for


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
