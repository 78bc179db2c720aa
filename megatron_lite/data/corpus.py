"""Reading corpora (source trees, git checkouts, jsonl / jsonl.zst / json.gz) and collecting one deduplicated corpus."""

import base64
import hashlib
import os
from collections import Counter, defaultdict
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from megatron_lite.data.dedup import MinHashLSH, minhash
from megatron_lite.data.filters import FilterSettings, apply_filters, lexical_token_count
from megatron_lite.data.jsonl import iter_jsonl
from megatron_lite.data.languages import LANGUAGES, language_of
from megatron_lite.errors import UserError

DEFAULT_EXCLUDE_DIRS = ("site-packages", "__pycache__", ".git", "node_modules")
DEFAULT_MAX_FILE_BYTES = 1_000_000
JSONL_SUFFIXES = (".jsonl", ".jsonl.zst", ".json.gz", ".jsonl.gz")


def check_inputs(inputs: Sequence[str], key: str = "input") -> List[str]:
    """Each input must be an existing directory or a .jsonl / .jsonl.zst / .json.gz file."""
    if not inputs:
        raise UserError(f"no {key} given: expected directories and/or .jsonl files")
    for path in inputs:
        if os.path.isdir(path):
            continue
        if not os.path.exists(path):
            raise UserError(f"{key} '{path}' does not exist (expected a directory or a .jsonl file)")
        if not path.endswith(JSONL_SUFFIXES):
            raise UserError(f"{key} '{path}' is neither a directory nor a {' / '.join(JSONL_SUFFIXES)} file")
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


def iter_documents(inputs: Sequence[str], keys: Sequence[str] = ("text",),
                   exclude_dirs: Sequence[str] = DEFAULT_EXCLUDE_DIRS,
                   skipped: Optional[Counter] = None, languages: Optional[Counter] = None) -> Iterator[Dict[str, str]]:
    """One {key: text} per document: each UTF-8 source file of a directory (key 'text'), each jsonl record.
    Source files that are not documents (binary, not UTF-8, empty, unreadable) are counted in `skipped`; the
    documents' languages (the record's 'language', else its path's, else '?') in `languages`."""
    languages = Counter() if languages is None else languages
    for path in inputs:
        if os.path.isdir(path):
            if list(keys) != ["text"]:
                raise UserError(f"jsonl-keys {list(keys)} do not apply to directory input '{path}' "
                                f"(its files are documents under the key 'text')")
            for full, text in _source_texts(path, exclude_dirs, skipped):
                languages[language_of(full, text) or "?"] += 1
                yield {"text": text}
        else:
            for lineno, record in iter_jsonl(path):
                for k in keys:
                    if k not in record:
                        raise UserError(f"{path}:{lineno}: record has no key '{k}' (from jsonl-keys)")
                    if not isinstance(record[k], str):
                        raise UserError(f"{path}:{lineno}: key '{k}' holds {type(record[k]).__name__}, expected a string")
                languages[record.get("language") or language_of(str(record.get("path", ""))) or "?"] += 1
                yield {k: record[k] for k in keys}


def iter_labelled_texts(inputs: Sequence[str], keys: Sequence[str] = ("text",),
                        exclude_dirs: Sequence[str] = DEFAULT_EXCLUDE_DIRS) -> Iterator[Tuple[str, str]]:
    """(text, language) of each document's keys: the record's 'language', else the path's, else '?'."""
    for path in inputs:
        if os.path.isdir(path):
            if list(keys) != ["text"]:
                raise UserError(f"jsonl-keys {list(keys)} do not apply to directory input '{path}'")
            for full, text in _source_texts(path, exclude_dirs):
                yield text, language_of(full, text)
        else:
            for lineno, record in iter_jsonl(path):
                language = record.get("language") or language_of(str(record.get("path", ""))) or "?"
                for k in keys:
                    if not isinstance(record.get(k), str):
                        raise UserError(f"{path}:{lineno}: record has no string key '{k}' (from jsonl-keys)")
                    yield record[k], language


def _source_texts(root: str, exclude_dirs, skipped: Optional[Counter] = None) -> Iterator[Tuple[str, str]]:
    """(path, text) of each source file that is a document; the others counted by reason in `skipped`."""
    for full, _ in walk_source_files(root, exclude_dirs):
        if language_of(full) is not None:
            text, reason = read_source(full)
            if text is not None:
                yield full, text
            elif skipped is not None:
                skipped[reason] += 1


class CorpusStats:
    """Counts for the report: files seen, kept, redacted, and skipped by reason (each filter its own reason)."""

    def __init__(self):
        self.seen, self.kept, self.redacted, self.skipped = 0, 0, 0, Counter()

    def summary(self) -> str:
        reasons = ", ".join(f"{r} {n}" for r, n in sorted(self.skipped.items())) or "none"
        return f"{self.seen} files seen, {self.kept} kept ({self.redacted} with secrets redacted), skipped: {reasons}"


def _checkouts(root: str) -> set:
    """Names of root's subdirectories that are git checkouts (each its own repository)."""
    try:
        return {e.name for e in os.scandir(root) if e.is_dir() and os.path.exists(os.path.join(e.path, ".git"))}
    except OSError:
        return set()


