"""generate.py from the command line: every mode on a trained checkpoint, driven as a user would."""

import json
import os
import pty
import select
import signal
import sys
import time

import pytest

from tests.conftest import REPO, run_tool


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, small_corpus):
    """A briefly trained micro model that can also decode long sequences (max positions 2048)."""
    root = tmp_path_factory.mktemp("gen")
    cfg = root / "model.yml"
    cfg.write_text(
        f"num-layers: 2\nhidden-size: 64\nnum-attention-heads: 4\nseq-length: 64\nmax-position-embeddings: 2048\n"
        f"pos-emb: rotary\nno-weight-tying: true\ntokenizer-type: HFTokenizer\n"
        f"train_micro_batch_size_per_gpu: 4\ntrain-iters: 10\neval-interval: 10\neval-iters: 1\n"
        f"data-path: {small_corpus['prefix']}\nvocab-file: {small_corpus['tokenizer']}\n"
        f"save: {root / 'ckpt'}\nload: {root / 'ckpt'}\n"
    )
    run_tool("deepy.py", "train.py", str(cfg))
    return str(cfg), root


def test_input_file_text_keeps_whitespace_exactly(checkpoint, tmp_path):
    cfg, _ = checkpoint
    prompt = "def f(a,\tb):  \r\n    return a  \n\n\n    "
    (tmp_path / "prompt.py").write_bytes(prompt.encode())
    out = tmp_path / "out.jsonl"
    run_tool("deepy.py", "generate.py", cfg, "--text-gen-type", "input-file", "--sample-input-file",
             str(tmp_path / "prompt.py"), "--sample-output-file", str(out), "--maximum-tokens", "8", "--num-samples", "2")
    records = [json.loads(line) for line in open(out)]
    assert len(records) == 2
    for r in records:
        assert r["context"] == prompt
        assert set(r) == {"context", "text", "length", "finished", "duration_seconds"}
        assert 0 < r["length"] <= 8 and r["duration_seconds"] > 0


def test_unconditional_samples_go_to_stdout_and_the_output_file(checkpoint, tmp_path):
    cfg, _ = checkpoint
    out = tmp_path / "unconditional.jsonl"
    proc = run_tool("deepy.py", "generate.py", cfg, "--text-gen-type", "unconditional", "--num-samples", "2",
                    "--maximum-tokens", "16", "--temperature", "0.8", "--sample-output-file", str(out))
    records = [json.loads(line) for line in open(out)]
    assert len(records) == 2
    for i, r in enumerate(records):
        assert r["context"] == "" and r["text"] and 0 < r["length"] <= 16
        text = r["text"].replace("\r\n", "\n").replace("\r", "\n")  # stdout is read with universal newlines
        assert f"--- sample {i + 1} ---\n{text}\n" in proc.stdout


def test_input_file_jsonl_gives_many_prompts_and_seeds_repeat(checkpoint, tmp_path):
    cfg, _ = checkpoint
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": p}) for p in ["import os\n", "class A:\n    "]) + "\n")
    args = ["deepy.py", "generate.py", cfg, "--text-gen-type", "input-file", "--sample-input-file", str(prompts),
            "--maximum-tokens", "12", "--temperature", "0.8", "--top-p", "0.9"]
    run_tool(*args, "--sample-output-file", str(tmp_path / "a.jsonl"))
    run_tool(*args, "--sample-output-file", str(tmp_path / "b.jsonl"))
    a = [json.loads(line) for line in open(tmp_path / "a.jsonl")]
    b = [json.loads(line) for line in open(tmp_path / "b.jsonl")]
    assert [r["context"] for r in a] == ["import os\n", "class A:\n    "]
    assert [r["text"] for r in a] == [r["text"] for r in b]


def test_bad_input_files(checkpoint, tmp_path):
    cfg, _ = checkpoint
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "no prompt key"}\n')
    proc = run_tool("deepy.py", "generate.py", cfg, "--text-gen-type", "input-file", "--sample-input-file", str(bad),
                    "--sample-output-file", str(tmp_path / "o.jsonl"), check=False)
    assert proc.returncode == 2 and "bad.jsonl:1" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o.jsonl").exists()


