"""Perplexity of a model over every token of a dataset split."""

import math

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm


@torch.no_grad()
def perplexity(model, dataset, batch_size: int, device, autocast_ctx) -> dict:
    """Token-weighted mean loss and perplexity over all samples of `dataset` (each [s+1] tokens)."""
    model.eval()
    total_loss, total_tokens = 0.0, 0
    for start in tqdm(range(0, len(dataset), batch_size), desc="perplexity", unit="batch", disable=None):
        rows = [torch.from_numpy(dataset[i]["text"].astype("int64")) for i in range(start, min(start + batch_size, len(dataset)))]
        tokens = torch.stack(rows).to(device)  # [b, s+1]
        with autocast_ctx():
            logits = model(tokens[:, :-1])  # [b, s, v]
        loss = F.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten(), reduction="sum")
        total_loss += loss.item()
        total_tokens += tokens[:, 1:].numel()
    mean = total_loss / max(total_tokens, 1)
    return {"loss": mean, "perplexity": math.exp(min(mean, 50.0)), "tokens": total_tokens}


def unigram_entropy(dataset) -> float:
    """Entropy (nats/token) of the split's token frequencies: the loss of the best context-free model."""
    tokens = np.concatenate([dataset.indexed[int(d)] for d in dataset.documents]).astype(np.int64)
    p = np.bincount(tokens)
    p = p[p > 0] / len(tokens)
    return float(-(p * np.log(p)).sum())
