"""The architecture options (GPT-NeoX keys): norm rmsnorm, activation swiglu, num-kv-heads, use-bias-in-*.

Each: the KV cache equals recomputation, the fast decode step defers to the model's forward, parameter count
and FLOPs from the meta model equal formulas written out here; the Llama-shaped combination exports to and
imports from transformers' LlamaForCausalLM with the same logits. tp=2 == tp=1: tests/distributed/
test_model_parallel.py."""

import inspect

import pytest
import torch
import transformers

from megatron_lite.config import DataConfig
from megatron_lite.data.tokenizer import build_tokenizer, save_tokenizer, train_byte_level_bpe
from megatron_lite.errors import UserError
from megatron_lite.generation.fast_decode import supports
from megatron_lite.interop.hf import load_hf_dir, save_hf_dir
from megatron_lite.model.gpt import GPTModel, mlp_width
from megatron_lite.model.size import count_parameters, flops_per_token
from tests.conftest import tiny_model_config

VOCAB = 256
NO_BIAS = dict(use_bias_in_attn_linear=False, use_bias_in_mlp=False, use_bias_in_norms=False)
LLAMA = dict(norm="rmsnorm", activation="swiglu", rotary_pct=1.0, num_kv_heads=2, no_weight_tying=True,
             use_bias_in_attn_linear=False, use_bias_in_mlp=False)
OPTIONS = {"rmsnorm": dict(norm="rmsnorm"), "swiglu": dict(activation="swiglu"), "gqa": dict(num_kv_heads=2),
           "mqa": dict(num_kv_heads=1), "no-bias": NO_BIAS, "llama": LLAMA}


def model_of(seed=0, **kw):
    cfg = tiny_model_config(**{**dict(num_layers=2, hidden_size=64, num_attention_heads=4, padded_vocab_size=VOCAB,
                                      max_position_embeddings=32, seq_length=32, rotary_pct=0.5), **kw})
    torch.manual_seed(seed)
    model = GPTModel(cfg)
    with torch.no_grad():  # off the init values, so norms and biases are exercised
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def tokens(b=2, s=12):
    return torch.randint(0, VOCAB, (b, s), generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("option,impl", [(option, "sdpa") for option in OPTIONS] + [("gqa", "reference"),
                                                                                    ("mqa", "fused")])
def test_kv_cache_matches_recompute(option, impl):
    model = model_of(attention_impl=impl, **OPTIONS[option])
    x = tokens()
    with torch.no_grad():
        full = model(x)
        cache = model.new_kv_cache(2, 12)
        steps = [model(x[:, :5], kv_cache=cache)]
        for t in range(5, 12):
            steps.append(model(x[:, t:t + 1], position_ids=torch.tensor([[t]]), kv_cache=cache))
    assert cache.keys[0].size(1) == (OPTIONS[option].get("num_kv_heads") or 4)  # the cache holds kv heads only
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("option", OPTIONS)
def test_fast_decode_defers_to_the_model_for_what_it_does_not_implement(option):
    assert supports(model_of())
    assert not supports(model_of(**OPTIONS[option]))


def test_rmsnorm_is_gpt_neox_formula():
    model = model_of(norm="rmsnorm", rms_norm_epsilon=1e-3)
    norm = model.layers[0].input_layernorm
    x = torch.randn(3, 64)
    expected = norm.weight * x / (torch.sqrt((x * x).mean(-1, keepdim=True)) + 1e-3)
    torch.testing.assert_close(norm(x), expected)
    assert [n for n, _ in norm.named_parameters()] == ["weight"]


def expected_parameters(h, L, v, heads, kv, swiglu, attn_bias, mlp_bias, norm_bias, untied):
    d = h // heads
    qkv = h * (h + 2 * kv * d) + (h + 2 * kv * d) * attn_bias
    dense = h * h + h * attn_bias
    width = int(4 * h * 2 / 3) // 2 if swiglu else 4 * h  # GPT-NeoX: 2/3 of 4h, halved into [x; gate]
    up = 2 * width if swiglu else width
    mlp = h * up + up * mlp_bias + width * h + h * mlp_bias
    norms = 2 * (h + h * norm_bias)
    return L * (qkv + dense + mlp + norms) + (h + h * norm_bias) + v * h * (2 if untied else 1)


@pytest.mark.parametrize("option", OPTIONS)
def test_parameter_count_and_flops_from_the_meta_model(option):
    kw = OPTIONS[option]
    model = model_of(**kw)
    cfg = model.cfg
    expected = expected_parameters(64, 2, VOCAB, 4, kw.get("num_kv_heads", 4), kw.get("activation") == "swiglu",
                                   kw.get("use_bias_in_attn_linear", True), kw.get("use_bias_in_mlp", True),
                                   kw.get("norm") != "rmsnorm" and kw.get("use_bias_in_norms", True),
                                   cfg.no_weight_tying)
    assert count_parameters(cfg) == sum(p.numel() for p in model.parameters()) == expected
    matrices = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2 and n.startswith("layers."))
    assert flops_per_token(cfg, 32) == 6.0 * (matrices + VOCAB * 64) + 12.0 * 2 * 64 * 32


def test_swiglu_width_is_gpt_neox_s():
    cfg = tiny_model_config(hidden_size=4096, num_attention_heads=32, activation="swiglu", padded_vocab_size=128,
                            num_layers=1)
    assert mlp_width(cfg) == 5461  # int(4 * 4096 * 2 / 3) // 2


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    save_tokenizer(train_byte_level_bpe([inspect.getsource(torch.nn.modules.linear)], 300), str(out))
    return build_tokenizer("HFTokenizer", str(out / "tokenizer.json"))


@pytest.mark.parametrize("kv", [4, 2, 1])
def test_llama_shape_exports_to_and_imports_from_transformers_llama(tmp_path, tokenizer, kv):
    ours = model_of(**{**LLAMA, "num_kv_heads": kv})
    save_hf_dir(str(tmp_path / "hf"), ours.state_dict(), ours.cfg, tokenizer)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf")).eval()
    assert type(hf).__name__ == "LlamaForCausalLM" and hf.config.num_key_value_heads == kv
    x = tokens()
    with torch.no_grad():
        assert (hf(x).logits - ours(x)).abs().max().item() < 1e-4
    cfg = tiny_model_config()
    weights = load_hf_dir(str(tmp_path / "hf"), cfg, DataConfig())
    back = GPTModel(cfg).eval()
    back.load_state_dict(weights)
    assert all(torch.equal(weights[k], v) for k, v in ours.state_dict().items())
    with torch.no_grad():
        torch.testing.assert_close(back(x), ours(x))


@pytest.mark.parametrize("kw,message", [
    (dict(norm="rmsnorm"), "norm: 'rmsnorm' \\(GPT-NeoX: 'layernorm'\\).*activation: 'gelu' \\(Llama: 'swiglu'\\)"),
    (dict(LLAMA, rotary_pct=0.5), "rotary_pct: 0.5 \\(Llama: 1.0\\)"),
    (dict(NO_BIAS), "use_bias_in_norms: False \\(GPT-NeoX: True\\)"),
])
def test_export_refuses_what_no_transformers_class_holds(tmp_path, tokenizer, kw, message):
    ours = model_of(**kw)
    with pytest.raises(UserError, match=message):
        save_hf_dir(str(tmp_path / "hf"), ours.state_dict(), ours.cfg, tokenizer)
    assert not (tmp_path / "hf").exists()
