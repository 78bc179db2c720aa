#!/usr/bin/env python3
"""Train a GPT-NeoX-architecture model: ./deepy.py train.py CONF.yml [...] [--key value ...]"""

import os
import sys

from megatron_lite.config_loader import load_config_from_argv, print_usage_if_asked
from megatron_lite.errors import exit_on_user_error


@exit_on_user_error
def main(argv):
    if print_usage_if_asked(argv, __doc__):
        return
    from megatron_lite.training.trainer import pretrain  # torch imports after the config is known good

    cfg = load_config_from_argv(argv)
    pretrain(cfg)
    if cfg.parallel.world_size > 1 and os.environ.get("MEGATRON_LITE_MPI") != "1":  # MPI must finalize at exit
        # Everything is saved, synced and closed. Skip the interpreter's teardown: a ZeRO rank at tp 2 x dp 2 aborted
        # there about once in 8 runs ("terminate called without an active exception", a native thread still
        # joinable in a destructor), failing a job whose work was done.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
