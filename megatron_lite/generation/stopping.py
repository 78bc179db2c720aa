"""Where a code completion ends: stop sequences, truncation patterns, and the end of a code block."""

import re

# A new statement at column 0 that is not a continuation of the prompt's block (HumanEval / Codex rule).
CODE_BLOCK_END = re.compile(r"\n(?=def |class |if |print|#|@)")


def cut_point(text: str, stop_sequences=(), patterns=(), code_block: bool = False):
    """Index where `text` (a completion, without its prompt) should be cut, or None when it goes on."""
    cuts = [i for i in (text.find(s) for s in stop_sequences if s) if i >= 0]
    cuts += [m.start() for m in (re.search(p, text, flags=re.MULTILINE) for p in patterns) if m]
    if code_block:
        m = CODE_BLOCK_END.search(text)
        if m:
            cuts.append(m.start())
    return min(cuts) if cuts else None


def truncate(text: str, stop_sequences=(), patterns=(), code_block: bool = False) -> str:
    cut = cut_point(text, stop_sequences, patterns, code_block)
    return text if cut is None else text[:cut]
