"""Writing files and directories so that a killed run never leaves half of one: the package's atomic-write
helpers."""

import os
import shutil

from megatron_lite.errors import UserError


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


def fsync_dir(path: str) -> None:
    """Make a directory's entries (renames, new files) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def new_output_dir(path: str) -> str:
    """A hidden temporary sibling of `path` to fill; refuse to overwrite a non-empty `path`."""
    if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
        raise UserError(f"output '{path}' already exists and is not empty; choose a new directory")
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".tmp-{os.path.basename(os.path.abspath(path))}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    return tmp


def publish(tmp: str, path: str) -> None:
    """Move a finished temporary output directory into place."""
    fsync_dir(tmp)
    if os.path.isdir(path):
        os.rmdir(path)  # empty (checked by new_output_dir)
    os.rename(tmp, path)
