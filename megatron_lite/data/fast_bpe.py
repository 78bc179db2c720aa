"""A tiktoken engine for our byte-level BPE tokenizers: the same ids as HF tokenizers, several times faster.

Eligible are lossless byte-level BPEs (no normalizer, GPT-2 ByteLevel pre-tokenizer without prefix space, merged
tokens ranked in merge order); `encoder_for` says why another tokenizer is not, and callers then keep HF's encode.
HF's encode stays the reference: preprocessing checks the two agree before it relies on this one.
"""

import json
from typing import Callable, Dict, List, Optional, Tuple

MAX_ADDED_TOKENS = 1000
# The split tokenizers' ByteLevel pre-tokenizer applies (GPT-2's), written for tiktoken's regex engine.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def byte_level_alphabet() -> Dict[str, int]:
    """GPT-2's byte <-> printable character map, as character -> byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, shifted = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:  # bytes without a printable glyph are moved past 255, in byte order
            chars[chr(256 + shifted)] = b
            shifted += 1
    return chars


def _ineligible(spec: dict) -> Optional[str]:
    """Why tiktoken cannot reproduce this tokenizer.json, or None when it can."""
    pre, model = spec.get("pre_tokenizer") or {}, spec.get("model") or {}
    if spec.get("normalizer") is not None:
        return "it has a normalizer"
    if pre.get("type") != "ByteLevel" or pre.get("add_prefix_space") or not pre.get("use_regex", True):
        return "its pre-tokenizer is not ByteLevel(add_prefix_space=False)"
    if model.get("type") != "BPE" or model.get("dropout") or model.get("byte_fallback"):
        return "its model is not a plain BPE"
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        return "its BPE uses subword prefixes or suffixes"
    if len(spec.get("added_tokens") or []) > MAX_ADDED_TOKENS:
        return f"it has over {MAX_ADDED_TOKENS} added tokens (tiktoken's special-token regex would be slow to build)"
    for added in spec.get("added_tokens") or []:
        if added.get("lstrip") or added.get("rstrip") or added.get("single_word"):
            return f"added token {added.get('content')!r} strips whitespace"
    return None


def _ranks(model: dict, skip: set) -> Tuple[Optional[Dict[bytes, int]], str]:
    alphabet = byte_level_alphabet()
    ranks = {}
    for token, rank in model["vocab"].items():
        if token in skip:
            continue
        if any(ch not in alphabet for ch in token):
            return None, f"token {token!r} is not byte-level"
        ranks[bytes(alphabet[ch] for ch in token)] = rank
    if any(bytes([b]) not in ranks for b in range(256)):
        return None, "not every byte is a token"
    # tiktoken merges the pair whose result has the lowest id; HF the earliest merge: equal when ids follow merges.
    last = -1
    for merge in model.get("merges", []):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        rank = model["vocab"].get(left + right)
        if rank is None or rank <= last or rank <= model["vocab"][left] or rank <= model["vocab"][right]:
            return None, f"merge {left!r} + {right!r} is not ranked in merge order"
        last = rank
    return ranks, ""


def encoder_for(hf_tokenizer) -> Tuple[Optional[Callable[[str], List[int]]], str]:
    """(text -> ids, '') using tiktoken, or (None, reason) when tiktoken is missing or cannot match this tokenizer."""
    try:
        import tiktoken
    except ImportError:
        return None, "tiktoken is not installed"
    spec = json.loads(hf_tokenizer.to_str())
    reason = _ineligible(spec)
    if reason:
        return None, reason
    specials = {t["content"]: t["id"] for t in spec.get("added_tokens") or []}
    ranks, reason = _ranks(spec["model"], set(specials))
    if ranks is None:
        return None, reason
    encoding = tiktoken.Encoding("megatron_lite_bpe", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                                 special_tokens=specials)

    def encode(text: str) -> List[int]:
        # HF splits added tokens out of any text, so a literal '<|endoftext|>' is its id here too.
        return encoding.encode(text, allowed_special="all")

    return encode, ""
