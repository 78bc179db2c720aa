"""The 12 PolyCoder languages and the file extensions that identify them."""

import os
from typing import Dict, Iterable, List, Optional

LANGUAGES = ("C", "C#", "C++", "Go", "Java", "JavaScript", "PHP", "Python", "Ruby", "Rust", "Scala", "TypeScript")

# `.h` is counted as C (as PolyCoder did); C++ headers are recognised by their own suffixes.
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


def language_of(path: str) -> Optional[str]:
    """The language a file's extension names (case-insensitive), or None for anything else."""
    return EXTENSIONS.get(os.path.splitext(path)[1].lower())


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
