"""Perplexity: over a dataset split, and per language over whole source files scored with rolling windows."""

import functools
import math
from collections import defaultdict
from typing import List, Tuple

import numpy as np
import torch
import torch.distributed as dist
from pygments.lexers import get_lexer_by_name
from tqdm import tqdm

from megatron_lite.data.languages import LANGUAGES
from megatron_lite.errors import UserError
from megatron_lite.parallel import state as parallel_state
from megatron_lite.parallel.cross_entropy import vocab_parallel_cross_entropy


@torch.no_grad()
def perplexity(model, dataset, batch_size: int, device, autocast_ctx) -> dict:
    """Token-weighted mean loss and perplexity over all samples of `dataset` (each [s+1] tokens); data-parallel
    ranks share out the batches, tensor-parallel ranks score the same ones."""
    model.eval()
    par = parallel_state.get()
    sums = torch.zeros(2, dtype=torch.float64, device=device)  # loss, tokens
    starts = range(par.dp_rank * batch_size, len(dataset), par.dp_size * batch_size)
    for start in tqdm(starts, desc="perplexity", unit="batch", disable=None):
        rows = [torch.from_numpy(dataset[i]["text"].astype("int64")) for i in range(start, min(start + batch_size, len(dataset)))]
        tokens = torch.stack(rows).to(device)  # [b, s+1]
        with autocast_ctx():
            logits = model(tokens[:, :-1])  # [b, s, v/tp]
        sums[0] += vocab_parallel_cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten()).double().sum()
        sums[1] += tokens[:, 1:].numel()
    if par.dp_size > 1:
        dist.all_reduce(sums, group=par.dp_group)
    total_loss, total_tokens = sums.tolist()
    mean = total_loss / max(total_tokens, 1)
    return {"loss": mean, "perplexity": math.exp(min(mean, 50.0)), "tokens": int(total_tokens)}


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
    """Summed negative log-likelihood (nats) per row of the targets that are not -100 [b]: each position's in
    fp32 (as lm-eval's log_softmax; a float64 log-softmax moved the sum by 2e-9 relative and took 1.6 s against
    0.45 s for 51k positions of a 4096 vocabulary), their sums in float64. At tp > 1 the logits are this rank's
    vocabulary slice, reduced across the group."""
    with autocast_ctx():
        logits = model(inputs)  # [b, s, v/tp]
    keep = targets != -100  # [b, s]
    rows = keep.nonzero()[:, 0]  # [m]
    picked, wanted = logits[keep], targets[keep]  # [m, v/tp], [m]
    nll = torch.cat([vocab_parallel_cross_entropy(picked[i:i + chunk], wanted[i:i + chunk])  # a chunk at a time
                     for i in range(0, len(wanted), chunk)] or [picked.new_zeros(0, dtype=torch.float32)])
    return torch.zeros(inputs.size(0), dtype=torch.float64, device=logits.device).index_add_(0, rows, nll.double())


@functools.lru_cache(maxsize=None)
def _lexer(language: str):
    return get_lexer_by_name(language.lower())  # as the PolyCoder fork: its LANG_NAME lower-cased, default options


def pygments_tokens(text: str, language: str) -> int:
    """The PolyCoder fork's 'words' of a file: its Pygments tokens, whitespace tokens included, from the language's
    lexer with default options (leading and trailing newlines stripped, one newline ensured at the end)."""
    return len(list(_lexer(language).get_tokens(text)))


def score_files(model, tokenizer, files: List[Tuple[str, str]], context: int, stride: int, batch_size: int, device,
                autocast_ctx) -> np.ndarray:
    """[files, 4] (nll nats, tokens, bytes, Pygments tokens) per file. Each data-parallel rank scores every
    dp-th file (its tensor-parallel group the same ones), then the table is summed across data-parallel ranks.
    A file of whitespace only is skipped (all 0), as the PolyCoder fork's harness skips it."""
    if not 0 < stride <= context:
        raise UserError(f"eval-stride {stride} must be between 1 and the context length {context}")
    model.eval()
    par = parallel_state.get()
    table = np.zeros((len(files), 4), dtype=np.float64)
    windows = []  # (file index, token ids with a leading eod, start, end, scored)
    for index in range(par.dp_rank, len(files), par.dp_size):
        with open(files[index][0], "rb") as f:
            raw = f.read()
        text = raw.decode("utf-8", errors="replace")
        if not text.strip():
            continue
        ids = [tokenizer.eod] + tokenizer.encode(text)
        table[index, 1:] = (len(ids) - 1, len(raw), pygments_tokens(text, files[index][1]))
        windows += [(index, ids, *w) for w in rolling_windows(len(ids) - 1, context, stride)]
    for i in tqdm(range(0, len(windows), batch_size), desc=f"perplexity (rank {par.rank})", unit="batch", disable=None):
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
    if par.dp_size > 1:
        summed = torch.from_numpy(table).to(device)  # nccl reduces device tensors only
        dist.all_reduce(summed, group=par.dp_group)  # every file was scored by exactly one data-parallel rank
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
