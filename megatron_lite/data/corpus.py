"""Reading corpora (source trees and jsonl files) and collecting them into one deduplicated jsonl corpus."""

import hashlib
import json
import os
from collections import Counter
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from megatron_lite.data.languages import LANGUAGES, language_of
from megatron_lite.errors import UserError

DEFAULT_EXCLUDE_DIRS = ("site-packages", "__pycache__", ".git", "node_modules")
DEFAULT_MAX_FILE_BYTES = 1_000_000


def check_inputs(inputs: Sequence[str], key: str = "input") -> List[str]:
    """Each input must be an existing directory or a .jsonl file."""
    if not inputs:
        raise UserError(f"no {key} given: expected directories and/or .jsonl files")
    for path in inputs:
        if os.path.isdir(path):
            continue
        if not os.path.exists(path):
            raise UserError(f"{key} '{path}' does not exist (expected a directory or a .jsonl file)")
        if not path.endswith(".jsonl"):
            raise UserError(f"{key} '{path}' is neither a directory nor a .jsonl file")
    return list(inputs)


def walk_source_files(root: str, exclude_dirs: Sequence[str] = DEFAULT_EXCLUDE_DIRS) -> Iterator[Tuple[str, str]]:
    """(path, path relative to root with '/') of every file, depth first in name order: the same on every run."""
    excluded = set(exclude_dirs)

    def walk(directory: str, rel: str):
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError:
            return  # an unreadable directory holds nothing we can use
        for entry in entries:
            entry_rel = f"{rel}{entry.name}"
            if entry.is_dir(follow_symlinks=False):
                if entry.name not in excluded:
                    yield from walk(entry.path, entry_rel + "/")
            elif entry.is_file():
                yield entry.path, entry_rel

    yield from walk(root, "")


def read_source(path: str, max_bytes: Optional[int] = None) -> Tuple[Optional[str], str]:
    """(text, '') for a readable UTF-8 text file, else (None, reason): too-large, unreadable, binary, not-utf8, empty."""
    try:
        if max_bytes is not None and os.path.getsize(path) > max_bytes:
            return None, "too-large"
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None, "unreadable"
    if not data:
        return None, "empty"
    if b"\x00" in data:
        return None, "binary"
    try:
        return data.decode("utf-8"), ""  # bytes -> str keeps CRLF and every other byte as it is
    except UnicodeDecodeError:
        return None, "not-utf8"


def iter_jsonl(path: str) -> Iterator[Tuple[int, dict]]:
    """(line number, record) for each non-blank line; a line that is not a JSON object -> UserError."""
    try:
        f = open(path, "rb")
    except OSError as e:
        raise UserError(f"cannot read input '{path}': {e.strerror}") from None
    with f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except (ValueError, UnicodeDecodeError) as e:
                raise UserError(f"{path}:{lineno}: not valid JSON ({str(e).splitlines()[0]})") from None
            if not isinstance(record, dict):
                raise UserError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
            yield lineno, record


def iter_documents(inputs: Sequence[str], keys: Sequence[str] = ("text",),
                   exclude_dirs: Sequence[str] = DEFAULT_EXCLUDE_DIRS) -> Iterator[Dict[str, str]]:
    """One {key: text} per document: each UTF-8 source file of a directory (key 'text'), each jsonl record."""
    for path in inputs:
        if os.path.isdir(path):
            if list(keys) != ["text"]:
                raise UserError(f"jsonl-keys {list(keys)} do not apply to directory input '{path}' "
                                f"(its files are documents under the key 'text')")
            for full, _ in walk_source_files(path, exclude_dirs):
                if language_of(full) is None:
                    continue
                text, _ = read_source(full)
                if text is not None:  # None: binary, not UTF-8, empty or unreadable, so not a document
                    yield {"text": text}
        else:
            for lineno, record in iter_jsonl(path):
                for k in keys:
                    if k not in record:
                        raise UserError(f"{path}:{lineno}: record has no key '{k}' (from jsonl-keys)")
                    if not isinstance(record[k], str):
                        raise UserError(f"{path}:{lineno}: key '{k}' holds {type(record[k]).__name__}, expected a string")
                yield {k: record[k] for k in keys}


class CorpusStats:
    """Counts for the one-line summary: files seen, kept, and skipped by reason."""

    def __init__(self):
        self.seen, self.kept, self.skipped = 0, 0, Counter()

    def summary(self) -> str:
        reasons = ", ".join(f"{r} {n}" for r, n in sorted(self.skipped.items())) or "none"
        return f"{self.seen} files seen, {self.kept} kept, skipped: {reasons}"


def _directory_records(root: str, languages: set, max_file_bytes: int, exclude_dirs, stats: CorpusStats):
    repository = os.path.basename(os.path.abspath(root))
    for full, rel in walk_source_files(root, exclude_dirs):
        stats.seen += 1
        language = language_of(full)
        if language is None:
            stats.skipped["not-source"] += 1
            continue
        if language not in languages:
            stats.skipped["language"] += 1
            continue
        text, reason = read_source(full, max_file_bytes)
        if text is None:
            stats.skipped[reason] += 1
            continue
        yield {"text": text, "language": language, "repository": repository, "path": rel}


def _jsonl_records(path: str, languages: set, max_file_bytes: int, stats: CorpusStats):
    default_repo = os.path.splitext(os.path.basename(path))[0]
    for lineno, record in iter_jsonl(path):
        stats.seen += 1
        text = record.get("text")
        if not isinstance(text, str):
            raise UserError(f"{path}:{lineno}: record has no string 'text' key")
        language = record.get("language") or language_of(str(record.get("path", "")))
        if language not in languages:
            stats.skipped["language"] += 1
            continue
        if not text:
            stats.skipped["empty"] += 1
            continue
        if len(text.encode("utf-8")) > max_file_bytes:
            stats.skipped["too-large"] += 1
            continue
        # Pass other fields through; fill the ones every corpus record has.
        out = dict(record)
        out.update(language=language)
        out.setdefault("repository", default_repo)
        out.setdefault("path", f"{os.path.basename(path)}:{lineno}")
        yield out


def collect(inputs: Sequence[str], languages: Sequence[str] = LANGUAGES,
            max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
            exclude_dirs: Sequence[str] = DEFAULT_EXCLUDE_DIRS,
            stats: Optional[CorpusStats] = None) -> Iterator[dict]:
    """Corpus records from directories and jsonl files, exact duplicates (SHA-256 of the text) dropped."""
    stats = CorpusStats() if stats is None else stats
    wanted, seen_hashes = set(languages), set()
    for path in check_inputs(inputs):
        if os.path.isdir(path):
            records = _directory_records(path, wanted, max_file_bytes, exclude_dirs, stats)
        else:
            records = _jsonl_records(path, wanted, max_file_bytes, stats)
        for record in records:
            digest = hashlib.sha256(record["text"].encode("utf-8")).digest()
            if digest in seen_hashes:
                stats.skipped["duplicate"] += 1
                continue
            seen_hashes.add(digest)
            record["sha256"] = digest.hex()
            stats.kept += 1
            yield record
