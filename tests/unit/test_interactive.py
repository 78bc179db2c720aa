"""The interactive loop with a stand-in generator: multi-line prompts, /commands, Ctrl-C at every point."""

import io

from megatron_lite.config import GenerateConfig
from megatron_lite.generation.engine import Completion
from megatron_lite.generation.interactive import run_interactive


class FakeGenerator:
    """Streams the prompt upper-cased; the prompt 'slow' is interrupted (Ctrl-C) after streaming a little."""

    def __init__(self):
        self.cfg, self.max_len = GenerateConfig(), 128

    def complete(self, prompt, num_samples, on_text=None):
        if prompt == "slow":
            on_text("partial")
            raise KeyboardInterrupt
        on_text(prompt.upper())
        return [Completion(prompt, prompt.upper(), 3, True, 0.5)]


def typed(*lines):
    """read_line for these lines; an exception class in the list is raised there (KeyboardInterrupt = Ctrl-C)."""
    queue = list(lines)

    def read_line(prompt):
        if not queue:
            raise EOFError  # Ctrl-D
        line = queue.pop(0)
        if isinstance(line, type):
            raise line
        return line
    return read_line


def test_commands_prompts_and_ctrl_c_while_typing_or_generating():
    generator, out = FakeGenerator(), io.StringIO()
    samples = run_interactive(generator, typed(
        "/temperature 0.5", "/top_p x", "/top_p 0.9", "def f(a,", "  b):", "",
        "slow", "", "half typed", KeyboardInterrupt, "x\\ny", "", "/length 1000", "/settings"), out)
    assert [(p, c.text) for p, c in samples] == [("def f(a,\n  b):", "DEF F(A,\n  B):"), ("x\ny", "X\nY")]
    assert (generator.cfg.temperature, generator.cfg.top_p) == (0.5, 0.9)
    screen = out.getvalue()
    assert "temperature = 0.5\n/top_p needs a float, got 'x'\ntop_p = 0.9\n" in screen
    assert "DEF F(A,\n  B):\n[3 tokens, 0.50s]\n" in screen  # streamed text, then the summary line
    assert "partial\n(generation cancelled)\n" in screen and "\n(prompt cleared)\n" in screen
    assert "length = 1000\nnote: the model's context is 128 tokens" in screen  # not a silent stop at the context
    assert screen.endswith("temperature 0.5  top_p 0.9  top_k 0  length 1000\n")


class InterruptedSummary(io.StringIO):
    """Ctrl-C lands just after a generation ended, while its summary line is being printed."""

    interrupted = False

    def write(self, text):
        if text.startswith("\n[") and not self.interrupted:
            self.interrupted = True
            raise KeyboardInterrupt
        return super().write(text)


def test_ctrl_c_as_a_generation_ends_keeps_the_session():
    out = InterruptedSummary()
    samples = run_interactive(FakeGenerator(), typed("a", "", "b", ""), out)
    assert [p for p, _ in samples] == ["a", "b"]
    assert "A\n(prompt cleared)\n" in out.getvalue() and out.getvalue().endswith("B\n[3 tokens, 0.50s]\n")
