"""train-time-budget: the run's length is planned from a measured step, the lr schedule shrinks with it, the
measurement leaves weights and random streams untouched, and a resumed run keeps its plan."""

import json

import pytest

from megatron_lite.config import OptimConfig
from megatron_lite.config_loader import load_config
from megatron_lite.training.lr_schedule import LRSchedule
from megatron_lite.training.time_budget import planned_iterations
from megatron_lite.training.trainer import Trainer


def test_planned_iterations_fit_the_budget_within_train_iters():
    assert planned_iterations(300, 2.0, 800) == 150
    assert planned_iterations(300, 0.3, 800) == 800
    assert planned_iterations(1, 5.0, 800) == 1  # always at least one step


def test_schedule_compresses_warmup_and_decay_alike():
    optim = OptimConfig(lr=1.0, min_lr=0.1, warmup=0.1, lr_decay_iters=100, lr_decay_style="linear")
    full, half = LRSchedule(optim), LRSchedule(optim, length_scale=0.5)
    assert (half.decay_iters, half.warmup_iters) == (50, 5)
    assert half(5) == full(10) == 1.0
    assert half(25) == pytest.approx(full(50)) and half(50) == pytest.approx(full(100))


def trainer(config, *overrides):
    return Trainer(load_config([config], ["--peak-tflops", "1", *overrides]))


def test_measuring_the_step_changes_nothing_the_run_computes(micro_config):
    """micro_config has dropout: the budgeted run must draw the same masks and start from the same weights."""
    runs = {}
    for name, budget in (("plain", []), ("budgeted", ["--train-time-budget", "1e6"])):
        run = trainer(micro_config, "--save", "", *budget)  # one after the other: they share torch's global RNG
        runs[name] = [run.train_step()["loss"] for _ in range(3)], run.train_iters
    assert runs["budgeted"] == runs["plain"]  # the same losses; a large budget keeps train-iters (20)
    assert runs["plain"][1] == 20


def test_a_short_budget_plans_fewer_iterations_and_resume_keeps_the_plan(micro_config, tmp_path, capsys):
    run = trainer(micro_config, "--train-time-budget", "1e-6")
    assert run.train_iters == 1 and run.schedule.decay_iters == 1
    assert "train-time-budget 1e-06s" in capsys.readouterr().out
    run.train()
    state = json.loads((tmp_path / "ckpt" / "global_step1" / "trainer_state.json").read_text())
    assert state["iteration"] == 1 and state["planned_iters"] == 1
    resumed = trainer(micro_config, "--train-time-budget", "1e6", "--load", str(tmp_path / "ckpt"))
    assert resumed.train_iters == 1  # planned once, at the start of the run
    assert trainer(micro_config, "--load", str(tmp_path / "ckpt")).train_iters == 20  # no budget: train-iters
