#!/usr/bin/env python3
"""Launcher: ./deepy.py SCRIPT.py CONF.yml [CONF.yml ...] [--key value ...]

Checks the merged config first (so mistakes stop before any process starts), then runs the script
with the same arguments. One process for now; the parallelism issue adds torchrun / multi-node.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from megatron_lite.config_loader import load_config_from_argv  # noqa: E402
from megatron_lite.errors import UserError, exit_on_user_error  # noqa: E402

SCRIPTS = ("train.py", "generate.py", "eval.py")


def find_script(name: str) -> str:
    """The script as given, or one of ours next to this launcher."""
    for candidate in (name, os.path.join(HERE, name)):
        if os.path.isfile(candidate):
            return candidate
    raise UserError(f"script not found: {name} (expected one of {', '.join(SCRIPTS)})")


@exit_on_user_error
def main(argv):
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return
    script = find_script(argv[0])
    load_config_from_argv(argv[1:])  # validate now; the script loads it again in its own process
    os.execv(sys.executable, [sys.executable, script, *argv[1:]])


if __name__ == "__main__":
    main(sys.argv[1:])
