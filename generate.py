#!/usr/bin/env python3
"""Generate code with a trained model: ./deepy.py generate.py CONF.yml [...] [--prompt "def f():"]

text-gen-type: unconditional (num-samples from scratch) | input-file (sample-input-file: a text file is one
prompt, kept byte for byte; a jsonl file gives one prompt per record's "prompt") | interactive.
`prompt` completes a single prompt. Samples go to stdout and, with sample-output-file, to jsonl.
"""

import dataclasses
import json
import sys

from megatron_lite.config_loader import load_config_from_argv, print_usage_if_asked
from megatron_lite.errors import UserError, exit_on_user_error
from megatron_lite.data.jsonl import iter_jsonl
from megatron_lite.files import atomic_write_text


def read_prompts(path: str) -> list:
    """Prompts of an input file: the whole text file, or the 'prompt' of each jsonl record."""
    if not path:
        raise UserError("text-gen-type input-file needs 'sample-input-file'")
    try:
        with open(path, encoding="utf-8", newline="") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read sample-input-file {path}: {e}") from None
    if not path.endswith(".jsonl"):
        if not text:
            raise UserError(f"sample-input-file {path} is empty")
        return [text]
    prompts = []
    for lineno, record in iter_jsonl(path):
        if not isinstance(record.get("prompt"), str):
            raise UserError(f"{path}:{lineno}: expected a JSON object with a 'prompt' string")
        prompts.append(record["prompt"])
    if not prompts:
        raise UserError(f"sample-input-file {path} holds no prompts")
    return prompts


def write_samples(path: str, completions: list) -> None:
    """jsonl of context, text, length, finished, duration_seconds; written under a temporary name, then renamed."""
    atomic_write_text(path, "".join(json.dumps(dataclasses.asdict(c)) + "\n" for c in completions))


@exit_on_user_error
def main(argv):
    if print_usage_if_asked(argv, __doc__):
        return
    cfg = load_config_from_argv(argv, training=False)  # no batch keys needed
    from megatron_lite.parallel import state as parallel_state

    try:
        generate(cfg)
    finally:
        parallel_state.destroy()  # leave the process group before exit: gloo can abort at exit otherwise


def generate(cfg) -> None:
    """Generate in the configured mode; rank 0 prints and writes the samples."""
    from megatron_lite.build import load_trained_model
    from megatron_lite.generation.engine import TextGenerator
    from megatron_lite.generation.interactive import run_interactive, unescape
    from megatron_lite.parallel import state as parallel_state

    g = cfg.generate
    if g.text_gen_type == "interactive" and g.prompt is None and cfg.parallel.world_size > 1:
        raise UserError("text-gen-type interactive runs in one process; use input-file with several ranks")
    from megatron_lite.precision import resolve_inference_precision

    model, tokenizer, device = load_trained_model(cfg)
    precision = resolve_inference_precision(cfg.precision.inference_precision, device)
    generator = TextGenerator(model, tokenizer, g, cfg.model.max_position_embeddings, seed=cfg.train.seed,
                              precision=precision.name)
    # Tensor-parallel peers compute the same samples; rank 0 reports them.
    say = print if parallel_state.get().rank == 0 else (lambda *args, **kwargs: None)
    say(f"inference precision: {precision.name} ({precision.reason})", file=sys.stderr)
    completions = []
    if g.prompt is not None:
        completions = generator.complete(unescape(g.prompt))  # \n and \t as in interactive mode
        for c in completions:
            say(c.context + c.text)
    elif g.text_gen_type == "unconditional":
        completions = generator.complete("")
        for i, c in enumerate(completions):
            say(f"--- sample {i + 1} ---\n{c.text}")
    elif g.text_gen_type == "input-file":
        for prompt in read_prompts(g.sample_input_file):
            for c in generator.complete(prompt):
                completions.append(c)
                say(f"--- {prompt[:60]!r} ---\n{c.context}{c.text}")
    else:
        completions = [c for _, c in run_interactive(generator)]
    if g.sample_output_file and parallel_state.get().rank == 0:
        write_samples(g.sample_output_file, completions)


if __name__ == "__main__":
    main(sys.argv[1:])
