"""Reading and writing jsonl files, plain or compressed (.zst, .gz), with clear errors for bad lines and files."""

import gzip
import io
import json
import os
import random
import tempfile
from typing import Iterator, Tuple

from megatron_lite.errors import UserError


def open_binary(path: str, mode: str = "rb"):
    """A file object that (de)compresses .zst and .gz by name; 'rb' or 'wb'."""
    if path.endswith(".zst"):
        import zstandard

        raw = open(path, mode)
        if mode == "rb":
            return _ZstdReader(raw)
        return zstandard.ZstdCompressor(level=10).stream_writer(raw, closefd=True)
    if path.endswith(".gz"):
        return gzip.open(path, mode)
    return open(path, mode)


class _ZstdReader(io.RawIOBase):
    """Decompresses one or more zstd frames; a file that ends inside a frame raises EOFError, not a short read."""

    def __init__(self, raw):
        import zstandard

        self._raw, self._new, self._error = raw, zstandard.ZstdDecompressor().decompressobj, zstandard.ZstdError
        self._d, self._pending, self._started = self._new(), b"", False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._pending:
            chunk = self._raw.read(1 << 20)
            if not chunk:
                if self._started and not self._d.eof:
                    raise EOFError("the file ends inside a zstd frame (truncated)")
                return 0
            while chunk:
                if self._d.eof:  # the next frame of a multi-frame file
                    self._d = self._new()
                self._started = True
                try:
                    self._pending += self._d.decompress(chunk)
                except self._error as e:
                    raise ValueError(f"corrupt zstd data: {e}") from None
                chunk = self._d.unused_data if self._d.eof else b""
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def close(self):
        self._raw.close()
        super().close()


def iter_jsonl(path: str, resumable: bool = False) -> Iterator[Tuple[int, dict]]:
    """(line number, record) for each non-blank line of a .jsonl(.gz|.zst); a line that is not a JSON object ->
    UserError, or, for a file our runs append to (resumable), is skipped: a killed run can leave a line cut short."""
    try:
        f = open_binary(path)
    except OSError as e:
        raise UserError(f"cannot read input '{path}': {e.strerror}") from None
    with f:
        lines = io.BufferedReader(f, 1 << 20) if isinstance(f, _ZstdReader) else f
        lineno = 0
        while True:
            try:
                line = lines.readline()
            except (OSError, EOFError, ValueError) as e:  # zstd / gzip errors of a corrupt or truncated file
                raise UserError(f"{path}: cannot decompress after line {lineno} ({str(e).splitlines()[0]})") from None
            if not line:
                break
            lineno += 1
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except (ValueError, UnicodeDecodeError) as e:
                if resumable:
                    continue
                raise UserError(f"{path}:{lineno}: not valid JSON ({str(e).splitlines()[0]})") from None
            if not isinstance(record, dict):
                if resumable:
                    continue
                raise UserError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
            yield lineno, record


def shuffle_lines(src: str, dst: str, seed: int, buckets: int = 64) -> None:
    """Write src's lines to dst in a seeded random order, holding about 1/buckets of the file in memory: each line
    goes to a random bucket file first, then each bucket is shuffled in memory and appended."""
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(dst))) as tmp:
        paths = [os.path.join(tmp, str(i)) for i in range(buckets)]
        parts = [open(path, "wb") for path in paths]
        with io.BufferedReader(open_binary(src, "rb")) as lines:
            for line in lines:
                parts[rng.randrange(buckets)].write(line)
        for part in parts:
            part.close()
        with open_binary(dst, "wb") as out:
            for path in paths:
                with open(path, "rb") as f:
                    bucket = f.readlines()
                rng.shuffle(bucket)
                for line in bucket:  # (zstd's stream writer has no writelines)
                    out.write(line)
