"""The one exception type for user mistakes: entry points print it as one line and exit non-zero."""

import contextlib
import os
import sys


class UserError(Exception):
    """A problem with the user's input (config, file, flag); its message is one line naming the culprit."""


def exit_on_user_error(main):
    """Decorate an entry point so a UserError prints `error: ...` (no traceback) and exits with status 2."""

    def wrapped(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)

    wrapped.__name__ = main.__name__
    wrapped.__doc__ = main.__doc__
    return wrapped


_warned = set()
_quiet = False


@contextlib.contextmanager
def warnings_silenced():
    """Drop warnings inside the block: deepy.py checks the config that the script loads (and warns about) again."""
    global _quiet
    _quiet = True
    try:
        yield
    finally:
        _quiet = False


def warn_once(message: str) -> None:
    """Print `warning: ...` to stderr, once per distinct message (only rank 0 speaks)."""
    if _quiet or message in _warned or int(os.environ.get("RANK", "0")) != 0:
        return
    _warned.add(message)
    print(f"warning: {message}", file=sys.stderr, flush=True)
