"""Megatron / GPT-NeoX `MMIDIDX` token datasets: PREFIX.bin (raw tokens) + PREFIX.idx (index), read with mmap."""

import os
import shutil
import struct
from array import array
from typing import Iterable, Optional, Union

import numpy as np

from megatron_lite.errors import UserError

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
# Megatron-LM's dtype codes (megatron/core/datasets/indexed_dataset.py, DType).
DTYPE_CODES = {
    1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64, 7: np.float32, 8: np.uint16,
}
_HEADER = struct.Struct("<9sQBQQ")  # magic, version, dtype code, number of sequences, len(doc_idx)


def best_dtype(vocab_size: Optional[int]) -> type:
    """uint16 when every token id fits (vocab < 65500, as Megatron), else int32."""
    return np.uint16 if vocab_size is not None and vocab_size < 65500 else np.int32


def dtype_code(dtype) -> int:
    """The .idx code of a numpy dtype."""
    for code, candidate in DTYPE_CODES.items():
        if np.dtype(candidate) == np.dtype(dtype):
            return code
    raise ValueError(f"dtype {dtype} has no MMIDIDX code")


def data_file_path(prefix: str) -> str:
    return prefix + ".bin"


def index_file_path(prefix: str) -> str:
    return prefix + ".idx"


def _tmp(path: str) -> str:
    return f"{path}.tmp-{os.getpid()}"


class IndexedDatasetBuilder:
    """Writes sequences to PREFIX.bin/.idx under temporary names; `finalize()` renames them into place."""

    def __init__(self, prefix: str, dtype=np.int32):
        self.prefix, self.dtype = prefix, np.dtype(dtype)
        dtype_code(self.dtype)  # fail early on a dtype the format cannot name
        self._bin_tmp = _tmp(data_file_path(prefix))
        self._idx_tmp = _tmp(index_file_path(prefix))
        self._bin = open(self._bin_tmp, "wb")
        self._sizes = array("q")  # compact: one entry per sequence even for millions of documents
        self._doc_idx = array("q", [0])
        if np.issubdtype(self.dtype, np.integer):
            info = np.iinfo(self.dtype)
            self._range = (info.min, info.max)
        else:
            self._range = None

    def add_item(self, tokens: Union[np.ndarray, Iterable[int]]) -> None:
        """Append one sequence."""
        arr = np.asarray(tokens)
        if arr.ndim != 1:
            arr = arr.reshape(-1)
        if self._range and arr.size and (arr.min() < self._range[0] or arr.max() > self._range[1]):
            raise ValueError(f"token ids {arr.min()}..{arr.max()} do not fit the dataset dtype {self.dtype}")
        self._bin.write(arr.astype(self.dtype, copy=False).tobytes(order="C"))
        self._sizes.append(int(arr.size))

    def end_document(self) -> None:
        """Mark the sequences added since the last call as one document."""
        self._doc_idx.append(len(self._sizes))

    def add_document(self, tokens) -> None:
        """A document of one sequence."""
        self.add_item(tokens)
        self.end_document()

    def merge_file_(self, other_prefix: str) -> None:
        """Append every sequence and document of another dataset with the same dtype."""
        other = IndexedDataset(other_prefix)
        if other.dtype != self.dtype:
            raise UserError(f"cannot merge {other_prefix}: its dtype {other.dtype} differs from {self.dtype}")
        offset = len(self._sizes)
        self._sizes.frombytes(other.sizes.astype(np.int64).tobytes())
        self._doc_idx.frombytes((other.doc_idx[1:].astype(np.int64) + offset).tobytes())
        del other
        with open(data_file_path(other_prefix), "rb") as f:
            shutil.copyfileobj(f, self._bin, 16 << 20)

    def finalize(self) -> None:
        """Write the index and move both files to their final names (.bin first, so .idx implies a whole .bin)."""
        self._bin.close()
        sizes = np.frombuffer(self._sizes, dtype=np.int64) if len(self._sizes) else np.zeros(0, np.int64)
        if sizes.size and sizes.max() > np.iinfo(np.int32).max:
            raise ValueError("a sequence is longer than the int32 sizes of the .idx format allow")
        pointers = np.zeros(sizes.size, dtype=np.int64)
        if sizes.size > 1:
            np.cumsum(sizes[:-1] * self.dtype.itemsize, out=pointers[1:])
        doc_idx = np.frombuffer(self._doc_idx, dtype=np.int64)
        with open(self._idx_tmp, "wb") as f:
            f.write(_HEADER.pack(MAGIC, VERSION, dtype_code(self.dtype), sizes.size, doc_idx.size))
            f.write(sizes.astype("<i4").tobytes())
            f.write(pointers.astype("<i8").tobytes())
            f.write(doc_idx.astype("<i8").tobytes())
        os.replace(self._bin_tmp, data_file_path(self.prefix))
        os.replace(self._idx_tmp, index_file_path(self.prefix))

    def abort(self) -> None:
        """Drop the half-written files (after an error)."""
        self._bin.close()
        for path in (self._bin_tmp, self._idx_tmp):
            if os.path.exists(path):
                os.remove(path)


