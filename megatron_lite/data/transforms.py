"""Optional preprocessing transforms: fill-in-the-middle, CERT-style sketches, PyMT5-style method extraction."""

import ast
import builtins
import io
import keyword
import textwrap
import tokenize
from typing import List, Optional, Union

from megatron_lite.errors import UserError

FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX = "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>"
FIM_TOKENS = (FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX)

Segment = Union[str, int]  # text to encode, or a token id placed as it is


def fim_segments(text: str, rng, spm_rate: float, ids: dict) -> List[Segment]:
    """Cut at two uniform character positions into prefix / middle / suffix and reorder (Bavarian et al. 2022).

    PSM: <pre> prefix <suf> suffix <mid> middle;  SPM: <pre> <suf> suffix <mid> prefix middle.
    """
    lo, hi = sorted(int(x) for x in rng.randint(0, len(text) + 1, size=2))
    prefix, middle, suffix = text[:lo], text[lo:hi], text[hi:]
    pre, mid, suf = ids[FIM_PREFIX], ids[FIM_MIDDLE], ids[FIM_SUFFIX]
    if rng.random_sample() < spm_rate:
        return [pre, suf, suffix, mid, prefix, middle]
    return [pre, prefix, suf, suffix, mid, middle]


_KEEP_NAMES = set(keyword.kwlist) | set(getattr(keyword, "softkwlist", [])) | set(dir(builtins)) | {"self", "cls"}


def _defined_names(tree: ast.AST) -> set:
    """Names the file itself binds: functions, classes, arguments, assigned variables, loop targets."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
    return names - _KEEP_NAMES


def cert_sketch(source: str) -> Optional[str]:
    """CERT's sketch of Python code: user-defined names -> `name`, literals -> `number` / `string`; library names,
    keywords and layout stay. None when the text is not Python that parses."""
    try:
        defined = _defined_names(ast.parse(source))
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (SyntaxError, ValueError, tokenize.TokenError):
        return None
    fstring_start, fstring_end = getattr(tokenize, "FSTRING_START", -1), getattr(tokenize, "FSTRING_END", -1)
    out, depth = [], 0
    for tok in tokens:
        if depth:  # inside an f-string (Python 3.12+ tokenizes its parts): the whole literal becomes one token
            depth += (tok.type == fstring_start) - (tok.type == fstring_end)
            if depth == 0:
                out[-1] = out[-1]._replace(end=tok.end)
            continue
        if tok.type == tokenize.NAME and tok.string in defined:
            tok = tok._replace(string="name")
        elif tok.type == tokenize.NUMBER:
            tok = tok._replace(string="number")
        elif tok.type in (tokenize.STRING, fstring_start):
            depth = int(tok.type == fstring_start)
            tok = tok._replace(string='"string"')
        out.append(tok)
    try:
        # untokenize keeps columns from the start/end positions, so indentation and line breaks survive
        return tokenize.untokenize(_respaced(out))
    except ValueError:
        return None


def _respaced(tokens):
    """Token positions after replacements changed token lengths (a line's later tokens shift left or right)."""
    shift_line, shift = -1, 0
    for tok in tokens:
        (sl, sc), (el, ec) = tok.start, tok.end
        if sl != shift_line:
            shift_line, shift = sl, 0
        new_start = (sl, sc + shift)
        if sl == el:
            new_end = (el, new_start[1] + len(tok.string))
            shift = new_end[1] - ec
        else:  # a multi-line token (string) ends on a later line
            new_end = (el, ec)
            shift_line, shift = el, 0
        yield tok._replace(start=new_start, end=new_end)


def python_methods(source: str) -> List[str]:
    """PyMT5-style documents: each function or method, dedented, as signature + docstring + body (decorators too);
    only those with a docstring. Empty when the text does not parse."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    lines = source.splitlines(keepends=True)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and ast.get_docstring(node) is not None:
            start = min([node.lineno] + [d.lineno for d in node.decorator_list]) - 1
            out.append(textwrap.dedent("".join(lines[start:node.end_lineno])))
    return out


TEXT_TRANSFORMS = {
    "none": lambda text: [text],
    "sketch": lambda text: [s for s in [cert_sketch(text)] if s is not None],
    "methods": python_methods,
}


def check_fim(rate: float, spm_rate: float, ids: dict, vocab_file: str) -> None:
    if not 0.0 <= rate <= 1.0 or not 0.0 <= spm_rate <= 1.0:
        raise UserError(f"fim-rate and fim-spm-rate must be in [0, 1], got {rate} and {spm_rate}")
    missing = [t for t in FIM_TOKENS if ids.get(t) is None]
    if rate > 0 and missing:
        raise UserError(f"vocab-file '{vocab_file}' has no FIM sentinel token(s) {missing}: train the tokenizer "
                        f"with tools/train_tokenizer.py --fim-tokens")

