"""GPT-NeoX (PolyCoder) pipeline checkpoints -> our weights, merging tensor-parallel shards.

Layout of `global_stepN/` (as EleutherAI's tools/ckpts/convert_neox_to_hf.py reads it): one
`layer_XX-model_YY-model_states.pt` per pipeline layer XX and tensor-parallel rank YY, each a plain state dict:
layer 00 `word_embeddings.weight`; layers 02..L+1 the transformer layers under our layer names (plus a
rotary `inv_freq` buffer); layer L+3 the final norm (`norm.{weight,bias}`); layer L+4 `final_linear.weight`.
Layers 01 and L+2 hold no parameters.
"""

import dataclasses
import os
import re

import torch
from tqdm import tqdm

from megatron_lite.config import ModelConfig
from megatron_lite.errors import UserError
from megatron_lite.interop.safe_load import load_pt
from megatron_lite.model.gpt import meta_model
from megatron_lite.parallel.layers import merge_shards
from megatron_lite.parallel.reshard import partition_facts

LAYER_FILE = re.compile(r"^layer_(\d+)-model_(\d+)-model_states\.pt$")
ROW_PARALLEL_BIASES = ("attention.dense.bias", "mlp.dense_4h_to_h.bias")
BUFFERS = ("attention.rotary_emb.inv_freq", "attention.bias", "attention.masked_bias")


def layer_files(step_dir: str) -> dict:
    """{pipeline layer: [file of tp rank 0, 1, ...]}; every layer must have the same ranks 0..tp-1."""
    if not os.path.isdir(step_dir):
        raise UserError(f"GPT-NeoX checkpoint directory not found: {step_dir}")
    found = {}
    for name in os.listdir(step_dir):
        m = LAYER_FILE.match(name)
        if m:
            found.setdefault(int(m.group(1)), {})[int(m.group(2))] = os.path.join(step_dir, name)
    if not found:
        raise UserError(f"{step_dir} holds no layer_XX-model_YY-model_states.pt files (a GPT-NeoX pipeline checkpoint)")
    tp = len(found[min(found)])
    for layer, ranks in sorted(found.items()):
        if sorted(ranks) != list(range(tp)):
            raise UserError(f"{step_dir}: layer {layer:02d} has tensor-parallel ranks {sorted(ranks)}, expected 0..{tp - 1}")
    return {layer: [ranks[r] for r in range(tp)] for layer, ranks in found.items()}


def merge_neox_shards(shards: list, name: str, parallel_residual: bool, facts: dict) -> torch.Tensor:
    """One parameter from its per-rank copies, the way GPT-NeoX's own converter combines them (facts: our
    model's partition_facts, which match GPT-NeoX's per-rank layouts)."""
    if name in facts:
        return merge_shards(shards, *facts[name])
    if any(s.shape != shards[0].shape for s in shards):
        raise UserError(f"'{name}' has different shapes on different tensor-parallel ranks but should be replicated")
    if parallel_residual and name.endswith(ROW_PARALLEL_BIASES):
        # With a parallel residual GPT-NeoX adds every rank's bias before the single all-reduce: they sum.
        return torch.stack(shards).sum(0)
    return torch.stack(shards).float().mean(0).to(shards[0].dtype)  # replicas; averaged as GPT-NeoX does


def _read_layer(files: list, layer: int, wanted: tuple) -> list:
    shards = [load_pt(f) for f in files]
    for path, shard in zip(files, shards):
        if not isinstance(shard, dict) or not all(k in shard for k in wanted):
            keys = sorted(shard)[:4] if isinstance(shard, dict) else type(shard).__name__
            raise UserError(f"{path}: pipeline layer {layer:02d} should hold {list(wanted)}, found {keys}")
    return shards


# Current GPT-NeoX names its MLP linear1 / linear2 and its RMSNorm weight `scale`; PolyCoder's names are ours.
# (The final norm's keys are renamed where its pipeline layer is read.)
LAYER_RENAMES = (("mlp.linear1.", "mlp.dense_h_to_4h."), ("mlp.linear2.", "mlp.dense_4h_to_h."),
                 ("layernorm.scale", "layernorm.weight"))


def _renamed(key: str) -> str:
    for old, new in LAYER_RENAMES:
        key = key.replace(old, new)
    return key


def _merge(shards: list, prefix: str, renames: dict, parallel_residual: bool, facts: dict) -> dict:
    out = {}
    for key in shards[0]:
        if key.endswith(BUFFERS):
            continue
        name = prefix + renames.get(key, _renamed(key))  # the parallel facts are stated in our names
        out[name] = merge_neox_shards([s[key] for s in shards], name, parallel_residual, facts)
    return out


def read_neox_checkpoint(step_dir: str, cfg: ModelConfig) -> dict:
    """Our full state dict from a GPT-NeoX pipeline checkpoint written with the architecture in cfg."""
    files = layer_files(step_dir)
    n = cfg.num_layers
    expected = {0, *range(2, n + 2), n + 3} | ({n + 4} if cfg.no_weight_tying else set())
    missing = sorted(expected - set(files))
    if missing:
        raise UserError(f"{step_dir}: no files for pipeline layer(s) {missing} of a {n}-layer model "
                        "(check num-layers and no-weight-tying in the config)")
    extra = sorted(set(files) - expected - {n + 4})
    if extra:
        raise UserError(f"{step_dir}: unexpected pipeline layer(s) {extra} for a {n}-layer model (check num-layers)")
    # The parallel facts do not depend on the vocabulary size, which the weights fix later.
    facts = partition_facts(meta_model(dataclasses.replace(cfg, padded_vocab_size=cfg.padded_vocab_size or 1)))
    weights = _merge(_read_layer(files[0], 0, ("word_embeddings.weight",)), "",
                     {"word_embeddings.weight": "embed_in.weight",
                      "position_embeddings.weight": "embed_positions.weight"}, False, facts)  # pos-emb learned
    for i in tqdm(range(n), desc="layers", unit="layer"):
        shards = _read_layer(files[i + 2], i + 2, ("attention.query_key_value.weight",))
        weights.update(_merge(shards, f"layers.{i}.", {}, cfg.gpt_j_residual, facts))
    final_norm = "norm.scale" if cfg.norm == "rmsnorm" else "norm.weight"
    weights.update(_merge(_read_layer(files[n + 3], n + 3, (final_norm,)), "final_layer_norm.",
                          {"norm.weight": "weight", "norm.scale": "weight", "norm.bias": "bias"}, False, facts))
    if cfg.no_weight_tying:
        weights.update(_merge(_read_layer(files[n + 4], n + 4, ("final_linear.weight",)), "",
                              {"final_linear.weight": "embed_out.weight"}, False, facts))
    return weights