class IndexedDataset:
    """Read-only view of PREFIX.bin/.idx: `ds[i]` is sequence i as a numpy array backed by mmap."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self._open()

    def _open(self):
        idx_path, bin_path = index_file_path(self.prefix), data_file_path(self.prefix)
        for path in (idx_path, bin_path):
            if not os.path.isfile(path):
                raise UserError(f"dataset file {path} does not exist (expected a PREFIX with PREFIX.bin and PREFIX.idx)")
        with open(idx_path, "rb") as f:
            head = f.read(_HEADER.size)
        if len(head) < _HEADER.size or head[:9] != MAGIC:
            raise UserError(f"{idx_path} is not an MMIDIDX index (bad magic {head[:9]!r}; expected {MAGIC!r})")
        _, version, code, n, n_doc = _HEADER.unpack(head)
        if version != VERSION:
            raise UserError(f"{idx_path}: unsupported MMIDIDX version {version} (expected {VERSION})")
        if code not in DTYPE_CODES:
            raise UserError(f"{idx_path}: unknown dtype code {code} (expected one of {sorted(DTYPE_CODES)})")
        self.dtype = np.dtype(DTYPE_CODES[code])
        expected = _HEADER.size + 4 * n + 8 * n + 8 * n_doc
        if os.path.getsize(idx_path) != expected:
            raise UserError(f"{idx_path} is truncated or corrupt ({os.path.getsize(idx_path)} bytes, expected {expected})")
        index = np.memmap(idx_path, mode="r", dtype=np.uint8)
        off = _HEADER.size
        self.sizes = np.frombuffer(index, dtype="<i4", count=n, offset=off)
        self.pointers = np.frombuffer(index, dtype="<i8", count=n, offset=off + 4 * n)
        self.doc_idx = np.frombuffer(index, dtype="<i8", count=n_doc, offset=off + 12 * n)
        need = int(self.pointers[-1]) + int(self.sizes[-1]) * self.dtype.itemsize if n else 0
        if os.path.getsize(bin_path) < need:
            raise UserError(f"{bin_path} is truncated ({os.path.getsize(bin_path)} bytes, the index needs {need})")
        # np.memmap cannot map an empty file.
        self._bin = np.memmap(bin_path, mode="r", dtype=np.uint8) if need else np.zeros(0, np.uint8)

    def __getstate__(self):
        return {"prefix": self.prefix}  # reopen the mmaps in a DataLoader worker instead of copying them

    def __setstate__(self, state):
        self.prefix = state["prefix"]
        self._open()

    def __len__(self) -> int:
        return len(self.sizes)

    def max_token_id(self, limit: int = 1 << 24) -> int:
        """The largest id among the first `limit` tokens (-1 if none): a constant-time vocabulary check."""
        count = min(limit, len(self._bin) // self.dtype.itemsize)
        return int(np.frombuffer(self._bin, dtype=self.dtype, count=count).max()) if count else -1

    def get(self, i: int, offset: int = 0, length: Optional[int] = None) -> np.ndarray:
        """Tokens [offset, offset+length) of sequence i (to its end when length is None)."""
        size = int(self.sizes[i])
        if length is None:
            length = size - offset
        if offset < 0 or length < 0 or offset + length > size:
            raise IndexError(f"tokens [{offset}, {offset + length}) out of range for sequence {i} of {size} tokens")
        start = int(self.pointers[i]) + offset * self.dtype.itemsize
        return np.frombuffer(self._bin, dtype=self.dtype, count=length, offset=start)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self.get(j) for j in range(*i.indices(len(self)))]
        i = int(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"sequence {i} out of range for {len(self)} sequences")
        return self.get(i)
