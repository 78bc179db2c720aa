#!/usr/bin/env python3
"""Launcher: ./deepy.py SCRIPT.py CONF.yml [CONF.yml ...] [--key value ...]

Checks the merged config first (so mistakes stop before any process starts), then runs the script:
in this process's place when the run has one process; with torchrun for `num-procs` (or `num-gpus`) > 1
processes on this machine; one torchrun node per host of a `hostfile` (`host slots=N` lines, filtered by
`include` / `exclude`); or with mpirun when `launcher: mpirun`. If any rank fails, every other one stops.

  ./deepy.py SCRIPT.py -d DIR CONF.yml ...   config files relative to DIR (GPT-NeoX's -d)
  ./deepy.py SCRIPT.py --help                the script's usage
  ./deepy.py --help-keys [SECTION]           every config key with its default and meaning
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from megatron_lite.config import SECTIONS, describe_keys  # noqa: E402
from megatron_lite.config_loader import load_config_from_argv, parallel_section, wants_help  # noqa: E402
from megatron_lite.errors import UserError, exit_on_user_error, warnings_silenced  # noqa: E402

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
    if argv[0] == "--help-keys":
        section = argv[1] if len(argv) > 1 else None
        if section is not None and section not in SECTIONS:
            raise UserError(f"--help-keys: unknown section {section!r}; sections: {', '.join(SECTIONS)}")
        print(describe_keys(section))
        return
    from megatron_lite import launcher

    script, args = find_script(argv[0]), argv[1:]
    if wants_help(args):
        os.execv(sys.executable, [sys.executable, script, "--help"])
    pcfg = parallel_section(args)
    world = launcher.world_size(pcfg)
    os.environ["WORLD_SIZE"] = str(world)
    with warnings_silenced():  # the script loads the config again and warns then, once
        load_config_from_argv(args, training=os.path.basename(script) == "train.py")  # before any process starts
    if world == 1 and pcfg.launcher in ("torchrun", "pdsh"):
        os.execv(sys.executable, [sys.executable, script, *args])
    sys.exit(launcher.run_nodes(launcher.commands(pcfg, script, args), world))


if __name__ == "__main__":
    main(sys.argv[1:])
