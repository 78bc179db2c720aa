"""Generation engine: KV cache vs recompute, seeds, beam and contrastive search vs plain references, stop rules."""

import dataclasses
import itertools

import pytest
import torch
import torch.nn.functional as F

from megatron_lite.config import GenerateConfig, ModelConfig
from megatron_lite.generation.engine import TextGenerator
from megatron_lite.generation.sampling import apply_repetition_penalty, filter_logits
from megatron_lite.generation.stopping import cut_point, truncate
from megatron_lite.model.gpt import GPTModel
from tests.conftest import tiny_model_config

VOCAB = 64


class CharTokenizer:
    """Token i <-> one character; 0 is end-of-document."""

    eod = 0

    def encode(self, text):
        return [1 + (ord(c) % (VOCAB - 1)) for c in text]

    def decode(self, ids):
        return "".join(chr(32 + i % 95) for i in ids)


def tiny_model(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = tiny_model_config(num_layers=2, hidden_size=32, num_attention_heads=4, seq_length=64,
                      max_position_embeddings=64, padded_vocab_size=VOCAB, rotary_pct=0.5, **kw)
    return GPTModel(cfg).eval()


def generator(model, seed=1, **cfg):
    return TextGenerator(model, CharTokenizer(), GenerateConfig(**cfg), max_len=64, seed=seed)


@pytest.mark.parametrize("penalty", [1.0, 1.3])
def test_kv_cache_equals_recompute_token_for_token(penalty):
    model = tiny_model()
    cached = generator(model, maximum_tokens=40, repetition_penalty=penalty).generate_ids([5, 6, 7], 3)
    plain = generator(model, maximum_tokens=40, repetition_penalty=penalty, recompute=True).generate_ids([5, 6, 7], 3)
    assert cached == plain and len(cached[0]) > 0


def test_seeded_sampling_is_reproducible_and_batch_rows_differ():
    model = tiny_model()
    kw = dict(maximum_tokens=30, temperature=1.0, top_p=0.9)
    a = generator(model, seed=7, **kw).generate_ids([3, 4], 4)
    b = generator(model, seed=7, **kw).generate_ids([3, 4], 4)
    c = generator(model, seed=8, **kw).generate_ids([3, 4], 4)
    assert a == b and a != c
    assert len({tuple(row) for row in a}) > 1  # samples of one batch are independent draws
    recomputed = generator(model, seed=7, recompute=True, **kw).generate_ids([3, 4], 4)
    assert recomputed == a  # the same random draws whichever way the logits are computed


def plain_greedy(model, context, length, eod=0):
    """Greedy tokens from the full forward of everything so far: no cache, no truncation."""
    out = []
    with torch.no_grad():
        while len(out) < length and eod not in out:
            out.append(model(torch.tensor([context + out]))[0, -1].float().argmax().item())
    return out


@pytest.mark.parametrize("recompute", [False, True])
def test_prompt_longer_than_the_context_keeps_its_end(recompute):
    """max_len 64, 10 new tokens: the engine keeps the last 64 - 10 = 54 prompt tokens."""
    model = tiny_model()
    prompt = torch.randint(1, VOCAB, (120,), generator=torch.Generator().manual_seed(2)).tolist()
    out = generator(model, maximum_tokens=10, recompute=recompute).generate_ids(prompt, 1)
    expected = plain_greedy(model, prompt[-54:], 10)
    assert out == [expected] and len(expected) == 10
    # the check can tell: one prompt token more or less, or the prompt's start, gives other tokens
    assert all(plain_greedy(model, kept, 10) != expected for kept in (prompt[-55:], prompt[-53:], prompt[:54]))


def brute_force_beam(model, context, length, eod):
    """Best sequence by (sum log-prob) / (tokens before and including the first eod), all sequences."""
    best, best_score = None, float("-inf")
    for seq in itertools.product(range(VOCAB), repeat=length):
        if eod in seq and any(t != eod for t in seq[seq.index(eod) + 1:]):
            continue  # after end-of-document only end-of-document
        ids = torch.tensor([context + list(seq)])
        logp = F.log_softmax(model(ids)[0].float(), -1)
        upto = seq.index(eod) + 1 if eod in seq else length
        score = sum(logp[len(context) - 1 + i, seq[i]].item() for i in range(upto)) / upto
        if score > best_score:
            best, best_score = list(seq), score
    return best


def test_exhaustive_beam_search_finds_the_best_sequence():
    model = tiny_model()
    context = [3, 9, 4]
    with torch.no_grad():
        expected = brute_force_beam(model, context, 2, eod=0)
    # VOCAB beams over 2 steps keep every 1-token prefix alive, so the search is exhaustive.
    got = generator(model, maximum_tokens=2, num_beams=VOCAB).generate_ids(context, 1)[0]
    assert got == expected


def test_contrastive_search_without_penalty_is_greedy():
    model = tiny_model()
    greedy = generator(model, maximum_tokens=25).generate_ids([2, 3], 2)
    contrastive = generator(model, maximum_tokens=25, penalty_alpha=1e-9, top_k=4).generate_ids([2, 3], 2)
    assert contrastive == greedy


def reference_contrastive(model, context, steps, k, alpha):
    """Contrastive search recomputing everything, no cache: the plain reference."""
    hidden = {}
    handle = model.final_layer_norm.register_forward_hook(lambda m, i, o: hidden.__setitem__("h", o))
    tokens = list(context)
    with torch.no_grad():
        for _ in range(steps):
            model(torch.tensor([tokens]))
            past = hidden["h"][0]  # [t, h]
            probs = model(torch.tensor([tokens]))[0, -1].float().softmax(-1)
            top_p, top_i = probs.topk(k)
            scores = []
            for p, cand in zip(top_p, top_i):
                model(torch.tensor([tokens + [int(cand)]]))
                h = hidden["h"][0, -1]
                sim = F.cosine_similarity(h[None].float(), past.float(), dim=-1).max()
                scores.append((1 - alpha) * p - alpha * sim)
            tokens.append(int(top_i[int(torch.stack(scores).argmax())]))
            if tokens[-1] == 0:
                break
    handle.remove()
    return tokens[len(context):]


@pytest.mark.parametrize("alpha", [0.6, 0.95])
def test_contrastive_search_matches_reference(alpha):
    model = tiny_model()
    context = [7, 8, 9, 7, 8, 9, 10, 11]
    got = generator(model, maximum_tokens=12, penalty_alpha=alpha, top_k=5).generate_ids(context, 1)[0]
    expected = reference_contrastive(model, context, 12, 5, alpha)
    assert got == expected
    # The penalty must matter here, or this test would not tell contrastive search from greedy.
    assert alpha < 0.9 or got != generator(model, maximum_tokens=12).generate_ids(context, 1)[0]


def test_stop_rules():
    assert cut_point("x = 1\nprint(x)", stop_sequences=["\nprint"]) == 5
    assert cut_point("    return a\n\ndef g():\n", code_block=True) == 13
    assert cut_point("    return a\n    # note\n", code_block=True) is None
    assert truncate("a\n# end\nb", patterns=[r"^#"]) == "a\n"
    assert truncate("abc", ["zz"]) == "abc"


def test_stop_sequence_ends_a_sample_and_marks_it_finished():
    model = tiny_model()
    gen = generator(model, maximum_tokens=30)
    free = gen.complete("ab")[0]
    stop = free.text[3:5]
    stopped = generator(model, maximum_tokens=30, stop_sequences=[stop]).complete("ab")[0]
    assert stopped.finished and stopped.text == free.text[: free.text.index(stop)]


def test_streaming_reports_the_text_in_order():
    model = tiny_model()
    pieces = []
    done = generator(model, maximum_tokens=20).complete("hi", on_text=pieces.append)[0]
    assert "".join(pieces) == done.text and len(pieces) > 1


def test_repetition_penalty_and_filters():
    logits = torch.tensor([[2.0, -2.0, 1.0, 0.5]])
    out = apply_repetition_penalty(logits, torch.tensor([[0, 1]]), 2.0)
    assert out.tolist() == [[1.0, -4.0, 1.0, 0.5]]
    assert torch.isinf(filter_logits(logits, top_k=2)).tolist() == [[False, True, False, True]]
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    assert torch.isinf(filter_logits(probs, top_p=0.7)).tolist() == [[False, False, True, True]]


def test_config_validation_of_decoding_keys(tmp_path):
    from megatron_lite.config_loader import load_config
    from megatron_lite.errors import UserError

    path = tmp_path / "g.yml"
    path.write_text("train_micro_batch_size_per_gpu: 1\n")
    for overrides, message in [(["--penalty-alpha", "0.5"], "top-k"), (["--num-beams", "2", "--num-samples", "3"], "num-beams"),
                               (["--truncate-before-pattern", "(["], "regular expression")]:
        with pytest.raises(UserError, match=message):
            load_config([str(path)], overrides)
    assert dataclasses.replace(GenerateConfig(), top_k=3).top_k == 3


@pytest.mark.parametrize("parallel_residual, rotary_pct, tanh_gelu",
                         [(False, 0.5, False), (True, 1.0, False), (False, 0.25, True), (True, 0.5, True)])
def test_fast_decode_step_matches_the_model_forward(parallel_residual, rotary_pct, tanh_gelu):
    from megatron_lite.generation.fast_decode import FastDecoder

    torch.manual_seed(0)
    cfg = tiny_model_config(num_layers=2, hidden_size=64, num_attention_heads=4, seq_length=64, max_position_embeddings=64,
                      padded_vocab_size=VOCAB, rotary_pct=rotary_pct, gpt_j_residual=parallel_residual,
                      bias_gelu_fusion=tanh_gelu)
    model = GPTModel(cfg).eval()
    fast = FastDecoder(model)
    assert fast.kernel is not None  # the streaming linear kernel is what is under test here (batch 3, fp32)
    ids = torch.randint(0, VOCAB, (3, 12))
    with torch.no_grad():
        ref_cache, fast_cache = model.new_kv_cache(3, 12), model.new_kv_cache(3, 12)
        model(ids[:, :4], kv_cache=ref_cache)
        model(ids[:, :4], kv_cache=fast_cache)
        for t in range(4, 12):
            expected = model(ids[:, t:t + 1], kv_cache=ref_cache)[:, -1]
            got = fast.step(ids[:, t:t + 1], fast_cache)
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(fast_cache.keys[1], ref_cache.keys[1], atol=1e-5, rtol=1e-5)
        assert fast_cache.length == ref_cache.length == 12


def test_engine_tokens_identical_with_and_without_the_fast_step():
    model = tiny_model()
    cfg = GenerateConfig(maximum_tokens=30, temperature=0.9, top_k=20)
    fast = TextGenerator(model, CharTokenizer(), cfg, 64, seed=3).generate_ids([4, 5], 3)
    plain = TextGenerator(model, CharTokenizer(), cfg, 64, seed=3, fast_decode=False).generate_ids([4, 5], 3)
    assert fast == plain
