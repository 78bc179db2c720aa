"""Hugging Face GPTNeoXForCausalLM interop: exported directories load in transformers with the same logits and
greedy tokens as ours; transformers' own saved models import with the same logits; bad directories fail cleanly."""

import inspect
import json

import pytest
import torch
import transformers

from megatron_lite.config import DataConfig, GenerateConfig, ModelConfig
from megatron_lite.data.tokenizer import build_tokenizer, save_tokenizer, train_byte_level_bpe
from megatron_lite.errors import UserError
from megatron_lite.generation.engine import TextGenerator
from megatron_lite.interop.hf import load_hf_dir, model_fields, save_hf_dir
from megatron_lite.model.gpt import GPTModel
from megatron_lite.training.checkpoint import load_state_checked
from tests.conftest import tiny_model_config

VOCAB = 384  # tokenizer of 300 tokens padded to a multiple of 128


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    """A byte-level BPE with <|endoftext|>, trained in-process on torch's own source."""
    out = tmp_path_factory.mktemp("tok")
    save_tokenizer(train_byte_level_bpe([inspect.getsource(torch.nn.modules.linear)], 300), str(out))
    return out


def perturbed(model):
    """Move every weight off its init value so that norms and biases are exercised too."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def our_model(**kw):
    cfg = tiny_model_config(num_layers=2, hidden_size=64, num_attention_heads=4, padded_vocab_size=VOCAB,
                      max_position_embeddings=64, **kw)
    torch.manual_seed(0)
    return perturbed(GPTModel(cfg))


def tokens(b=2, s=24):
    return torch.randint(0, VOCAB, (b, s), generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("rotary_pct,parallel,untied,tanh_gelu", [
    (0.25, False, True, False), (0.25, True, True, False), (1.0, False, False, False), (0.5, True, False, False),
    (0.25, False, True, True),  # bias-gelu-fusion: the fused kernel's tanh GeLU exports as gelu_pytorch_tanh
])
def test_export_gives_same_logits_in_transformers(tmp_path, tokenizer_dir, rotary_pct, parallel, untied, tanh_gelu):
    ours = our_model(rotary_pct=rotary_pct, gpt_j_residual=parallel, no_weight_tying=untied,
                     bias_gelu_fusion=tanh_gelu)
    tok = build_tokenizer("HFTokenizer", str(tokenizer_dir / "tokenizer.json"))
    save_hf_dir(str(tmp_path / "hf"), ours.state_dict(), ours.cfg, tok)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf")).eval()
    assert hf.config.use_parallel_residual is parallel and hf.config.tie_word_embeddings is not untied
    x = tokens()
    with torch.no_grad():
        diff = (hf(x).logits - ours(x)).abs().max().item()
    assert diff < 1e-4


def test_learned_positions_cannot_be_exported(tmp_path, tokenizer_dir):
    """GPT-NeoX's default pos-emb learned has no place in GPTNeoXForCausalLM (rotary only): a clear error, no dir."""
    ours = our_model(pos_emb="learned")
    tok = build_tokenizer("HFTokenizer", str(tokenizer_dir / "tokenizer.json"))
    with pytest.raises(UserError, match="pos-emb 'learned'.*cannot be exported"):
        save_hf_dir(str(tmp_path / "hf"), ours.state_dict(), ours.cfg, tok)
    assert not (tmp_path / "hf").exists()


def test_exported_tokenizer_loads_in_transformers(tmp_path, tokenizer_dir):
    ours = our_model()
    tok = build_tokenizer("HFTokenizer", str(tokenizer_dir / "tokenizer.json"))
    save_hf_dir(str(tmp_path / "hf"), ours.state_dict(), ours.cfg, tok)
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    text = "def f(x):\n\tif x:  # é\n        return x<|endoftext|>"
    assert hf_tok(text)["input_ids"] == tok.encode(text)
    assert hf_tok.decode(tok.encode(text)) == text
    assert hf_tok.eos_token_id == tok.eod


