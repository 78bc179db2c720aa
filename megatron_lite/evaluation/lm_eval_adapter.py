"""EleutherAI lm-eval harness adapter (optional extra `lm-eval`).

    python -m megatron_lite.evaluation.lm_eval_adapter run --model megatron_lite \\
        --model_args config=configs/tiny.yml+configs/local_setup.yml,load=checkpoints/tiny --tasks ...

`Scorer` answers the harness's three request types with our model and tokenizer and needs no lm-eval;
`register()` wraps it as the harness model `megatron_lite`.
"""

import contextlib
import sys
from typing import List, Tuple

import torch

from megatron_lite.build import load_trained_model
from megatron_lite.config import GenerateConfig
from megatron_lite.config_loader import load_config
from megatron_lite.evaluation.perplexity import rolling_windows, window_nll
from megatron_lite.generation.engine import TextGenerator
from megatron_lite.precision import autocast, resolve_precision


class Scorer:
    """Log-likelihoods and greedy continuations from one model, in batches, within its context length."""

    def __init__(self, model, tokenizer, device, max_length: int, batch_size: int = 8, autocast_ctx=None):
        self.model, self.tokenizer, self.device = model.eval(), tokenizer, device
        self.max_length, self.batch_size = max_length, batch_size
        self.autocast_ctx = autocast_ctx or contextlib.nullcontext

    def _encode_pair(self, context: str, continuation: str) -> Tuple[list, list]:
        """Token ids of context and continuation, split where the whole text's tokens split (spaces move right)."""
        stripped = context.rstrip(" ")
        continuation = context[len(stripped):] + continuation
        whole = self.tokenizer.encode(stripped + continuation)
        n = len(self.tokenizer.encode(stripped)) if stripped else 0
        return ([self.tokenizer.eod] + whole[:n]), whole[n:]

    @torch.no_grad()
    def loglikelihood(self, pairs: List[Tuple[str, str]]) -> List[Tuple[float, bool]]:
        """(log P(continuation | context), whether greedy decoding would produce it) per pair."""
        out = []
        for i in range(0, len(pairs), self.batch_size):
            encoded = [self._encode_pair(c, x) for c, x in pairs[i:i + self.batch_size]]
            rows = [(ctx + cont)[-(self.max_length + 1):] for ctx, cont in encoded]  # keep the end of long inputs
            width = max(len(r) - 1 for r in rows)
            inputs = torch.full((len(rows), width), self.tokenizer.eod, dtype=torch.long)  # [b, s]
            for j, r in enumerate(rows):
                inputs[j, :len(r) - 1] = torch.tensor(r[:-1])
            with self.autocast_ctx():
                logits = self.model(inputs.to(self.device))  # [b, s, v]
            for j, (r, (_, cont)) in enumerate(zip(rows, encoded)):
                first = len(r) - 1 - len(cont)  # the predictions of the continuation
                picked = torch.log_softmax(logits[j, first:len(r) - 1].double(), dim=-1).cpu()  # [c, v]
                target = torch.tensor(cont)
                out.append((float(picked.gather(1, target[:, None]).sum()), bool((picked.argmax(-1) == target).all())))
        return out

    def loglikelihood_rolling(self, texts: List[str]) -> List[float]:
        """log P(text) of whole texts, scored with disjoint windows of the full context (each token once)."""
        out = []
        for text in texts:
            ids = [self.tokenizer.eod] + self.tokenizer.encode(text)
            total = 0.0
            for start, end, scored in rolling_windows(len(ids) - 1, self.max_length, self.max_length):
                inputs = torch.tensor([ids[start:end]])  # [1, s]
                targets = torch.full_like(inputs, -100)
                targets[0, end - start - scored:] = torch.tensor(ids[end - scored + 1:end + 1])
                total -= float(window_nll(self.model, inputs.to(self.device), targets.to(self.device),
                                          self.autocast_ctx)[0])
            out.append(total)
        return out

    def generate_until(self, requests: List[Tuple[str, dict]]) -> List[str]:
        """Greedy (or the given sampling) continuation of each context, cut at the first `until` string."""
        out = []
        for context, kwargs in requests:
            until = kwargs.get("until") or []
            cfg = GenerateConfig(maximum_tokens=int(kwargs.get("max_gen_toks", 256)),
                                 temperature=float(kwargs.get("temperature", 0.0)) if kwargs.get("do_sample") else 0.0,
                                 stop_sequences=[until] if isinstance(until, str) else list(until))
            generator = TextGenerator(self.model, self.tokenizer, cfg, self.max_length)
            out.append(generator.complete(context, num_samples=1)[0].text)
        return out


def register():
    """Register `megatron_lite` as an lm-eval model; returns the class."""
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model

    @register_model("megatron_lite")
    class MegatronLiteLM(LM):
        """model_args: config=A.yml+B.yml (merged left to right), load=CHECKPOINT, batch_size=N."""

        def __init__(self, config: str, load: str = None, batch_size=8, **_harness_options):
            super().__init__()
            cfg = load_config(config.split("+"), training=False)
            if load:
                cfg.train.load = load
            model, tokenizer, device = load_trained_model(cfg)
            precision = resolve_precision(cfg.precision.precision, device).name
            self.scorer = Scorer(model, tokenizer, device, cfg.model.max_position_embeddings,
                                 int(batch_size) if str(batch_size).isdigit() else 8,
                                 lambda: autocast(device, precision))

        def loglikelihood(self, requests):
            return self.scorer.loglikelihood([r.args for r in requests])

        def loglikelihood_rolling(self, requests):
            return self.scorer.loglikelihood_rolling([r.args[0] for r in requests])

        def generate_until(self, requests):
            return self.scorer.generate_until([r.args for r in requests])

    return MegatronLiteLM


def main():
    """lm-eval's command line with `megatron_lite` registered."""
    try:
        from lm_eval.__main__ import cli_evaluate
    except ImportError:
        sys.exit("error: the lm-eval adapter needs lm-eval: pip install -e '.[lm-eval]'")
    register()
    cli_evaluate()


if __name__ == "__main__":
    main()
