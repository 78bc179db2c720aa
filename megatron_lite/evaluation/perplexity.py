"""Perplexity: over a dataset split, and per language over whole source files scored with rolling windows."""

import functools
import math
from collections import defaultdict
from typing import List, Tuple

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from pygments.lexers import get_lexer_by_name
from tqdm import tqdm

from megatron_lite.data.languages import LANGUAGES
from megatron_lite.errors import UserError


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


def rolling_windows(num_tokens: int, context: int, stride: int) -> List[Tuple[int, int, int]]:
    """(start, end, scored) windows over a sequence [eod] + tokens that score every token exactly once.

    A window feeds positions [start, end) and predicts [start+1, end+1); only its last `scored` predictions
    count, the ones no earlier window made. Each new window moves `stride` tokens, so every prediction but
    those of the first window sees at least context - stride tokens of context."""
    windows, end = [], 0
    while end < num_tokens:
        new_end = min(num_tokens, context if end == 0 else end + stride)
        windows.append((max(0, new_end - context), new_end, new_end - end))
        end = new_end
    return windows


@torch.no_grad()
def window_nll(model, inputs: torch.Tensor, targets: torch.Tensor, autocast_ctx, chunk: int = 1024) -> torch.Tensor:
    """Summed negative log-likelihood (nats, float64) per row of the targets that are not -100. [b]"""
    with autocast_ctx():
        logits = model(inputs)  # [b, s, v]
    keep = targets != -100  # [b, s]
    rows = keep.nonzero()[:, 0]  # [m]
    picked, wanted = logits[keep], targets[keep]  # [m, v], [m]
    nll = torch.empty(len(wanted), dtype=torch.float64, device=logits.device)
    for i in range(0, len(wanted), chunk):  # float64 log-softmax, a chunk of positions at a time
        logp = torch.log_softmax(picked[i:i + chunk].double(), dim=-1)  # [c, v]
        nll[i:i + chunk] = -logp.gather(1, wanted[i:i + chunk, None])[:, 0]
    return torch.zeros(inputs.size(0), dtype=torch.float64, device=logits.device).index_add_(0, rows, nll)


@functools.lru_cache(maxsize=None)
def _lexer(language: str):
    return get_lexer_by_name(language.lower())  # as the PolyCoder fork: its LANG_NAME lower-cased, default options


def pygments_tokens(text: str, language: str) -> int:
    """The PolyCoder fork's 'words' of a file: its Pygments tokens, whitespace tokens included, from the language's
    lexer with default options (leading and trailing newlines stripped, one newline ensured at the end)."""
    return len(list(_lexer(language).get_tokens(text)))


def score_files(model, tokenizer, files: List[Tuple[str, str]], context: int, stride: int, batch_size: int, device,
                autocast_ctx, rank: int = 0, world_size: int = 1) -> np.ndarray:
    """[files, 4] (nll nats, tokens, bytes, Pygments tokens) per file; this rank scores every world_size-th file,
    the rest stay 0. A file of whitespace only is skipped (all 0), as the PolyCoder fork's harness skips it."""
    if not 0 < stride <= context:
        raise UserError(f"eval-stride {stride} must be between 1 and the context length {context}")
    model.eval()
    table = np.zeros((len(files), 4), dtype=np.float64)
    windows = []  # (file index, token ids with a leading eod, start, end, scored)
    for index in range(rank, len(files), world_size):
        with open(files[index][0], "rb") as f:
            raw = f.read()
        text = raw.decode("utf-8", errors="replace")
        if not text.strip():
            continue
        ids = [tokenizer.eod] + tokenizer.encode(text)
        table[index, 1:] = (len(ids) - 1, len(raw), pygments_tokens(text, files[index][1]))
        windows += [(index, ids, *w) for w in rolling_windows(len(ids) - 1, context, stride)]
    for i in tqdm(range(0, len(windows), batch_size), desc=f"perplexity (rank {rank})", unit="batch", disable=None):
        batch = windows[i:i + batch_size]
        width = max(end - start for _, _, start, end, _ in batch)
        inputs = torch.full((len(batch), width), tokenizer.eod, dtype=torch.long)  # [b, s], padded on the right
        targets = torch.full((len(batch), width), -100, dtype=torch.long)  # [b, s]
        for row, (_, ids, start, end, scored) in enumerate(batch):
            n = end - start
            inputs[row, :n] = torch.tensor(ids[start:end])
            targets[row, n - scored:n] = torch.tensor(ids[end - scored + 1:end + 1])
        nll = window_nll(model, inputs.to(device), targets.to(device), autocast_ctx).cpu().numpy()
        for (index, *_), value in zip(batch, nll):
            table[index, 0] += value
    if world_size > 1:
        summed = torch.from_numpy(table).to(device)  # nccl reduces device tensors only
        dist.all_reduce(summed)  # every file was scored by exactly one rank
        table = summed.cpu().numpy()
    return table


def summarize(files: List[Tuple[str, str]], table: np.ndarray) -> dict:
    """Per language and overall, summed over the scored files: loss (nats/token), token perplexity, bits per byte,
    byte perplexity and word perplexity over Pygments tokens (the last two as the PolyCoder fork computes them:
    exp of the summed negative log-likelihood over the summed bytes or Pygments tokens)."""
    sums = defaultdict(lambda: np.zeros(4))
    counts = defaultdict(int)
    for (_, language), row in zip(files, table):
        sums[language] += row
        counts[language] += row[1] > 0  # skipped (whitespace-only) files are not counted
    sums["overall"], counts["overall"] = table.sum(0), int((table[:, 1] > 0).sum())

    def stats(name):
        nll, tokens, size, words = sums[name]
        loss = nll / max(tokens, 1)
        return {"files": int(counts[name]), "tokens": int(tokens), "bytes": int(size), "pygments_tokens": int(words),
                "loss": loss, "perplexity": math.exp(loss), "bits_per_byte": nll / math.log(2) / max(size, 1),
                "byte_perplexity": math.exp(nll / max(size, 1)), "word_perplexity": math.exp(nll / max(words, 1))}

    order = [name for name in LANGUAGES if name in sums] + ["overall"]
    return {name: stats(name) for name in order}
