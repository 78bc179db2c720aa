"""Near-duplicate detection: MinHash signatures of token 5-gram shingles, banded LSH, written with numpy."""

import re
import zlib
from collections import defaultdict
from typing import Dict, List, Optional, Tuple

import numpy as np

NUM_PERM = 128
SHINGLE = 5
_WORD = re.compile(r"\w+|[^\w\s]")
_MASK32 = np.uint64(0xFFFFFFFF)
_BLOCK = 4096  # shingles hashed at once: bounds memory at _BLOCK x NUM_PERM x 8 bytes for a file of any size


def _permutations(num_perm: int, seed: int = 1) -> Tuple[np.ndarray, np.ndarray]:
    """Odd 64-bit multipliers and offsets of multiply-shift hashes (fixed, so signatures compare across runs)."""
    rng = np.random.RandomState(seed)
    a = rng.randint(0, 2 ** 63 - 1, size=num_perm, dtype=np.int64).astype(np.uint64) | np.uint64(1)
    b = rng.randint(0, 2 ** 63 - 1, size=num_perm, dtype=np.int64).astype(np.uint64)
    return a, b


_A, _B = _permutations(NUM_PERM)


def shingle_hashes(text: str, k: int = SHINGLE) -> np.ndarray:
    """Distinct 32-bit hashes of the text's k-token shingles (a short text is one shingle)."""
    # crc32 rather than hash(): str hashes change from process to process, signatures must not.
    words = np.array([zlib.crc32(w.encode("utf-8")) for w in _WORD.findall(text)], dtype=np.uint64)
    if words.size == 0:
        return np.zeros(0, np.uint64)
    k = min(k, words.size)
    h = np.zeros(words.size - k + 1, dtype=np.uint64)
    for i in range(k):  # a polynomial hash of each window, wrapping in 64 bits
        h = h * np.uint64(1000003) + words[i:words.size - k + 1 + i]
    return np.unique((h ^ (h >> np.uint64(32))) & _MASK32)


def minhash(text: str) -> np.ndarray:
    """uint32[NUM_PERM] signature; equal entries estimate the Jaccard similarity of two texts' shingle sets."""
    shingles = shingle_hashes(text)
    sig = np.full(NUM_PERM, 0xFFFFFFFF, dtype=np.uint64)
    for start in range(0, shingles.size, _BLOCK):
        x = shingles[start:start + _BLOCK, None]  # [n, 1]
        hashed = (x * _A[None, :] + _B[None, :]) >> np.uint64(32)  # [n, NUM_PERM], wraps mod 2^64
        np.minimum(sig, hashed.min(axis=0), out=sig)
    return sig.astype(np.uint32)


def jaccard_estimate(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(a == b))


def lsh_bands(threshold: float, num_perm: int = NUM_PERM) -> Tuple[int, int]:
    """(bands, rows) with bands x rows = num_perm whose S-curve midpoint (1/b)^(1/r) is nearest the threshold."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    options = [(b, num_perm // b) for b in range(1, num_perm + 1) if num_perm % b == 0]
    return min(options, key=lambda br: abs((1 / br[0]) ** (1 / br[1]) - threshold))


class MinHashLSH:
    """Signatures of kept documents in LSH buckets; `query` finds one at or above the threshold."""

    def __init__(self, threshold: float = 0.85):
        self.threshold = threshold
        self.bands, self.rows = lsh_bands(threshold)
        self.buckets: List[Dict[bytes, List[int]]] = [defaultdict(list) for _ in range(self.bands)]
        self.signatures: List[np.ndarray] = []
        self.keys: List[object] = []

    def _band_keys(self, sig: np.ndarray):
        return [sig[i * self.rows:(i + 1) * self.rows].tobytes() for i in range(self.bands)]

    def query(self, sig: np.ndarray) -> Optional[Tuple[object, float]]:
        """(key, estimated Jaccard) of the most similar stored document at or above the threshold, or None."""
        seen, best = set(), None
        for band, key in zip(self.buckets, self._band_keys(sig)):
            for i in band.get(key, ()):
                if i in seen:
                    continue
                seen.add(i)
                score = jaccard_estimate(sig, self.signatures[i])
                if score >= self.threshold and (best is None or score > best[1]):
                    best = (self.keys[i], score)
        return best

    def insert(self, key: object, sig: np.ndarray) -> None:
        i = len(self.signatures)
        self.signatures.append(sig)
        self.keys.append(key)
        for band, band_key in zip(self.buckets, self._band_keys(sig)):
            band[band_key].append(i)
