"""Interactive prompt: multi-line input, streamed output, /commands, Ctrl-C cancels one generation."""

import sys

HELP = """Type a prompt; an empty line (or Ctrl-D) ends it and starts generation. Escapes \\n and \\t work too.
Commands: /temperature X  /top_p X  /top_k N  /length N  /settings  /help  /exit"""

SETTINGS = {"temperature": float, "top_p": float, "top_k": int, "length": int}


def read_prompt(read_line) -> str:
    """Lines until an empty line; None at end of input with nothing typed."""
    lines = []
    while True:
        try:
            line = read_line("... " if lines else ">>> ")
        except EOFError:
            return "\n".join(lines) if lines else None
        if line == "" and lines:
            return "\n".join(lines)
        if not lines and line.startswith("/"):  # a command takes effect at once
            return line
        if line != "" or lines:
            lines.append(line)


def unescape(text: str) -> str:
    """Accept typed \\n and \\t escapes (GPT-NeoX users had to type them)."""
    return text.replace("\\n", "\n").replace("\\t", "\t")


def apply_command(command: str, cfg, out, max_len: int) -> bool:
    """Run one /command against the generate config section; returns False for /exit. max_len: the context."""
    name, _, value = command[1:].strip().partition(" ")
    if name in ("exit", "quit"):
        return False
    if name == "help":
        print(HELP, file=out)
    elif name == "settings":
        print(f"temperature {cfg.temperature}  top_p {cfg.top_p}  top_k {cfg.top_k}  length {cfg.maximum_tokens}", file=out)
    elif name in SETTINGS:
        try:
            parsed = SETTINGS[name](value)
        except ValueError:
            print(f"/{name} needs a {SETTINGS[name].__name__}, got {value!r}", file=out)
            return True
        setattr(cfg, "maximum_tokens" if name == "length" else name, parsed)
        print(f"{name} = {parsed}", file=out)
        if name == "length" and parsed >= max_len:
            print(f"note: the model's context is {max_len} tokens (max-position-embeddings); a sample stops where "
                  "prompt and sample fill it", file=out)
    else:
        print(f"unknown command /{name}; /help lists them", file=out)
    return True


def run_interactive(generator, read_line=input, out=sys.stdout) -> list:
    """The session loop; returns the (prompt, Completion) pairs produced.

    Ctrl-C at any point of an iteration keeps the session: during generation it cancels that generation,
    otherwise it drops the prompt being typed (so a Ctrl-C that arrives just as a generation ends is safe)."""
    print(HELP, file=out, flush=True)
    samples = []
    while True:
        generating = False
        try:
            prompt = read_prompt(read_line)
            if prompt is None:
                break
            if prompt.startswith("/"):
                if not apply_command(prompt, generator.cfg, out, generator.max_len):
                    break
                continue
            prompt = unescape(prompt)
            generating = True
            completion = generator.complete(prompt, 1, on_text=lambda t: print(t, end="", file=out, flush=True))[0]
            generating = False
            samples.append((prompt, completion))
            print(f"\n[{completion.length} tokens, {completion.duration_seconds:.2f}s]", file=out, flush=True)
        except KeyboardInterrupt:
            print("\n(generation cancelled)" if generating else "\n(prompt cleared)", file=out, flush=True)
    return samples
