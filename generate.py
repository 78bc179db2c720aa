#!/usr/bin/env python3
"""Generate code with a trained model: ./deepy.py generate.py CONF.yml [...] [--prompt "def f():"]

text-gen-type: unconditional (num-samples from scratch) | input-file (one prompt per line of
sample-input-file) | interactive (prompts typed at a `>>>` prompt). `prompt` completes one prompt.
"""

import json
import os
import sys

from megatron_lite.config_loader import load_config_from_argv
from megatron_lite.errors import UserError, exit_on_user_error


def read_prompts(path: str) -> list:
    if not path:
        raise UserError("text-gen-type input-file needs 'sample-input-file'")
    try:
        with open(path, encoding="utf-8") as f:
            prompts = [line.rstrip("\n").replace("\\n", "\n") for line in f if line.strip()]
    except OSError as e:
        raise UserError(f"cannot read sample-input-file {path}: {e.strerror}") from None
    if not prompts:
        raise UserError(f"sample-input-file {path} holds no prompts")
    return prompts


def write_samples(path: str, samples: list) -> None:
    """jsonl of {context, text}, written under a temporary name and renamed."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        for context, text in samples:
            f.write(json.dumps({"context": context, "text": text}) + "\n")
    os.replace(path + ".tmp", path)


@exit_on_user_error
def main(argv):
    cfg = load_config_from_argv(argv)
    import torch

    from megatron_lite.build import load_trained_model
    from megatron_lite.generation.engine import generate_text

    g = cfg.generate
    model, tokenizer, device = load_trained_model(cfg)
    rng = torch.Generator(device=device).manual_seed(cfg.train.seed)
    complete = lambda prompt: generate_text(model, tokenizer, prompt, g, cfg.model.max_position_embeddings, rng)  # noqa: E731

    samples = []
    if g.prompt is not None:
        samples.append((g.prompt, complete(g.prompt)))
        print(g.prompt + samples[-1][1])
    elif g.text_gen_type == "unconditional":
        for i in range(g.num_samples):
            samples.append(("", complete("")))
            print(f"--- sample {i + 1} ---\n{samples[-1][1]}")
    elif g.text_gen_type == "input-file":
        for prompt in read_prompts(g.sample_input_file):
            samples.append((prompt, complete(prompt)))
            print(f"--- {prompt!r} ---\n{prompt}{samples[-1][1]}")
    else:  # interactive
        while True:
            try:
                prompt = input(">>> ")
            except EOFError:
                break
            text = complete(prompt.replace("\\n", "\n"))
            samples.append((prompt, text))
            print(prompt + text)
    if g.sample_output_file:
        write_samples(g.sample_output_file, samples)


if __name__ == "__main__":
    main(sys.argv[1:])
