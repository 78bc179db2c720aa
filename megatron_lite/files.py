"""Writing files so that a killed run never leaves half of one: the package's one atomic-write helper."""

import os


def atomic_write(path: str, write) -> str:
    """Call write(temporary path) in path's directory, then rename it to `path`; the temporary is removed on
    failure. Returns path."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def atomic_write_text(path: str, text: str) -> str:
    """`text` to path, atomically (UTF-8)."""
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    return atomic_write(path, write)


def end_cut_short_line(path: str) -> None:
    """Finish a last line that a killed run left unfinished, so records appended to `path` start on their own line."""
    if os.path.exists(path) and os.path.getsize(path):
        with open(path, "rb+") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")
