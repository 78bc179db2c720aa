"""GPTModel: sizes, attention paths, Hugging Face parity, KV cache, init methods, activation checkpointing."""

import math

import pytest
import torch
import transformers

from megatron_lite.config import ModelConfig, pad_vocab_size
from megatron_lite.config_loader import load_config
from megatron_lite.errors import UserError
from megatron_lite.model.gpt import GPTModel
from megatron_lite.model.size import count_parameters, flops_per_token
from megatron_lite.model.init import init_std
from tests.conftest import tiny_model_config

VOCAB = 96


def small_cfg(**kw) -> ModelConfig:
    base = dict(num_layers=2, hidden_size=64, num_attention_heads=4, seq_length=16, max_position_embeddings=32,
                padded_vocab_size=VOCAB)
    base.update(kw)
    return tiny_model_config(**base)


def build(cfg: ModelConfig, seed: int = 0) -> GPTModel:
    torch.manual_seed(seed)
    return GPTModel(cfg)


def tokens(b=2, s=12, seed=1):
    return torch.randint(0, VOCAB, (b, s), generator=torch.Generator().manual_seed(seed))


# ---- sizes ---------------------------------------------------------------------------------------------------

POLYCODER = [(12, 768, 12, 162.3e6), (24, 1024, 16, 405.3e6), (32, 2560, 32, 2.78e9)]


def polycoder_cfg(layers, hidden, heads, **kw):
    vocab = pad_vocab_size(50257, 128)
    return tiny_model_config(num_layers=layers, hidden_size=hidden, num_attention_heads=heads, seq_length=2048,
                       max_position_embeddings=2048, pos_emb="rotary", no_weight_tying=True,
                       padded_vocab_size=vocab, **kw)


@pytest.mark.parametrize("layers,hidden,heads,expected", POLYCODER)
def test_polycoder_parameter_counts(layers, hidden, heads, expected):
    cfg = polycoder_cfg(layers, hidden, heads)
    assert cfg.padded_vocab_size == 50304
    with torch.device("meta"):
        model = GPTModel(cfg)
    assert all(p.is_meta for p in model.parameters())  # counting a 2.78B model must not allocate it
    allocated = sum(p.numel() for p in model.parameters())
    assert count_parameters(cfg) == allocated
    assert abs(allocated - expected) / expected < 0.01


@pytest.mark.parametrize("pos_emb", ["rotary", "learned"])
def test_tied_count_and_names(pos_emb):
    for untied in (True, False):
        cfg = small_cfg(no_weight_tying=untied, pos_emb=pos_emb)
        model = build(cfg)
        names = list(model.state_dict())
        assert count_parameters(cfg) == sum(p.numel() for p in model.parameters())
        assert ("embed_out.weight" in names) == untied
        assert ("embed_positions.weight" in names) == (pos_emb == "learned")
        layer = [n[len("layers.0."):] for n in names if n.startswith("layers.0.")]
        assert layer == [f"{m}.{w}" for m in ("input_layernorm", "attention.query_key_value", "attention.dense",
                                               "post_attention_layernorm", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h")
                         for w in ("weight", "bias")]
        assert names[0] == "embed_in.weight" and "final_layer_norm.bias" in names


def test_flops_per_token_matches_megatron_formula():
    cfg = polycoder_cfg(24, 1024, 16)
    L, h, s, v = 24, 1024, 2048, 50304
    megatron = 72 * L * h * h * (1 + s / (6 * h) + v / (12 * L * h))  # per token, Narayanan et al. (2021)
    assert flops_per_token(cfg, s) == pytest.approx(megatron)


# ---- config errors -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("key,value", [("pos_emb", "alibi"), ("norm", "scalenorm"), ("activation", "relu"),
                                       ("attention_impl", "flash")])
def test_unsupported_choices_name_the_key(key, value):
    flag = "--" + key.replace("_", "-")
    with pytest.raises(UserError, match=f"'{flag}': '{value}' is not supported"):
        load_config([], [flag, value])


def test_unbuildable_shape_names_the_key():
    with pytest.raises(UserError, match="num_attention_heads"):
        GPTModel(small_cfg(num_attention_heads=5))


# ---- attention paths -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("rotary_pct", [0.25, 1.0])
@pytest.mark.parametrize("parallel", [False, True])
def test_sdpa_matches_reference(rotary_pct, parallel):
    cfg = dict(rotary_pct=rotary_pct, gpt_j_residual=parallel)
    ref, fast = build(small_cfg(attention_impl="reference", **cfg)), build(small_cfg(attention_impl="sdpa", **cfg))
    fast.load_state_dict(ref.state_dict())
    x = tokens()
    out_ref, out_fast = ref(x), fast(x)
    torch.testing.assert_close(out_fast, out_ref, atol=1e-5, rtol=0)
    out_ref.square().mean().backward()
    out_fast.square().mean().backward()
    for (name, p), q in zip(ref.named_parameters(), fast.parameters()):
        torch.testing.assert_close(q.grad, p.grad, atol=1e-5, rtol=1e-4, msg=name)


