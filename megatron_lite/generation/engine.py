"""Autoregressive generation with a KV cache: greedy / sampling, beam search and contrastive search.

`recompute` runs the whole context through the model at every step: the plain reference the cached
path is tested against.
"""

import functools
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from megatron_lite.config import GenerateConfig
from megatron_lite.generation.fast_decode import FastDecoder, supports
from megatron_lite.generation.sampling import apply_repetition_penalty, sample_next
from megatron_lite.generation.stopping import cut_point
from megatron_lite.parallel import state as parallel_state
from megatron_lite.parallel.mappings import gather_from_tp_region
from megatron_lite.precision import autocast


@dataclass
class Completion:
    context: str
    text: str
    length: int  # tokens generated, before any stop rule cut the text
    finished: bool  # ended by end-of-document or a stop rule, not by the length limit
    duration_seconds: float


class TextGenerator:
    """Completes prompts with one model and one decoding configuration; seeded, so runs repeat."""

    def __init__(self, model, tokenizer, cfg: GenerateConfig, max_len: int, seed: int = 1234, fast_decode: bool = True,
                 precision: str = "fp32"):
        self.model, self.tokenizer, self.cfg, self.max_len = model.eval(), tokenizer, cfg, max_len
        self.device = next(model.parameters()).device
        self.rng = torch.Generator(device=self.device).manual_seed(seed)
        self.amp = functools.partial(autocast, self.device, precision)  # precision: as resolve_inference_precision
        # The fast step computes in fp32 (its kernels' format); other precisions decode through the model.
        self.fast = FastDecoder(model) if fast_decode and precision == "fp32" and supports(model) else None
        self.tp_size = parallel_state.get().tp_size

    def complete(self, prompt: str, num_samples: int = None, on_text=None) -> list:
        """num_samples Completions of `prompt` ('' = unconditional), generated as one batch.

        on_text(str) receives the first sample's new text as it is produced (streaming)."""
        start = time.perf_counter()
        context = self.tokenizer.encode(prompt) if prompt else []
        rows = self.generate_ids(context, num_samples, on_text)
        elapsed = time.perf_counter() - start
        return [self._finish(prompt, ids, elapsed) for ids in rows]

    @torch.inference_mode()
    def generate_ids(self, context: list, num_samples: int = None, on_text=None) -> list:
        """New token ids per sample (up to and including end-of-document) continuing `context` ids."""
        cfg, eod = self.cfg, self.tokenizer.eod
        budget = max(1, min(cfg.maximum_tokens, self.max_len - 1))
        context = (list(context) or [eod])[-(self.max_len - budget):]  # keep the end of a long prompt
        n = num_samples or cfg.num_samples
        if cfg.num_beams > 1:
            return self._beam_search(context, budget, n)
        return self._decode(context, budget, n, on_text, contrastive=cfg.penalty_alpha > 0)

    def _finish(self, prompt, ids, elapsed) -> Completion:
        """Cut at end-of-document and the stop rules; decode."""
        eod = self.tokenizer.eod
        finished = eod in ids
        ids = ids[: ids.index(eod)] if finished else ids
        text = self.tokenizer.decode(ids)
        cut = self._cut(text)
        if cut is not None:
            text, finished = text[:cut], True
        return Completion(prompt, text, len(ids), finished, elapsed)

    def _cut(self, text):
        c = self.cfg
        return cut_point(text, c.stop_sequences, c.truncate_before_pattern, c.stop_at_code_block)

    def _has_stop_rules(self) -> bool:
        c = self.cfg
        return bool(c.stop_sequences or c.truncate_before_pattern or c.stop_at_code_block)

    def _forward(self, new: torch.Tensor, everything: torch.Tensor, cache, last_only=True) -> torch.Tensor:
        """Logits [b, v] of the last position after feeding `new` [b, n] (everything [b, t] when recomputing).

        last_only=False still returns the last logits but runs the final norm over every position
        (contrastive search reads those hidden states)."""
        if cache is None:
            with self.amp():
                logits = self.model(everything, last_only=last_only)[:, -1]
        elif self.fast is not None and new.size(1) == 1:
            return self.fast.step(new, cache)
        else:
            with self.amp():
                logits = self.model(new, kv_cache=cache, last_only=last_only)[:, -1]  # positions continue from the cache
        # Tensor-parallel ranks hold vocabulary slices: every rank gathers the whole row, so every rank
        # (with the same seed) picks the same token.
        return gather_from_tp_region(logits) if self.tp_size > 1 else logits  # [b, v]

    def _new_cache(self, batch, total):
        return self.model.new_kv_cache(batch, total, next(self.model.parameters()).dtype, self.device)

    def _pick(self, logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        c = self.cfg
        logits = apply_repetition_penalty(logits.float(), tokens, c.repetition_penalty)
        return sample_next(logits, c.temperature, c.top_k, c.top_p, self.rng)  # [b]

    def _decode(self, context, budget, n, on_text, contrastive=False) -> list:
        """Greedy / sampled (or contrastive) decoding of n rows from one context; returns new ids per row."""
        eod, cfg = self.tokenizer.eod, self.cfg
        tokens = torch.tensor([context], dtype=torch.long, device=self.device).repeat(n, 1)  # [n, s]
        keep_tokens = cfg.recompute or cfg.repetition_penalty != 1.0  # else the python lists suffice
        cache = self._new_cache(n, tokens.size(1) + budget) if contrastive or not cfg.recompute else None
        hidden = _LastHidden(self.model) if contrastive else None
        logits = self._forward(tokens, tokens, cache, last_only=not contrastive)  # [n, v]
        past_hidden = hidden.value if contrastive else None  # [n, s, h]
        rows, done = [[] for _ in range(n)], [False] * n
        streamed, check_text = "", self._has_stop_rules() or on_text is not None
        try:
            for step in range(budget):
                if contrastive:
                    next_ids, logits, past_hidden = self._contrastive_step(logits, tokens, cache, hidden, past_hidden)
                else:
                    next_ids = self._pick(logits, tokens)  # [n]
                ids = next_ids.tolist()
                for i in range(n):
                    ids[i] = eod if done[i] else ids[i]  # a finished row only repeats end-of-document
                    rows[i].append(ids[i])
                    done[i] = done[i] or ids[i] == eod
                if check_text:
                    texts = [self.tokenizer.decode(row) for row in rows]
                    if on_text is not None and not done[0]:
                        streamed = _stream(on_text, streamed, texts[0])
                    done = [d or self._cut(t) is not None for d, t in zip(done, texts)]
                if all(done) or step == budget - 1:  # no forward pass for a token nobody will read
                    break
                # [n, 1]; a finished row's token was replaced by end-of-document above
                next_ids = torch.tensor(ids, device=self.device)[:, None] if any(done) else next_ids[:, None]
                if keep_tokens or contrastive:
                    tokens = torch.cat([tokens, next_ids], dim=1)
                if not contrastive:
                    logits = self._forward(next_ids, tokens, cache)
        finally:
            if hidden is not None:
                hidden.remove()
        return rows

    def _contrastive_step(self, logits, tokens, cache, hidden, past_hidden):
        """Pick among the top-k the token that is likely yet unlike the context (Su et al. 2022)."""
        c = self.cfg
        n, k = logits.size(0), c.top_k
        probs = apply_repetition_penalty(logits.float(), tokens, c.repetition_penalty).softmax(-1)  # [n, v]
        top_p, top_i = probs.topk(k, dim=-1)  # [n, k]
        cache.reorder(torch.arange(n, device=self.device).repeat_interleave(k))  # [n*k] rows
        cand_logits = self._forward(top_i.reshape(-1, 1), None, cache)  # [n*k, v]
        cand_h = hidden.value[:, -1].reshape(n, k, -1)  # [n, k, h]
        sim = F.cosine_similarity(cand_h.unsqueeze(2).float(), past_hidden.unsqueeze(1).float(), dim=-1)  # [n, k, t]
        score = (1 - c.penalty_alpha) * top_p - c.penalty_alpha * sim.max(dim=-1).values  # [n, k]
        best = score.argmax(dim=-1)  # [n]
        rows = torch.arange(n, device=self.device) * k + best
        cache.reorder(rows)
        chosen_h = cand_h[torch.arange(n, device=self.device), best].unsqueeze(1)  # [n, 1, h]
        return top_i[torch.arange(n, device=self.device), best], cand_logits[rows], torch.cat([past_hidden, chosen_h], 1)

    def _beam_search(self, context, budget, n) -> list:
        """num_beams hypotheses, best by log-probability / length; finished beams only extend with eod."""
        eod, beams = self.tokenizer.eod, self.cfg.num_beams
        tokens = torch.tensor([context], dtype=torch.long, device=self.device)  # [1, s]
        cache = self._new_cache(1, tokens.size(1) + budget)
        logits = self._forward(tokens, tokens, cache).repeat(beams, 1)  # [B, v]
        cache.reorder(torch.zeros(beams, dtype=torch.long, device=self.device))
        scores = torch.full((beams,), float("-inf"), device=self.device)
        scores[0] = 0.0  # all beams start identical: expand only one of them first
        seqs = torch.empty(beams, 0, dtype=torch.long, device=self.device)
        done = torch.zeros(beams, dtype=torch.bool, device=self.device)
        lengths = torch.zeros(beams, device=self.device)
        for step in range(budget):
            logp = F.log_softmax(logits.float(), dim=-1)  # [B, v]
            ended = torch.full_like(logp, float("-inf"))
            ended[:, eod] = 0.0
            logp = torch.where(done[:, None], ended, logp)
            top = (scores[:, None] + logp).flatten().topk(beams)
            origin, token = top.indices // logp.size(1), top.indices % logp.size(1)
            scores, seqs = top.values, torch.cat([seqs[origin], token[:, None]], dim=1)
            lengths = lengths[origin] + (~done[origin]).float()
            done = done[origin] | (token == eod)
            cache.reorder(origin)
            if done.all() or step == budget - 1:
                break
            logits = self._forward(token[:, None], None, cache)
        order = (scores / lengths.clamp(min=1)).argsort(descending=True)[:n]
        return seqs[order].tolist()


class _LastHidden:
    """Captures the final LayerNorm's output [b, s, h]: the hidden states contrastive search compares."""

    def __init__(self, model):
        self.value = None
        self.handle = model.final_layer_norm.register_forward_hook(self._keep)

    def _keep(self, module, inputs, output):
        self.value = output

    def remove(self):
        self.handle.remove()


def _stream(on_text, streamed: str, text: str) -> str:
    """Send the part of `text` not yet sent; hold back a trailing partial UTF-8 character."""
    if text.endswith("\ufffd") or not text.startswith(streamed):
        return streamed
    if len(text) > len(streamed):
        on_text(text[len(streamed):])
    return text