@pytest.mark.parametrize("prompt", ["def forward(self, x):\n", "import torch\n\nclass"])
def test_greedy_generation_matches_transformers_token_for_token(tmp_path, tokenizer_dir, prompt):
    ours = our_model(rotary_pct=0.5, gpt_j_residual=True)
    tok = build_tokenizer("HFTokenizer", str(tokenizer_dir / "tokenizer.json"))
    save_hf_dir(str(tmp_path / "hf"), ours.state_dict(), ours.cfg, tok)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf")).eval()
    context = tok.encode(prompt)
    generator = TextGenerator(ours, tok, GenerateConfig(temperature=0.0, maximum_tokens=24), max_len=64)
    (mine,) = generator.generate_ids(context)
    with torch.no_grad():
        theirs = hf.generate(torch.tensor([context]), do_sample=False, max_new_tokens=24,
                             eos_token_id=tok.eod, pad_token_id=tok.eod)[0, len(context):].tolist()
    assert len(mine) > 0 and mine == theirs


@pytest.mark.parametrize("tied,parallel,act", [(False, True, "gelu"), (True, False, "gelu"),
                                                (False, False, "gelu_new")])
def test_import_of_transformers_model_gives_same_logits(tmp_path, tokenizer_dir, tied, parallel, act):
    hf_cfg = transformers.GPTNeoXConfig(
        vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
        max_position_embeddings=64, use_parallel_residual=parallel, tie_word_embeddings=tied, hidden_act=act,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25})
    torch.manual_seed(2)
    hf = perturbed(transformers.GPTNeoXForCausalLM(hf_cfg))
    hf.save_pretrained(str(tmp_path / "hf"))
    for name in ("tokenizer.json",):
        (tmp_path / "hf" / name).write_bytes((tokenizer_dir / name).read_bytes())
    model_cfg, data_cfg = tiny_model_config(seq_length=32), DataConfig()
    weights = load_hf_dir(str(tmp_path / "hf"), model_cfg, data_cfg)
    assert (model_cfg.rotary_pct, model_cfg.gpt_j_residual, model_cfg.no_weight_tying) == (0.25, parallel, not tied)
    assert model_cfg.bias_gelu_fusion is (act == "gelu_new")
    assert data_cfg.vocab_file == str(tmp_path / "hf" / "tokenizer.json")
    ours = GPTModel(model_cfg).eval()
    load_state_checked(ours, weights, "test")
    x = tokens()
    with torch.no_grad():
        diff = (hf(x).logits - ours(x)).abs().max().item()
    assert diff < 1e-4


def test_a_silent_config_json_gets_the_rotary_width_transformers_gives_it():
    """A config.json naming neither rotary_pct nor partial_rotary_factor: transformers' GPTNeoXConfig default."""
    minimal = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 32,
               "vocab_size": 128}
    theirs = transformers.GPTNeoXConfig(**minimal).rope_parameters["partial_rotary_factor"]
    assert model_fields({"model_type": "gpt_neox", **minimal}, "config.json")["rotary_pct"] == theirs == 0.25


def test_unsupported_or_broken_directories_are_clear_errors(tmp_path, tokenizer_dir):
    ours = our_model()
    tok = build_tokenizer("HFTokenizer", str(tokenizer_dir / "tokenizer.json"))
    out = tmp_path / "hf"
    save_hf_dir(str(out), ours.state_dict(), ours.cfg, tok)
    with pytest.raises(UserError, match="already exists and is not empty"):
        save_hf_dir(str(out), ours.state_dict(), ours.cfg, tok)
    config = json.loads((out / "config.json").read_text())
    for key, value, message in [("model_type", "bert", "only 'gpt_neox' and 'llama'"),
                                ("hidden_act", "relu", "hidden_act = 'relu' is not supported"),
                                ("intermediate_size", 100, "intermediate_size = 100")]:
        (out / "config.json").write_text(json.dumps({**config, key: value}))
        with pytest.raises(UserError, match=message):
            load_hf_dir(str(out), tiny_model_config(), DataConfig())
    (out / "config.json").write_text(json.dumps(config))
    (out / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(UserError, match="cannot read the weights"):
        load_hf_dir(str(out), tiny_model_config(), DataConfig())