# ---- Hugging Face parity -------------------------------------------------------------------------------------

def hf_model(cfg: ModelConfig):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    hf_cfg = GPTNeoXConfig(
        vocab_size=cfg.padded_vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_attention_heads, intermediate_size=4 * cfg.hidden_size, hidden_act="gelu",
        max_position_embeddings=cfg.max_position_embeddings, layer_norm_eps=cfg.layernorm_epsilon,
        # transformers 5.x keeps rotary_pct / rotary_emb_base in rope_parameters.
        rope_parameters={"rope_type": "default", "rope_theta": float(cfg.rotary_emb_base),
                         "partial_rotary_factor": cfg.rotary_pct},
        use_parallel_residual=cfg.gpt_j_residual, tie_word_embeddings=not cfg.no_weight_tying,
        attn_implementation="eager",
    )
    torch.manual_seed(3)
    model = GPTNeoXForCausalLM(hf_cfg).eval()
    with torch.no_grad():  # move every weight off its init value so norms and biases are exercised too
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def hf_name(name: str, hf_sd: dict) -> str:
    """Our name in an in-memory HF model: 'gpt_neox.' prefix; transformers 5.x calls embed_out 'lm_head'
    in memory (its saved files still say embed_out)."""
    if name.startswith("embed_out"):
        return name if name in hf_sd else name.replace("embed_out", "lm_head")
    return "gpt_neox." + name


@pytest.mark.parametrize("rotary_pct", [0.25, 1.0])
@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("untied", [True, False])
def test_matches_hugging_face_gpt_neox(rotary_pct, parallel, untied):
    cfg = small_cfg(rotary_pct=rotary_pct, gpt_j_residual=parallel, no_weight_tying=untied, layernorm_epsilon=1e-5)
    hf, ours = hf_model(cfg), build(cfg).eval()
    hf_sd = hf.state_dict()
    with torch.no_grad():
        for name, p in ours.named_parameters():
            p.copy_(hf_sd[hf_name(name, hf_sd)])
    x = tokens()
    with torch.no_grad():
        diff = (ours(x) - hf(x).logits).abs().max().item()
    assert diff < 1e-4


def test_gpt_neox_defaults_are_gpt2_and_match_hugging_face_gpt2():
    """GPT-NeoX's default architecture (learned absolute positions, tied embeddings, sequential residual) with the
    tanh GeLU is GPT-2's: transformers' GPT2LMHeadModel with our weights gives our logits. GPT-2 stores q, k, v as
    three blocks and its linears as [in, out]; ours interleave q, k, v per head and are [out, in]."""
    cfg = small_cfg(pos_emb="learned", no_weight_tying=False, bias_gelu_fusion=True)
    ours = build(cfg).eval()
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=cfg.max_position_embeddings, n_embd=cfg.hidden_size, n_layer=cfg.num_layers,
        n_head=cfg.num_attention_heads, activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, layer_norm_epsilon=cfg.layernorm_epsilon, tie_word_embeddings=True)).eval()
    sd, h, heads = ours.state_dict(), cfg.hidden_size, cfg.num_attention_heads

    def qkv_blocks(t):  # [heads x (q, k, v) x d, ...] -> [(q heads), (k heads), (v heads), ...]
        return t.view(heads, 3, h // heads, *t.shape[1:]).transpose(0, 1).reshape(3 * h, *t.shape[1:])

    theirs = {"transformer.wte.weight": sd["embed_in.weight"], "transformer.wpe.weight": sd["embed_positions.weight"],
              "transformer.ln_f.weight": sd["final_layer_norm.weight"],
              "transformer.ln_f.bias": sd["final_layer_norm.bias"]}
    for i in range(cfg.num_layers):
        ours_, hf_ = f"layers.{i}.", f"transformer.h.{i}."
        for a, b in (("input_layernorm", "ln_1"), ("post_attention_layernorm", "ln_2")):
            theirs.update({f"{hf_}{b}.{k}": sd[f"{ours_}{a}.{k}"] for k in ("weight", "bias")})
        linears = {"attention.query_key_value": "attn.c_attn", "attention.dense": "attn.c_proj",
                   "mlp.dense_h_to_4h": "mlp.c_fc", "mlp.dense_4h_to_h": "mlp.c_proj"}
        for a, b in linears.items():
            w, bias = sd[f"{ours_}{a}.weight"], sd[f"{ours_}{a}.bias"]
            if a == "attention.query_key_value":
                w, bias = qkv_blocks(w), qkv_blocks(bias)
            theirs[f"{hf_}{b}.weight"], theirs[f"{hf_}{b}.bias"] = w.t().contiguous(), bias
    missing, unexpected = hf.load_state_dict(theirs, strict=False)
    assert not unexpected and all(k == "lm_head.weight" or k.endswith(".attn.bias") for k in missing), missing
    x = tokens()
    with torch.no_grad():
        assert (ours(x) - hf(x).logits).abs().max().item() < 1e-4


# ---- KV cache ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("impl", ["sdpa", "reference"])
@pytest.mark.parametrize("prefill", [1, 5])
@pytest.mark.parametrize("pos_emb", ["rotary", "learned"])
def test_kv_cache_decoding_matches_full_forward(impl, prefill, pos_emb):
    model = build(small_cfg(attention_impl=impl, rotary_pct=0.25, pos_emb=pos_emb)).eval()
    x = tokens(s=12)
    with torch.no_grad():
        full = model(x)  # [b, s, v]
        cache = model.new_kv_cache(2, 12, torch.float32, "cpu")
        steps = [model(x[:, :prefill], kv_cache=cache)]
        for t in range(prefill, 12):
            positions = torch.tensor([[t]])  # as the generation engine passes them
            steps.append(model(x[:, t:t + 1], position_ids=positions, kv_cache=cache))
    assert cache.length == 12
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)


