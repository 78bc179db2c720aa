"""GPT-NeoX pipeline checkpoints (layer_XX-model_YY-model_states.pt, tp 2) import with the same logits as the model
they were written from; `.pt` files are loaded weights-only, so a malicious pickle never runs."""

import builtins
import os

import pytest
import torch

from megatron_lite.errors import UserError
from megatron_lite.interop.neox import read_neox_checkpoint
from megatron_lite.interop.safe_load import load_pt
from megatron_lite.model.gpt import GPTModel
from megatron_lite.training.checkpoint import load_state_checked
from tests.conftest import tiny_model_config

DIM0 = ("attention.query_key_value.weight", "attention.query_key_value.bias", "mlp.dense_h_to_4h.weight",
        "mlp.dense_h_to_4h.bias")
DIM1 = ("attention.dense.weight", "mlp.dense_4h_to_h.weight")
ROW_BIASES = ("attention.dense.bias", "mlp.dense_4h_to_h.bias")


def known_model(vocab=256, **kw):
    cfg = tiny_model_config(**{**dict(num_layers=3, hidden_size=64, num_attention_heads=4, padded_vocab_size=vocab,
                                      max_position_embeddings=32, rotary_pct=0.25), **kw})
    torch.manual_seed(0)
    model = GPTModel(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def neox_blocks(cfg, key):
    """GPT-NeoX's per-rank layout of a column-parallel tensor: each rank computes its own [x; gate] (swiglu) or
    [q; k; v] (grouped-query) from its slice of every block."""
    h, kv = cfg.hidden_size, (cfg.num_kv_heads or cfg.num_attention_heads) * cfg.hidden_size // cfg.num_attention_heads
    if key.startswith("mlp.dense_h_to_4h") and cfg.activation == "swiglu":
        return 2
    if key.startswith("attention.query_key_value") and kv != h:
        return [h, kv, kv]
    return None


def split_rows(t, blocks, tp, r):
    if blocks is None:
        return t.chunk(tp, 0)[r]
    parts = t.chunk(blocks, 0) if isinstance(blocks, int) else t.split(blocks, 0)
    return torch.cat([p.chunk(tp, 0)[r] for p in parts])


# Current GPT-NeoX's names for ours (PolyCoder-era checkpoints use ours).
MODERN = (("mlp.dense_h_to_4h.", "mlp.linear1."), ("mlp.dense_4h_to_h.", "mlp.linear2."),
          ("layernorm.weight", "layernorm.scale"))


def write_neox_checkpoint(model, step_dir, tp, modern=False):
    """What GPT-NeoX's PipelineModule saves: per pipeline layer and tp rank a state dict under NeoX names.

    Written here independently of the importer: column-parallel rows and row-parallel columns are split in
    contiguous chunks (per block where GPT-NeoX splits [x; gate] or [q; k; v]); with a parallel residual each rank
    holds 1/tp of a row-parallel bias (GPT-NeoX adds every rank's bias before one all-reduce); norms and other
    biases are replicated; each layer has its inv_freq buffer. modern: current GPT-NeoX's names (linear1, scale)."""
    cfg, sd = model.cfg, model.state_dict()
    os.makedirs(step_dir)
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    dims = int(head_dim * cfg.rotary_pct)
    inv_freq = 1.0 / 10000 ** (torch.arange(0, dims, 2).float() / dims)

    def save(layer, rank, state):
        torch.save(state, os.path.join(step_dir, f"layer_{layer:02d}-model_{rank:02d}-model_states.pt"))

    for r in range(tp):
        embedding = {"word_embeddings.weight": sd["embed_in.weight"].chunk(tp, 0)[r].clone()}
        if cfg.pos_emb == "learned":  # GPT-NeoX's Embedding: replicated on every tp rank
            embedding["position_embeddings.weight"] = sd["embed_positions.weight"].clone()
        save(0, r, embedding)
        for i in range(cfg.num_layers):
            state = {"attention.rotary_emb.inv_freq": inv_freq}
            for name, t in sd.items():
                if not name.startswith(f"layers.{i}."):
                    continue
                key = name[len(f"layers.{i}."):]
                if key in DIM0:
                    t = split_rows(t, neox_blocks(cfg, key), tp, r)
                elif key in DIM1:
                    t = t.chunk(tp, 1)[r]
                elif key in ROW_BIASES and cfg.gpt_j_residual:
                    t = t / tp
                for ours, theirs in MODERN if modern and cfg.norm == "rmsnorm" else MODERN[:2] if modern else ():
                    key = key.replace(ours, theirs)
                state[key] = t.clone()
            save(i + 2, r, state)
        n = cfg.num_layers
        norm = {k.replace("final_layer_norm.", "norm."): t.clone() for k, t in sd.items() if k.startswith("final_")}
        if modern and cfg.norm == "rmsnorm":
            norm = {"norm.scale": norm.pop("norm.weight")}
        save(n + 3, r, norm)
        if cfg.no_weight_tying:
            save(n + 4, r, {"final_linear.weight": sd["embed_out.weight"].chunk(tp, 0)[r].clone()})


@pytest.mark.parametrize("parallel,untied,pos_emb", [(False, True, "rotary"), (True, True, "rotary"),
                                                     (True, False, "rotary"), (False, False, "learned")])
def test_tp2_neox_checkpoint_imports_with_same_logits(tmp_path, parallel, untied, pos_emb):
    source = known_model(gpt_j_residual=parallel, no_weight_tying=untied, pos_emb=pos_emb)
    write_neox_checkpoint(source, str(tmp_path / "global_step7"), tp=2)
    weights = read_neox_checkpoint(str(tmp_path / "global_step7"), source.cfg)
    imported = GPTModel(source.cfg).eval()
    load_state_checked(imported, weights, "test")
    x = torch.randint(0, 256, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (imported(x) - source(x)).abs().max().item()
    assert diff < 1e-5


@pytest.mark.parametrize("options", [dict(activation="swiglu", num_kv_heads=2, hidden_size=96),  # width 128
                                     dict(hidden_size=96, norm="rmsnorm", activation="swiglu", num_kv_heads=2, use_bias_in_mlp=False,
                                          use_bias_in_attn_linear=False, no_weight_tying=True)])
def test_current_gpt_neox_names_and_layouts_import_with_same_logits(tmp_path, options):
    source = known_model(**options)
    write_neox_checkpoint(source, str(tmp_path / "global_step7"), tp=2, modern=True)
    weights = read_neox_checkpoint(str(tmp_path / "global_step7"), source.cfg)
    imported = GPTModel(source.cfg).eval()
    load_state_checked(imported, weights, "test")
    x = torch.randint(0, 256, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (imported(x) - source(x)).abs().max().item() < 1e-5


def test_layer_count_mismatch_is_a_clear_error(tmp_path):
    source = known_model()
    write_neox_checkpoint(source, str(tmp_path / "global_step1"), tp=2)
    with pytest.raises(UserError, match=r"no files for pipeline layer\(s\) \[5, 8\] of a 4-layer model"):
        read_neox_checkpoint(str(tmp_path / "global_step1"), tiny_model_config(num_layers=4, padded_vocab_size=256))
    os.remove(tmp_path / "global_step1" / "layer_03-model_01-model_states.pt")
    with pytest.raises(UserError, match="layer 03 has tensor-parallel ranks"):
        read_neox_checkpoint(str(tmp_path / "global_step1"), source.cfg)


class WritesMarker:
    """Unpickling this calls open(marker, 'w'): a stand-in for arbitrary code in a hostile checkpoint."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.open, (self.marker, "w"))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    path = tmp_path / "layer_00-model_00-model_states.pt"
    torch.save({"word_embeddings.weight": torch.zeros(2), "payload": WritesMarker(tmp_path / "pwned")}, path)
    # The file really is hostile: a plain unpickling load runs the payload.
    torch.load(path, weights_only=False)
    assert (tmp_path / "pwned").exists()
    os.remove(tmp_path / "pwned")
    with pytest.raises(UserError, match=r"refused to load .*layer_00-model_00-model_states.pt.*asks for io.open"):
        load_pt(str(path))
    assert not (tmp_path / "pwned").exists()


def test_plain_state_dicts_load_and_garbage_is_a_clear_error(tmp_path):
    torch.save({"w": torch.arange(3)}, tmp_path / "ok.pt")
    assert torch.equal(load_pt(str(tmp_path / "ok.pt"))["w"], torch.arange(3))
    (tmp_path / "bad.pt").write_bytes(b"\x00garbage")
    with pytest.raises(UserError, match="bad.pt"):
        load_pt(str(tmp_path / "bad.pt"))
