"""What crosses the sandbox boundary: plain data only, one JSON message per line (stdlib only: the sandbox imports it).

Plain data is None, bool, int, float, complex, str, bytes and lists, tuples, sets, frozensets and dicts of them,
checked by exact type: a subclass (or any other object) could bring its own `__eq__` and pass every assert.
"""

import json
import os
import select
import time

MAX_LINE = 64 * 2**20  # bytes; a longer message is refused (a program could flood the judge's memory)
_CONTAINERS = {list: "l", tuple: "t", set: "s", frozenset: "z"}
_BUILD = {"l": list, "t": tuple, "s": set, "z": frozenset}


class NotPlainData(TypeError):
    pass


def encode(value):
    """`value` as JSON-ready lists and strings; NotPlainData for anything else. Numbers are exact (hex)."""
    kind = type(value)
    if value is None or kind is bool or kind is str:
        return value
    if kind is int:
        return ["i", format(value, "x")]  # hex: no int-to-decimal digit limit
    if kind is float:
        return ["f", value.hex()]  # exact, and nan / inf too
    if kind is complex:
        return ["c", value.real.hex(), value.imag.hex()]
    if kind is bytes:
        return ["y", value.hex()]
    if kind in _CONTAINERS:
        return [_CONTAINERS[kind], [encode(item) for item in value]]
    if kind is dict:
        return ["d", [[encode(k), encode(v)] for k, v in value.items()]]
    raise NotPlainData(f"a {kind.__name__} is not plain data")


def decode(data):
    """The value `encode` made; ValueError for anything `encode` cannot have made."""
    if data is None or type(data) is bool or type(data) is str:
        return data
    if type(data) is not list or not data or type(data[0]) is not str:
        raise ValueError("not an encoded value")
    tag, args = data[0], data[1:]
    try:
        if tag == "i":
            return int(_text(args), 16)
        if tag == "f":
            return float.fromhex(_text(args))
        if tag == "c":
            return complex(float.fromhex(_text(args[:1])), float.fromhex(_text(args[1:])))
        if tag == "y":
            return bytes.fromhex(_text(args))
        if tag in _BUILD and len(args) == 1 and type(args[0]) is list:
            return _BUILD[tag](decode(item) for item in args[0])
        if tag == "d" and len(args) == 1 and type(args[0]) is list:
            return {decode(_pair(p)[0]): decode(_pair(p)[1]) for p in args[0]}
    except (TypeError, RecursionError) as e:  # an unhashable key or set member, nesting too deep
        raise ValueError(f"not an encoded value ({e})") from None
    raise ValueError(f"not an encoded value (tag {tag!r})")


def _text(args):
    if len(args) != 1 or type(args[0]) is not str:
        raise ValueError("not an encoded value")
    return args[0]


def _pair(item):
    if type(item) is not list or len(item) != 2:
        raise ValueError("not an encoded value")
    return item


def send(fd: int, message: dict, deadline: float = None):
    """Write one message line to `fd`, whole; TimeoutError after `deadline` (for a non-blocking `fd`)."""
    data = json.dumps(message).encode() + b"\n"
    while data:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([], [fd], [], left)[1]:
                raise TimeoutError()
        try:
            data = data[os.write(fd, data):]
        except BlockingIOError:
            continue


class LineReader:
    """Messages from `fd`, one per line, each within a deadline."""

    def __init__(self, fd: int):
        self.fd, self.buffer = fd, b""

    def read(self, deadline: float = None):
        """The next message (a dict), or None at end of file. TimeoutError after `deadline` (time.monotonic());
        ValueError for a line that is too long or not a JSON object."""
        while b"\n" not in self.buffer:
            if len(self.buffer) > MAX_LINE:
                raise ValueError(f"a message longer than {MAX_LINE} bytes")
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                    raise TimeoutError()
            chunk = os.read(self.fd, 1 << 20)
            if not chunk:
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        try:
            message = json.loads(line)
        except RecursionError:
            raise ValueError("a message nested too deeply") from None
        if type(message) is not dict:
            raise ValueError("a message that is not a JSON object")
        return message