def test_kv_cache_overflow_is_an_error():
    model = build(small_cfg()).eval()
    cache = model.new_kv_cache(1, 4)
    with torch.no_grad(), pytest.raises(ValueError, match="max_len"):
        model(tokens(b=1, s=5), kv_cache=cache)


# ---- init ----------------------------------------------------------------------------------------------------

EXPECTED_STD = {  # the GPT-NeoX formulas, written out independently of init.py
    "normal": lambda L, h, std: std,
    "scaled_normal": lambda L, h, std: std / math.sqrt(2 * L),
    "small_init": lambda L, h, std: math.sqrt(2 / (5 * h)),
    "wang_init": lambda L, h, std: 2 / L / math.sqrt(h),
}


@pytest.mark.parametrize("method", sorted(EXPECTED_STD))
def test_init_methods_give_the_formula_std(method):
    L, h, std = 4, 256, 0.03
    cfg = small_cfg(num_layers=L, hidden_size=h, init_method=method, output_layer_init_method=method,
                    init_method_std=std)
    model = build(cfg)
    expected = EXPECTED_STD[method](L, h, std)
    assert init_std(method, cfg) == pytest.approx(expected)
    layer = model.layers[1]
    for w in (layer.attention.query_key_value.weight, layer.mlp.dense_4h_to_h.weight, model.embed_in.weight):
        assert w.std().item() == pytest.approx(expected, rel=0.05)
        assert abs(w.mean().item()) < expected * 0.05
    assert torch.all(layer.attention.dense.bias == 0) and torch.all(layer.input_layernorm.weight == 1)
    assert torch.all(model.final_layer_norm.bias == 0)


def test_output_layers_use_output_init_method():
    L, h = 4, 256
    model = build(small_cfg(num_layers=L, hidden_size=h, init_method="small_init", output_layer_init_method="wang_init"))
    for layer in model.layers:
        for w in (layer.attention.dense.weight, layer.mlp.dense_4h_to_h.weight):
            assert w.std().item() == pytest.approx(2 / L / math.sqrt(h), rel=0.05)
        assert layer.mlp.dense_h_to_4h.weight.std().item() == pytest.approx(math.sqrt(2 / (5 * h)), rel=0.05)


@pytest.mark.parametrize("key", ["init_method", "output_layer_init_method"])
def test_unknown_init_method_is_a_user_error(key):
    with pytest.raises(UserError, match=f"{key}.*xavier.*small_init"):
        GPTModel(small_cfg(**{key: "xavier"}))


# ---- activation checkpointing --------------------------------------------------------------------------------

def test_activation_checkpointing_gives_identical_loss_and_grads():
    model = build(small_cfg(hidden_dropout=0.1, attention_dropout=0.1)).train()
    x = tokens()
    results = []
    for ckpt in (False, True):
        model.checkpoint_activations = ckpt
        model.zero_grad()
        torch.manual_seed(7)  # the same dropout masks in both runs
        loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), x.roll(-1, 1).flatten())
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert torch.equal(loss_a, loss_b)
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(b, a, atol=1e-7, rtol=1e-6)