class Terminal:
    """A program on a pseudo-terminal: type into it, wait for what it prints."""

    def __init__(self, argv):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:
            os.chdir(REPO)
            # A shell ignores SIGINT in what it starts in the background, and exec keeps that: a terminal's
            # Ctrl-C must work even when the test suite was started so.
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.environ["CUDA_VISIBLE_DEVICES"] = ""  # a CPU test, also on a GPU machine
            os.execv(sys.executable, [sys.executable, *argv])
        self.seen = ""

    def _read(self, deadline, waiting_for):
        ready, _, _ = select.select([self.fd], [], [], max(0.0, deadline - time.time()))
        if not ready:
            raise AssertionError(f"timed out waiting for {waiting_for}; screen so far:\n{self.seen}")
        try:
            self.seen += os.read(self.fd, 4096).decode(errors="replace")
        except OSError:
            raise AssertionError(f"program ended before {waiting_for}; screen:\n{self.seen}") from None

    def expect(self, *texts, timeout=60):
        """Wait for the first of `texts` to appear; returns (the screen up to and including it, which text)."""
        deadline = time.time() + timeout
        while not any(text in self.seen for text in texts):
            self._read(deadline, " or ".join(map(repr, texts)))
        at, text = min((self.seen.index(text), text) for text in texts if text in self.seen)
        before, self.seen = self.seen[:at + len(text)], self.seen[at + len(text):]
        return before, text

    def expect_output(self, timeout=60):
        """Wait for anything new on the screen and take it."""
        deadline = time.time() + timeout
        while not self.seen:
            self._read(deadline, "output")
        before, self.seen = self.seen, ""
        return before

    def type(self, text):
        os.write(self.fd, text.encode())

    def close(self, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
            try:
                os.read(self.fd, 4096)  # keep draining so the program never blocks on output
            except OSError:
                time.sleep(0.05)
        os.kill(self.pid, signal.SIGKILL)
        raise AssertionError("interactive session did not exit")


def test_interactive_session(checkpoint):
    cfg, _ = checkpoint
    term = Terminal(["deepy.py", "generate.py", cfg, "--text-gen-type", "interactive", "--recompute", "true"])
    try:
        term.expect(">>> ")
        for command, ack in [("/length 5", "length = 5"), ("/temperature 0.5", "temperature = 0.5"),
                             ("/top_p 0.9", "top_p = 0.9"), ("/settings", "temperature 0.5  top_p 0.9  top_k 0  length 5")]:
            term.type(command + "\n")
            term.expect(ack)
        term.type("def add(a,\n")
        term.expect("... ")
        term.type("        b):\n\n")  # a multi-line prompt ends with an empty line
        screen, _ = term.expect("[5 tokens")
        # the terminal echoes the typed lines at once; then come the "... " prompt, the generated text, the summary
        text = screen.split("b):", 1)[1].split("... ", 1)[1][:-len("[5 tokens")]
        assert text.endswith("\r\n") and len(text) > 2, screen  # the completion, then the summary on its own line

        term.type("/length 2000\n")
        term.expect("length = 2000")
        for attempt in range(3):  # a sample may end (end-of-document) before Ctrl-C lands: then try another prompt
            term.type(f"x = {attempt}\\n\n\n")  # escaped newline accepted
            term.expect("... ")
            streamed = term.expect_output()  # text streams while the generation runs, before any summary
            term.type("\x03")  # Ctrl-C: cancels this generation, keeps the session
            screen, outcome = term.expect("(generation cancelled)", "(prompt cleared)")
            if outcome == "(generation cancelled)":
                assert "tokens, " not in streamed + screen
                break
            assert " tokens, " in screen  # it finished first; the Ctrl-C then only cleared the next prompt
        else:
            raise AssertionError("every 2000-token sample ended before Ctrl-C reached it")
        assert streamed.strip()

        term.type("/length 5000\n")  # beyond the 2048-token context: said, not a silent stop
        term.expect("note: the model's context is 2048 tokens")
        term.type("/length 3\n")
        term.expect("length = 3")
        term.type("y\n\n")
        term.expect("[3 tokens")
        term.expect(">>> ")
        term.type("\x04")  # Ctrl-D at an empty prompt ends the session
        assert term.close() == 0
    finally:
        try:
            os.kill(term.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_two_tensor_parallel_ranks_generate_what_one_process_does(checkpoint, tmp_path):
    """A tp=1 checkpoint resharded on load to tp=2 (torchrun, gloo): same samples, written once by rank 0."""
    cfg, _ = checkpoint
    args = ["deepy.py", "generate.py", cfg, "--prompt", "def f(x):\n", "--maximum-tokens", "16", "--num-samples", "2",
            "--temperature", "0.7"]
    run_tool(*args, "--sample-output-file", str(tmp_path / "one.jsonl"))
    run_tool(*args, "--sample-output-file", str(tmp_path / "two.jsonl"), "--num-procs", "2",
             "--model-parallel-size", "2")
    one = [json.loads(line)["text"] for line in open(tmp_path / "one.jsonl")]
    two = [json.loads(line)["text"] for line in open(tmp_path / "two.jsonl")]
    assert one == two and len(one) == 2


def test_prompt_takes_escapes_and_generation_needs_no_training_keys(checkpoint, tmp_path):
    """The PolyCoder README writes prompts as "def f():\\n    return": \\n and \\t are a newline and a tab. The
    config has no batch keys (as for a converted checkpoint): generation does not need them."""
    cfg, _ = checkpoint
    (tmp_path / "gen.yml").write_text("".join(line for line in open(cfg) if not line.startswith("train_micro")))
    out = tmp_path / "prompt.jsonl"
    run_tool("deepy.py", "generate.py", str(tmp_path / "gen.yml"), "--prompt", "def f():\\n\\treturn",
             "--maximum-tokens", "4", "--sample-output-file", str(out))
    assert [json.loads(line)["context"] for line in open(out)] == ["def f():\n\treturn"]