def _repository(root: str, rel: str, checkouts: set) -> str:
    """A file's repository: the git checkout below root that holds it, else root's own name."""
    top = rel.split("/", 1)[0]
    return top if top in checkouts and "/" in rel else os.path.basename(os.path.abspath(root))


def _directory_records(root: str, languages: set, max_file_bytes: int, exclude_dirs, stats: CorpusStats):
    checkouts = _checkouts(root)
    for full, rel in walk_source_files(root, exclude_dirs):
        stats.seen += 1
        language = language_of(full)
        if language is None:
            stats.skipped["not-source"] += 1
            continue
        if language not in languages and language != "C":  # a .h may yet turn out C++
            stats.skipped["language"] += 1
            continue
        text, reason = read_source(full, max_file_bytes)
        if text is None:
            stats.skipped[reason] += 1
            continue
        language = language_of(full, text)
        if language not in languages:
            stats.skipped["language"] += 1
            continue
        yield {"text": text, "language": language, "repository": _repository(root, rel, checkouts), "path": rel}


def _jsonl_records(path: str, languages: set, stats: CorpusStats):
    default_repo = os.path.basename(path).split(".")[0]
    for lineno, record in iter_jsonl(path):
        stats.seen += 1
        text = record.get("text")
        if not isinstance(text, str):
            raise UserError(f"{path}:{lineno}: record has no string 'text' key")
        language = record.get("language") or language_of(str(record.get("path", "")), text)
        if language not in languages:
            stats.skipped["language"] += 1
            continue
        if not text:
            stats.skipped["empty"] += 1
            continue
        # Pass other fields through; fill the ones every corpus record has.
        out = dict(record)
        out.update(language=language)
        out.setdefault("repository", default_repo)
        out.setdefault("path", f"{os.path.basename(path)}:{lineno}")
        yield out


def majority_languages(inputs: Sequence[str], exclude_dirs: Sequence[str] = DEFAULT_EXCLUDE_DIRS) -> Dict[str, str]:
    """Repository -> the language most of its source bytes are in (PolyCoder's rule), by extension."""
    sizes: Dict[str, Counter] = defaultdict(Counter)
    for path in inputs:
        if os.path.isdir(path):
            checkouts = _checkouts(path)
            for full, rel in walk_source_files(path, exclude_dirs):
                language = language_of(full)
                if language is not None:
                    sizes[_repository(path, rel, checkouts)][language] += os.path.getsize(full)
        else:
            default_repo = os.path.basename(path).split(".")[0]
            for _, record in iter_jsonl(path):
                text = record.get("text")
                language = record.get("language") or language_of(str(record.get("path", "")))
                if isinstance(text, str) and language:
                    sizes[record.get("repository", default_repo)][language] += len(text)
    return {repo: counts.most_common(1)[0][0] for repo, counts in sizes.items()}


def encode_signature(sig) -> str:
    return base64.b64encode(sig.tobytes()).decode("ascii")


def collect(inputs: Sequence[str], languages: Sequence[str] = LANGUAGES,
            max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
            exclude_dirs: Sequence[str] = DEFAULT_EXCLUDE_DIRS,
            stats: Optional[CorpusStats] = None, filters: Optional[FilterSettings] = None,
            near_dedup_threshold: Optional[float] = None, majority_language: bool = False,
            count_tokens: Callable[[str], int] = lexical_token_count,
            on_kept: Optional[Callable[[dict, Optional[str]], None]] = None) -> Iterator[dict]:
    """Corpus records: filtered, exact duplicates (SHA-256 of the file) and near duplicates (MinHash LSH) dropped.

    `filters` defaults to FilterSettings(max_file_bytes) (only size and secrets on); `on_kept(record, minhash)`
    sees each kept record with its base64 MinHash signature (None without near-dedup).
    """
    stats = CorpusStats() if stats is None else stats
    filters = FilterSettings(max_file_bytes=max_file_bytes) if filters is None else filters
    wanted, seen_hashes = set(languages), set()
    lsh = MinHashLSH(near_dedup_threshold) if near_dedup_threshold else None
    majority = majority_languages(check_inputs(inputs), exclude_dirs) if majority_language else None
    for path in check_inputs(inputs):
        if os.path.isdir(path):
            records = _directory_records(path, wanted, filters.max_file_bytes, exclude_dirs, stats)
        else:
            records = _jsonl_records(path, wanted, stats)
        for record in records:
            if majority is not None and majority.get(record["repository"], record["language"]) != record["language"]:
                stats.skipped["minority-language"] += 1
                continue
            digest = hashlib.sha256(record["text"].encode("utf-8")).digest()
            if digest in seen_hashes:
                stats.skipped["duplicate"] += 1
                continue
            seen_hashes.add(digest)
            text, outcome = apply_filters(record["text"], filters, count_tokens)
            if text is None:
                stats.skipped[outcome] += 1
                continue
            signature = None
            if lsh is not None:
                sig = minhash(text)
                match = lsh.query(sig)
                if match is not None:
                    stats.skipped["near-duplicate"] += 1
                    continue
                lsh.insert(record["path"], sig)
                signature = encode_signature(sig)
            if outcome == "redacted":
                stats.redacted += 1
                record["text"] = text
            record["sha256"] = digest.hex()  # of the file as found, so test sets can be checked against it
            stats.kept += 1
            if on_kept is not None:
                on_kept(record, signature)
            yield record
