"""The lm-eval adapter's scorer against plain references; registration with the harness (lm-eval is a test extra)."""

import pytest
import torch

from megatron_lite.config import ModelConfig
from megatron_lite.data.tokenizer import Tokenizer, train_byte_level_bpe
from megatron_lite.evaluation.lm_eval_adapter import Scorer
from megatron_lite.model.gpt import GPTModel
from tests.conftest import tiny_model_config

TEXTS = ["def add(a, b):\n    return a + b\n", "for i in range(10):\n    print(i)\n", "import os\nos.getcwd()\n"] * 4


@pytest.fixture(scope="module")
def scorer():
    tokenizer = Tokenizer(train_byte_level_bpe(TEXTS, 300), "test")
    torch.manual_seed(0)
    model = GPTModel(tiny_model_config(num_layers=2, hidden_size=32, num_attention_heads=4, seq_length=16,
                                 max_position_embeddings=16, padded_vocab_size=320)).eval()
    return Scorer(model, tokenizer, torch.device("cpu"), max_length=16, batch_size=3)


def reference_loglikelihood(scorer, context, continuation):
    """One forward over [eod] + context + continuation; sum the continuation's log-probabilities."""
    stripped = context.rstrip(" ")
    n = len(scorer.tokenizer.encode(stripped))
    ids = [scorer.tokenizer.eod] + scorer.tokenizer.encode(context + continuation)
    with torch.no_grad():
        logp = torch.log_softmax(scorer.model(torch.tensor([ids[:-1]]))[0].double(), -1)  # [s, v]
    return float(sum(logp[i - 1, ids[i]] for i in range(n + 1, len(ids))))


def test_loglikelihood_matches_one_forward_per_pair(scorer):
    pairs = [("def add(a, b):", "\n    return a + b"), ("for i in ", "range(10)"), ("import ", "os"), ("x = ", "1")]
    got = scorer.loglikelihood(pairs)  # batched (3 then 1), right-padded
    for (context, continuation), (value, _) in zip(pairs, got):
        assert value == pytest.approx(reference_loglikelihood(scorer, context, continuation), rel=1e-5)
    assert [v for v, _ in scorer.loglikelihood(pairs[:1])] == pytest.approx([got[0][0]], rel=1e-9)


def test_greedy_flag_marks_exactly_the_argmax_token(scorer):
    tok = scorer.tokenizer
    checked = set()
    for context in ("def add(a, b):", "for i in", "import", "x ="):
        ctx = [tok.eod] + tok.encode(context)
        logits = scorer.model(torch.tensor([ctx]))[0, -1, :tok.vocab_size]  # [v] (padded ids are not text)
        best, other = logits.topk(2).indices.tolist()
        for token, expected in ((best, True), (other, False)):
            text = tok.decode([token])
            if scorer._encode_pair(context, text)[1] != [token]:
                continue  # this text would tokenize differently after the context
            assert scorer.loglikelihood([(context, text)])[0][1] is expected, (context, text)
            checked.add(expected)
    assert checked == {True, False}


def test_generation_stops_at_until(scorer):
    free = scorer.generate_until([("x", {"until": [], "max_gen_toks": 8})])[0]
    assert free
    cut = scorer.generate_until([("x", {"until": [free[1:3]], "max_gen_toks": 8})])[0]
    assert free[1:3] not in cut and free.startswith(cut)


def test_registered_with_the_harness(scorer):
    from lm_eval.api.instance import Instance
    from lm_eval.api.registry import get_model

    from megatron_lite.evaluation.lm_eval_adapter import register

    cls = register()
    assert get_model("megatron_lite") is cls
    lm = cls.__new__(cls)  # the constructor loads a checkpoint; here the scorer is given directly
    lm.scorer = scorer
    request = Instance("loglikelihood", {}, ("import ", "os"), 0)
    assert lm.loglikelihood([request]) == scorer.loglikelihood([("import ", "os")])
