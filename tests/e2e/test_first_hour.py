"""A GPT-NeoX user's first commands: --help on every entry point, every key documented, GPT-NeoX's -d config
directory, and each config warning printed once per run (deepy.py and the script both read the config)."""

import re

import pytest

from tests.conftest import run_tool


@pytest.mark.parametrize("command", [["train.py"], ["eval.py"], ["generate.py"], ["deepy.py", "train.py", "x.yml"]])
def test_help_on_every_entry_point(command):
    proc = run_tool(*command, "--help", timeout=60)
    assert proc.returncode == 0 and "CONF.yml" in proc.stdout and "--help-keys" in proc.stdout, proc.stdout


def test_help_keys_lists_every_key_with_its_default():
    proc = run_tool("deepy.py", "--help-keys", "precision", timeout=60)
    lines = proc.stdout.splitlines()
    assert lines[0] == "[precision]" and any(line.startswith("  precision (default 'auto'): ") for line in lines)
    assert "train-time-budget (default None)" in run_tool("deepy.py", "--help-keys", timeout=60).stdout
    wrong = run_tool("deepy.py", "--help-keys", "modle", check=False, timeout=60)
    assert wrong.returncode == 2 and "unknown section 'modle'" in wrong.stderr


def test_config_directory_flag_and_warnings_once(micro_config, tmp_path):
    """./deepy.py train.py -d DIR a.yml b.yml, as in GPT-NeoX; its no-op keys warn once each, not once per load."""
    (tmp_path / "neox.yml").write_text("wall_clock_breakdown: true\nsteps_per_print: 10\n")
    proc = run_tool("deepy.py", "train.py", "-d", str(tmp_path), "micro.yml", "neox.yml", "--train-iters", "2",
                    "--eval-interval", "2", "--save", "")
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert sorted(w.split("'")[1] for w in warnings) == ["steps_per_print", "wall_clock_breakdown"], proc.stderr
    assert proc.stdout.startswith("precision: fp32 (set by the config)")  # the run's first line
    assert re.search(r"^data: train \d+ documents, \d+ tokens; valid \d+ documents, \d+ tokens$", proc.stdout, re.M)
    missing = run_tool("deepy.py", "train.py", "-d", str(tmp_path / "nowhere"), "micro.yml", check=False, timeout=60)
    assert missing.returncode == 2 and "needs an existing directory" in missing.stderr


def test_resume_names_the_checkpoint_and_each_changed_key(micro_config, tmp_path):
    run_tool("deepy.py", "train.py", micro_config, "--train-iters", "2", "--eval-interval", "2")
    proc = run_tool("deepy.py", "train.py", micro_config, "--train-iters", "3", "--eval-interval", "3",
                    "--load", str(tmp_path / "ckpt"))
    assert f"resumed from {tmp_path / 'ckpt' / 'global_step2'}: iteration 2, 16 samples consumed" in proc.stdout
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    changed = {w.split("'")[1]: w for w in warnings}
    assert set(changed) == {"train-iters", "lr-decay-iters", "eval-interval", "load"}, proc.stderr
    assert "is 3 now but was 2" in changed["train-iters"] and "the lr schedule changes" in changed["train-iters"]
    assert "lr schedule" not in changed["eval-interval"]
