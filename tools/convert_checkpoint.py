#!/usr/bin/env python
"""Convert checkpoints: ours <-> Hugging Face GPTNeoXForCausalLM, GPT-NeoX (PolyCoder) -> ours, tp re-shard.

  to-hf      --load SAVE_OR_STEP_DIR --output HF_DIR
  from-hf    --input HF_DIR --output SAVE_DIR
  from-neox  --input NEOX/global_stepN [--config NEOX.yml ...] [--vocab-file tokenizer.json] --output SAVE_DIR
  reshard    --load SAVE_OR_STEP_DIR --tp M --output SAVE_DIR

Checkpoints written here hold weights only (optimizer state is not converted or re-sharded): train from
them with `finetune: true`. `.pt` files are read with torch's weights-only loader, never by unpickling code.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_lite.errors import exit_on_user_error  # noqa: E402


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    to_hf = sub.add_parser("to-hf", help="our checkpoint -> Hugging Face GPTNeoXForCausalLM directory")
    to_hf.add_argument("--load", required=True, help="save directory (follows 'latest') or global_stepN")
    from_hf = sub.add_parser("from-hf", help="Hugging Face GPT-NeoX directory -> our checkpoint")
    from_hf.add_argument("--input", required=True, help="directory with config.json, weights and tokenizer files")
    neox = sub.add_parser("from-neox", help="GPT-NeoX pipeline checkpoint -> our checkpoint (merges tp shards)")
    neox.add_argument("--input", required=True, help="GPT-NeoX global_stepN directory")
    neox.add_argument("--config", nargs="+", default=[], help="the run's config files (default: INPUT/configs/*.yml)")
    neox.add_argument("--vocab-file", help="tokenizer file to use instead of the config's vocab-file")
    reshard = sub.add_parser("reshard", help="our checkpoint at tp n -> tp m (model weights only)")
    reshard.add_argument("--load", required=True, help="save directory (follows 'latest') or global_stepN")
    reshard.add_argument("--tp", type=int, required=True, help="new tensor-parallel size")
    for parser in (to_hf, from_hf, neox, reshard):
        parser.add_argument("--output", required=True, help="new directory to write (must not exist or be empty)")
    return p.parse_args(argv)


@exit_on_user_error
def main(argv):
    args = parse_args(argv)
    from megatron_lite.interop import convert

    if args.command == "to-hf":
        convert.ours_to_hf(args.load, args.output)
        where = args.output
    elif args.command == "from-hf":
        where = convert.hf_to_ours(args.input, args.output)
    elif args.command == "from-neox":
        overrides = ["--vocab-file", args.vocab_file] if args.vocab_file else []
        where = convert.neox_to_ours(args.input, args.config, args.output, overrides)
    else:
        where = convert.reshard_ours(args.load, args.tp, args.output)
    print(f"wrote {where}")


if __name__ == "__main__":
    main(sys.argv[1:])
