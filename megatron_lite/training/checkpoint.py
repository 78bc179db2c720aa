"""Checkpoints, the one owner of their layout: SAVE/global_stepN/ with safetensors weights (model_mp_rank_XX) and
optimizer state, JSON trainer state, the resolved config; SAVE/latest names the newest complete one and is
replaced atomically. Weights-only checkpoints (converted, resharded) also carry their tokenizer in SAVE/.

A save writes into a hidden temporary directory, fsyncs every file, renames the directory into place,
and only then rewrites `latest`, so a save killed at any point leaves `latest` on a complete checkpoint.
Loading reads safetensors and JSON only: nothing is ever unpickled.
"""

import json
import os
import random
import re
import shutil
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
import yaml
from safetensors.torch import load_file, save_file

from megatron_lite.config import Config, ModelConfig
from megatron_lite.config_loader import dump_config, load_config
from megatron_lite.errors import UserError, warn_once
from megatron_lite.files import fsync_dir, new_output_dir, publish
from megatron_lite.parallel.reshard import merge_tp_shards, partition_facts, split_tp
from megatron_lite.parallel.random import TRACKER
from megatron_lite.parallel.state import ParallelState

STEP_DIR = re.compile(r"^global_step(\d+)$")
MODEL_FILE = re.compile(r"^model_mp_rank_(\d+)\.safetensors$")


@dataclass
class TrainerState:
    """Everything besides tensors that a resumed run needs to continue exactly."""

    iteration: int = 0
    consumed_train_samples: int = 0
    skipped_iters: int = 0
    loss_scaler: dict = field(default_factory=dict)
    planned_iters: Optional[int] = None  # the run's length as train-time-budget planned it (None: train-iters)


