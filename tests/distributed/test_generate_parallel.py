"""Generation with tensor parallelism: tp=2 produces exactly the tokens tp=1 produces (gloo, CPU)."""

import torch

from megatron_lite.config import GenerateConfig, ModelConfig
from megatron_lite.generation.engine import TextGenerator
from megatron_lite.model.gpt import GPTModel
from tests.conftest import tiny_model_config
from tests.distributed.harness import run_workers
from tests.unit.test_generation import CharTokenizer

VOCAB = 128
SETTINGS = {  # name: decoding settings
    "greedy": dict(maximum_tokens=24),
    "sampled": dict(maximum_tokens=24, temperature=0.9, top_p=0.95, repetition_penalty=1.2),
    "beam": dict(maximum_tokens=10, num_beams=3),
    "contrastive": dict(maximum_tokens=12, penalty_alpha=0.6, top_k=4),
}


def generate_all() -> dict:
    """Tokens for every setting from the same seeded model (the init is the same at every tp size)."""
    torch.manual_seed(0)
    cfg = tiny_model_config(num_layers=2, hidden_size=64, num_attention_heads=4, seq_length=64, max_position_embeddings=64,
                      padded_vocab_size=VOCAB, rotary_pct=0.5)
    model = GPTModel(cfg).eval()
    out = {}
    for name, settings in SETTINGS.items():
        gen = TextGenerator(model, CharTokenizer(), GenerateConfig(**settings), max_len=64, seed=5)
        out[name] = gen.generate_ids([3, 1, 4, 1, 5], 3 if name != "beam" else 2)
    return out


def _check_against(expected):
    got = generate_all()
    for name in SETTINGS:
        assert got[name] == expected[name], (name, got[name], expected[name])


def test_tp2_generation_equals_tp1():
    expected = generate_all()  # this process: tp=1
    run_workers(_check_against, world=2, tp=2, args=(expected,), timeout=180)
