"""Autoregressive generation with a KV cache (or full recompute, the reference path)."""

import torch

from megatron_lite.config import GenerateConfig
from megatron_lite.generation.sampling import sample_next


@torch.no_grad()
def generate_tokens(model, context: list, max_new_tokens: int, max_len: int, cfg: GenerateConfig,
                    eod: int, generator: torch.Generator = None) -> list:
    """Continue one token sequence; stops at end-of-document or after max_new_tokens. Returns new ids."""
    device = next(model.parameters()).device
    context = context[-(max_len - max_new_tokens):] if max_new_tokens < max_len else context[-1:]
    tokens = torch.tensor([context], dtype=torch.long, device=device)  # [1, s]
    total = min(tokens.size(1) + max_new_tokens, max_len)
    cache = None if cfg.recompute else model.new_kv_cache(1, total, next(model.parameters()).dtype, device)
    model.eval()
    new, step_input, pos = [], tokens, 0
    while tokens.size(1) < total:
        if cache is None:
            logits = model(tokens)  # recompute everything: the plain reference
        else:
            positions = torch.arange(pos, pos + step_input.size(1), device=device).unsqueeze(0)
            logits = model(step_input, position_ids=positions, kv_cache=cache)
            pos += step_input.size(1)
        next_id = sample_next(logits[:, -1], cfg.temperature, cfg.top_k, cfg.top_p, generator)  # [1]
        if next_id.item() == eod:
            break
        new.append(next_id.item())
        step_input = next_id.view(1, 1)
        tokens = torch.cat([tokens, step_input], dim=1)
    return new


def generate_text(model, tokenizer, prompt: str, cfg: GenerateConfig, max_len: int,
                  generator: torch.Generator = None) -> str:
    """Completion of a prompt ('' = unconditional, starting from end-of-document)."""
    context = tokenizer.encode(prompt) if prompt else []
    context = context or [tokenizer.eod]
    ids = generate_tokens(model, context, cfg.maximum_tokens, max_len, cfg, tokenizer.eod, generator)
    return tokenizer.decode(ids)