def _write_json(path: str, obj) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def _write_tensors(path: str, tensors: dict) -> None:
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, path)
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def rng_state() -> tuple:
    """(tensors, json-able) snapshot of the torch, CUDA, numpy and python generators."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["numpy"] = torch.from_numpy(keys.astype(np.int64))
    if TRACKER.tp_state is not None:
        tensors["tp_region"] = TRACKER.tp_state
    version, internal, gauss = random.getstate()
    meta = {"numpy": [kind, int(pos), int(has_gauss), float(cached)], "python": [version, list(internal), gauss]}
    return tensors, meta


def set_rng_state(tensors: dict, meta: dict) -> None:
    torch.set_rng_state(tensors["torch"])
    if "tp_region" in tensors:
        TRACKER.tp_state = tensors["tp_region"]
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    kind, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, tensors["numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))


def _optimizer_to_files(sd: dict) -> tuple:
    """Split an optimizer state_dict into tensors (safetensors) and the rest (JSON)."""
    tensors, scalars = {}, {}
    for idx, state in sd["state"].items():
        for name, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{name}"] = value
            else:
                scalars[f"{idx}.{name}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optimizer_from_files(tensors: dict, meta: dict) -> dict:
    state = {}
    for key, value in list(tensors.items()) + list(meta["scalars"].items()):
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(save_dir: str, model, optimizer, state: TrainerState, config_yaml: str,
                    keep_last: Optional[int] = None, par: Optional[ParallelState] = None) -> str:
    """Write SAVE/global_stepN atomically and point SAVE/latest at it; returns the checkpoint path.

    Every rank calls this: dp rank 0 of each tp group writes its tp shard of weights and optimizer state,
    every rank its RNG state, global rank 0 the shared files and, after all ranks are done, `latest`.
    optimizer: a torch optimizer, or a state_dict in its layout (ZeRO's state, gathered from its partitions)."""
    par = par or ParallelState()
    tag = f"global_step{state.iteration}"
    tmp = os.path.join(save_dir, f".tmp-{tag}")
    if par.rank == 0:
        try:
            os.makedirs(save_dir, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create save directory '{save_dir}' (key 'save'): {e.strerror}") from None
        for stale in os.listdir(save_dir):  # leftovers of a save that was killed
            if stale.startswith(".tmp-global_step"):
                shutil.rmtree(os.path.join(save_dir, stale), ignore_errors=True)
        os.makedirs(tmp)
    par.barrier()

    if par.dp_rank == 0:
        tp = par.tp_rank
        _write_tensors(os.path.join(tmp, f"model_mp_rank_{tp:02d}.safetensors"), model.state_dict())
        if optimizer is not None:
            opt_tensors, opt_meta = _optimizer_to_files(optimizer if isinstance(optimizer, dict)
                                                        else optimizer.state_dict())
            _write_tensors(os.path.join(tmp, f"optim_mp_rank_{tp:02d}.safetensors"), opt_tensors)
            _write_json(os.path.join(tmp, f"optim_mp_rank_{tp:02d}.json"), opt_meta)
    rng_tensors, rng_meta = rng_state()
    _write_tensors(os.path.join(tmp, f"rng_rank_{par.rank:02d}.safetensors"), rng_tensors)
    par.barrier()  # every rank's files are complete before the directory moves into place
    final = os.path.join(save_dir, tag)
    if par.rank == 0:
        _write_json(os.path.join(tmp, "trainer_state.json"), {**state.__dict__, "rng": rng_meta})
        with open(os.path.join(tmp, "config.yml"), "w", encoding="utf-8") as f:
            f.write(config_yaml)
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(tmp)
        _publish(save_dir, tmp, tag, keep_last)
    par.barrier()
    return final


def _publish(save_dir: str, tmp: str, tag: str, keep_last: Optional[int]) -> None:
    """Rename the complete temporary directory to global_stepN, then replace `latest` atomically."""
    final = os.path.join(save_dir, tag)
    old = None
    if os.path.exists(final):  # re-saving a step (e.g. after finetune): swap, then delete the old copy
        old = os.path.join(save_dir, f".tmp-{tag}-old")
        os.rename(final, old)
    os.rename(tmp, final)
    latest_tmp = os.path.join(save_dir, f".latest.tmp-{os.getpid()}")
    with open(latest_tmp, "w") as f:
        f.write(tag + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(latest_tmp, os.path.join(save_dir, "latest"))
    fsync_dir(save_dir)
    if old:
        shutil.rmtree(old, ignore_errors=True)
    if keep_last:
        _prune(save_dir, keep_last)


def _prune(save_dir: str, keep_last: int) -> None:
    steps = sorted(int(m.group(1)) for d in os.listdir(save_dir) if (m := STEP_DIR.match(d)))
    for step in steps[:-keep_last]:
        shutil.rmtree(os.path.join(save_dir, f"global_step{step}"), ignore_errors=True)


def latest_checkpoint(load_dir: str) -> Optional[str]:
    """Path of the checkpoint SAVE/latest names, or None when the directory holds none yet."""
    latest = os.path.join(load_dir, "latest")
    if not os.path.isfile(latest):
        return None
    with open(latest) as f:
        tag = f.read().strip()
    path = os.path.join(load_dir, tag)
    if not STEP_DIR.match(tag) or not os.path.isdir(path):
        raise UserError(f"{latest} names '{tag}', which is not a checkpoint directory in {load_dir}")
    return path


def resolve_checkpoint(path: str) -> str:
    """Accept either a save directory (follow its `latest`) or a global_stepN directory."""
    if os.path.isfile(os.path.join(path, "trainer_state.json")):
        return path
    found = latest_checkpoint(path) if os.path.isdir(path) else None
    if found is None:
        raise UserError(f"no checkpoint found at '{path}' (key 'load'): expected a directory with a 'latest' file")
    return found


def saved_config(ckpt: str) -> dict:
    """The flat resolved config a checkpoint directory was saved with ({} when it has none)."""
    path = os.path.join(ckpt, "config.yml")
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


# Config keys that make a checkpoint's weights a different model (by shape or by meaning).
ARCHITECTURE_KEYS = ("num_layers", "hidden_size", "num_attention_heads", "padded_vocab_size", "pos_emb", "rotary_pct",
                     "no_weight_tying", "gpt_j_residual", "norm", "activation", "num_kv_heads", "use_bias_in_norms",
                     "use_bias_in_attn_linear", "use_bias_in_mlp")


def check_same_model(ckpt: str, model: ModelConfig, key: str) -> None:
    """One-line UserError naming the checkpoint and every architecture key where it differs from `model`."""
    saved = saved_config(ckpt)
    keys = ARCHITECTURE_KEYS + (("max_position_embeddings",) if model.pos_emb == "learned" else ())
    diff = [f"{k.replace('_', '-')} {saved[k]!r} there, {getattr(model, k)!r} here"
            for k in keys if k in saved and saved[k] != getattr(model, k)]
    if diff:
        hint = "load it with its own model config" if key == "load" else "choose another save directory"
        raise UserError(f"{ckpt} (key '{key}') is a checkpoint of another model: {'; '.join(diff)}; {hint}")


def _load_tensors(path: str) -> dict:
    if not os.path.isfile(path):
        raise UserError(f"checkpoint file missing: {path}")
    try:
        return load_file(path)
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise UserError(f"cannot read checkpoint file {path}: {e}") from None


def tp_shard_count(ckpt: str) -> int:
    """How many tensor-parallel ranks wrote this checkpoint."""
    return len([f for f in os.listdir(ckpt) if MODEL_FILE.match(f)])


def _load_tp_shard(ckpt: str, kind: str, model, tp_rank: int, tp_size: int, rename=None) -> dict:
    """This rank's shard of KIND_mp_rank_XX files, resharded (by the model's parallel facts) when they were
    written at another tp size. rename maps file keys to reshard.py's names ('field:parameter') and back."""
    saved = tp_shard_count(ckpt)
    if saved in (0, tp_size):
        return _load_tensors(os.path.join(ckpt, f"{kind}_mp_rank_{tp_rank:02d}.safetensors"))
    to_name, from_name = rename or (lambda k: k, lambda k: k)
    shards = [{to_name(k): v for k, v in _load_tensors(os.path.join(ckpt, f"{kind}_mp_rank_{r:02d}.safetensors")).items()}
              for r in range(saved)]
    facts = partition_facts(model)
    mine = split_tp(merge_tp_shards(shards, facts), tp_size, facts)[tp_rank]
    return {from_name(k): v for k, v in mine.items()}


def load_model_weights(ckpt: str, model, tp_rank: int = 0, tp_size: int = 1) -> None:
    """Load weights into model (resharding from another tp size)."""
    load_state_checked(model, _load_tp_shard(ckpt, "model", model, tp_rank, tp_size),
                       f"checkpoint {ckpt}", hint=f"; load it with the config it was trained with ({ckpt}/config.yml)")


def load_state_checked(model, weights: dict, source: str, hint: str = "") -> None:
    """load_state_dict with a one-line error naming what does not fit. A model built on the meta device
    takes the tensors as they are (no memory was allocated for it, no random init was wasted)."""
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(weights)), sorted(set(weights) - set(own))
    if missing or unexpected:
        raise UserError(f"{source} does not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    for name, tensor in weights.items():
        if tensor.shape != own[name].shape:
            raise UserError(f"{source}: '{name}' has shape {tuple(tensor.shape)} but the config builds "
                            f"{tuple(own[name].shape)}{hint}")
    on_meta = any(t.is_meta for t in own.values())
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in weights.items()}, assign=on_meta)


def _optimizer_key_renames(model, optimizer) -> tuple:
    """'3.exp_avg' <-> 'exp_avg:layers.0.mlp.dense_h_to_4h.weight', so optimizer state reshards like weights."""
    names = {id(p): n for n, p in model.named_parameters()}
    index = [names[id(p)] for g in optimizer.param_groups for p in g["params"]]
    position = {n: i for i, n in enumerate(index)}

    def to_name(key):
        idx, field_name = key.split(".", 1)
        if field_name == "step":  # a scalar, the same on every tp rank: keep its key so it is not split
            return key
        return f"{field_name}:{index[int(idx)]}"

    def from_name(key):
        if ":" not in key:
            return key
        field_name, name = key.split(":", 1)
        return f"{position[name]}.{field_name}"

    return to_name, from_name


def load_checkpoint(load_dir: str, model, optimizer=None, par: Optional[ParallelState] = None,
                    weights_only: bool = False) -> TrainerState:
    """Restore model (and optimizer, RNG, trainer state unless weights_only); fresh state when none exists."""
    par = par or ParallelState()
    ckpt = latest_checkpoint(load_dir) if os.path.isdir(load_dir) else None
    if ckpt is None:
        warn_once(f"no checkpoint in '{load_dir}' (key 'load'); starting from scratch")
        return TrainerState()
    load_model_weights(ckpt, model, par.tp_rank, par.tp_size)
    if weights_only:
        return TrainerState()
    with open(os.path.join(ckpt, "trainer_state.json")) as f:
        meta = json.load(f)
    if optimizer is not None:
        if not os.path.isfile(os.path.join(ckpt, "optim_mp_rank_00.json")):
            raise UserError(f"{ckpt} holds no optimizer state (a ZeRO run of an earlier version kept only the "
                            "weights); set 'finetune: true' to start from its weights")
        opt_tensors = _load_tp_shard(ckpt, "optim", model, par.tp_rank, par.tp_size,
                                     _optimizer_key_renames(model, optimizer))
        json_rank = min(par.tp_rank, tp_shard_count(ckpt) - 1)  # the non-tensor state is the same on every tp rank
        with open(os.path.join(ckpt, f"optim_mp_rank_{json_rank:02d}.json")) as f:
            optimizer.load_state_dict(_optimizer_from_files(opt_tensors, json.load(f)))
    rng_file = os.path.join(ckpt, f"rng_rank_{par.rank:02d}.safetensors")
    if os.path.isfile(rng_file):
        set_rng_state(_load_tensors(rng_file), meta.pop("rng"))
    else:  # saved with fewer processes: this rank keeps its freshly seeded streams
        meta.pop("rng")
        warn_once(f"{ckpt} has no RNG state for rank {par.rank} (saved with another process count); "
                  "dropout streams start fresh")
    return TrainerState(**meta)


# ---- weights-only checkpoints (converted or resharded): no optimizer or RNG state; train from one with
# `finetune: true` ----

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

