#!/usr/bin/env python3
"""Train a GPT-NeoX-architecture model: ./deepy.py train.py CONF.yml [...] [--key value ...]"""

import sys

from megatron_lite.config_loader import load_config_from_argv, print_usage_if_asked
from megatron_lite.errors import exit_on_user_error


@exit_on_user_error
def main(argv):
    if print_usage_if_asked(argv, __doc__):
        return
    from megatron_lite.training.trainer import pretrain  # torch imports after the config is known good

    pretrain(load_config_from_argv(argv))


if __name__ == "__main__":
    main(sys.argv[1:])
