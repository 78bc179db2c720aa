"""Tensor-parallel split/merge: round trips, the partition contract, errors on inconsistent shards; the reshard tool."""

import inspect

import pytest
import torch

from megatron_lite.config_loader import load_config
from megatron_lite.data.tokenizer import build_tokenizer, train_sentencepiece
from megatron_lite.errors import UserError
from megatron_lite.interop.convert import ours_to_hf, reshard_ours
from megatron_lite.model.gpt import GPTModel
from megatron_lite.parallel.reshard import merge_tp_shards, partition_facts, reshard, split_tp
from megatron_lite.training.checkpoint import read_weights_checkpoint, write_weights_checkpoint
from tests.conftest import tiny_model_config


def full_state(untied=True):
    torch.manual_seed(0)
    cfg = tiny_model_config(num_layers=2, hidden_size=32, num_attention_heads=4, padded_vocab_size=64,
                      max_position_embeddings=16, no_weight_tying=untied)
    model = GPTModel(cfg)
    return model.state_dict(), partition_facts(model)


@pytest.mark.parametrize("untied", [True, False])
@pytest.mark.parametrize("tp", [1, 2, 4])
def test_split_then_merge_is_identity(tp, untied):
    full, facts = full_state(untied)
    shards = split_tp(full, tp, facts)
    assert len(shards) == tp
    merged = merge_tp_shards(shards, facts)
    assert set(merged) == set(full)
    for name, t in full.items():
        assert torch.equal(merged[name], t), name


def test_partition_contract_shapes():
    full, facts = full_state()
    shards = split_tp(full, 2, facts)
    qkv = "layers.0.attention.query_key_value.weight"
    assert shards[0][qkv].shape == (48, 32) and torch.equal(shards[1][qkv], full[qkv][48:])  # heads 2, 3
    assert shards[1]["layers.0.attention.dense.weight"].shape == (32, 16)
    assert shards[0]["layers.1.mlp.dense_4h_to_h.weight"].shape == (32, 64)
    assert shards[0]["layers.1.mlp.dense_h_to_4h.bias"].shape == (64,)
    assert shards[0]["embed_in.weight"].shape == (32, 32) and shards[1]["embed_out.weight"].shape == (32, 32)
    for name in ("layers.0.attention.dense.bias", "layers.0.mlp.dense_4h_to_h.bias", "final_layer_norm.weight",
                 "layers.1.input_layernorm.bias"):
        assert name not in facts and torch.equal(shards[1][name], full[name])


def test_reshard_n_to_m_matches_direct_split():
    full, facts = full_state()
    direct = split_tp(full, 4, facts)
    via = reshard(split_tp(full, 2, facts), 4, facts)
    for a, b in zip(direct, via):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_merge_refuses_disagreeing_replicas_and_missing_names():
    full, facts = full_state()
    shards = split_tp(full, 2, facts)
    shards[1]["final_layer_norm.bias"] = shards[1]["final_layer_norm.bias"] + 1
    with pytest.raises(UserError, match="final_layer_norm.bias.*differs"):
        merge_tp_shards(shards, facts)
    shards = split_tp(full, 2, facts)
    del shards[1]["embed_out.weight"]
    with pytest.raises(UserError, match="rank 1 holds different parameters"):
        merge_tp_shards(shards, facts)


def test_split_refuses_indivisible_sizes():
    with pytest.raises(UserError, match="does not divide by tensor-parallel size 3"):
        split_tp(full_state()[0], 3, full_state()[1])


def test_reshard_tool_keeps_weights_and_a_sentencepiece_tokenizer(tmp_path):
    """Converted checkpoints carry their tokenizer: sentencepiece as tokenizer.model (to-hf refuses it clearly)."""
    train_sentencepiece([inspect.getsource(torch.nn.modules.module)], 500, str(tmp_path / "spm"))
    cfg = load_config([], ["--train-micro-batch-size-per-gpu", "1", "--tokenizer-type", "SPMTokenizer",
                           "--vocab-file", str(tmp_path / "spm" / "tokenizer.model"), "--hidden-size", "32",
                           "--pos-emb", "rotary",
                           "--padded-vocab-size", "512", "--max-position-embeddings", "16",
                           "--seq-length", "16"])
    torch.manual_seed(0)
    full = GPTModel(cfg.model).state_dict()
    tok = build_tokenizer(cfg.data.tokenizer_type, cfg.data.vocab_file)
    write_weights_checkpoint(str(tmp_path / "tp1"), [full], cfg, tok, step=3)
    reshard_ours(str(tmp_path / "tp1"), 2, str(tmp_path / "tp2"))
    cfg2, shards = read_weights_checkpoint(str(tmp_path / "tp2"))
    assert cfg2.parallel.model_parallel_size == 2 and cfg2.data.tokenizer_type == "SPMTokenizer"
    assert cfg2.data.vocab_file == str(tmp_path / "tp2" / "tokenizer.model")
    assert (tmp_path / "tp2" / "latest").read_text().strip() == "global_step3"
    merged = merge_tp_shards(shards, partition_facts(GPTModel(cfg.model)))
    assert all(torch.equal(merged[k], full[k]) for k in full)
    with pytest.raises(UserError, match="sentencepiece tokenizer to Hugging Face is not supported"):
        ours_to_hf(str(tmp_path / "tp2"), str(tmp_path / "hf"))
    assert not (tmp_path / "hf").exists()
