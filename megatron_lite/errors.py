"""The one exception type for user mistakes: entry points print it as one line and exit non-zero."""

import contextlib
import os
import sys
import traceback


class UserError(Exception):
    """A problem with the user's input (config, file, flag); its message is one line naming the culprit."""


def exit_on_user_error(main):
    """Decorate an entry point so a UserError prints `error: ...` (no traceback) and exits with status 2."""

    def wrapped(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as e:
            report_to_launcher(f"error: {e}")
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)
        except Exception:
            report_to_launcher(traceback.format_exc())
            raise

    wrapped.__name__ = main.__name__
    wrapped.__doc__ = main.__doc__
    return wrapped


# deepy.py's launcher names a directory here; a failing rank leaves its error there for the launcher to show.
RANK_ERRORS_ENV = "MEGATRON_LITE_RANK_ERRORS"


def report_to_launcher(text: str, max_lines: int = 12) -> None:
    """Leave the last lines of this rank's fatal error where deepy.py's launcher looks for them."""
    directory = os.environ.get(RANK_ERRORS_ENV)
    if not directory:
        return
    lines = text.rstrip().splitlines()[-max_lines:]
    try:
        with open(os.path.join(directory, f"rank{int(os.environ.get('RANK', '0')):05d}.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")
    except OSError:
        pass  # the console output is still there


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
