"""The 12 PolyCoder languages and the file extensions that identify them."""

import os
import re
from typing import Dict, Iterable, List, Optional

LANGUAGES = ("C", "C#", "C++", "Go", "Java", "JavaScript", "PHP", "Python", "Ruby", "Rust", "Scala", "TypeScript")

# `.h` is C by its extension alone; with its text at hand `language_of` decides between C and C++.
EXTENSIONS: Dict[str, str] = {
    ".c": "C", ".h": "C",
    ".cs": "C#",
    ".cpp": "C++", ".cc": "C++", ".cxx": "C++", ".c++": "C++", ".hpp": "C++", ".hh": "C++", ".hxx": "C++",
    ".h++": "C++",
    ".go": "Go",
    ".java": "Java",
    ".js": "JavaScript", ".mjs": "JavaScript", ".cjs": "JavaScript", ".jsx": "JavaScript",
    ".php": "PHP",
    ".py": "Python",
    ".rb": "Ruby",
    ".rs": "Rust",
    ".scala": "Scala",
    ".ts": "TypeScript", ".tsx": "TypeScript",
}


# Constructs a C compiler rejects, at the start of a line (after indentation) or as `std::`, `#include <iostream>`.
_CPP_MARKERS = re.compile(
    r"^\s*(?:namespace\s+\w+|template\s*<|class\s+\w+[^;]*\{?$|(?:public|private|protected)\s*:"
    r"|using\s+namespace\b|#include\s*<(?:iostream|string|vector|map|memory|algorithm)>)"
    r"|\bstd::\w", re.MULTILINE)


def header_language(text: str) -> str:
    """`.h` files: C++ when the text uses a construct only C++ has (classes, namespaces, templates, std::), else C."""
    return "C++" if _CPP_MARKERS.search(text) else "C"


def language_of(path: str, text: Optional[str] = None) -> Optional[str]:
    """The language a file's extension names (case-insensitive), or None; a `.h` with `text` is decided by content."""
    language = EXTENSIONS.get(os.path.splitext(path)[1].lower())
    if language == "C" and text is not None and path.lower().endswith(".h"):
        return header_language(text)
    return language


def parse_languages(spec: Optional[Iterable[str]]) -> List[str]:
    """Canonical names for a list like ['python', 'C++']; None or empty means all; unknown -> ValueError."""
    if not spec:
        return list(LANGUAGES)
    by_lower = {name.lower(): name for name in LANGUAGES}
    out = []
    for name in spec:
        name = name.strip()
        if not name:
            continue
        if name.lower() not in by_lower:
            raise ValueError(f"unknown language '{name}'; valid: {', '.join(LANGUAGES)}")
        if by_lower[name.lower()] not in out:
            out.append(by_lower[name.lower()])
    return out or list(LANGUAGES)
