"""fp16 with dynamic loss scaling in the trainer: injected inf/nan gradients skip steps and lower the scale as
hysteresis says, the scale grows back after the window, a run of overflows stops clearly, fp16 training works."""

import math
import os

import pytest
import torch

from megatron_lite.config_loader import load_config
from megatron_lite.errors import UserError
from megatron_lite.training.trainer import Trainer

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def poisoned_trainer(config, poison: set, *overrides) -> Trainer:
    """A Trainer whose output-layer gradient is NaN on the iterations (1-based) listed in poison."""
    cfg = load_config([config], ["--precision", "fp16", "--hidden-dropout", "0", "--attention-dropout", "0",
                                 *overrides])
    cfg.log.peak_tflops = 1.0  # skip the CPU peak measurement
    trainer = Trainer(cfg)
    trainer.model.embed_out.weight.register_hook(
        lambda g: g * float("nan") if trainer.state.iteration + 1 in poison else g)
    return trainer


def weights(trainer):
    return [p.detach().clone() for p in trainer.model.parameters()]


def test_overflow_skips_the_step_and_the_scale_follows_hysteresis_and_window(micro_config):
    trainer = poisoned_trainer(micro_config, {1, 2, 6}, "--initial-scale-power", "8", "--hysteresis", "2",
                               "--loss-scale-window", "3", "--train-iters", "10")
    before = weights(trainer)
    scales = []
    for _ in range(7):
        step = trainer.train_step()
        scales.append(step["loss_scale"])
        if trainer.state.iteration == 2:  # two skipped steps: nothing moved, optimizer state untouched
            assert all(torch.equal(a, b) for a, b in zip(before, weights(trainer)))
            assert not trainer.optimizer.state
            assert math.isnan(step["grad_norm"])
    # DeepSpeed's arithmetic: 1: the first overflow spends the hysteresis; 2: halves; 3-5: clean, not yet a whole
    # window after the overflow; 6: the hysteresis was not refilled (no doubling yet), so it halves again.
    assert scales == [256, 128, 128, 128, 128, 64, 64]
    assert trainer.state.skipped_iters == 3
    assert not all(torch.equal(a, b) for a, b in zip(before, weights(trainer)))


def test_a_run_of_overflows_stops_with_a_clear_message(micro_config):
    trainer = poisoned_trainer(micro_config, set(range(1, 100)), "--max-consecutive-overflows", "4",
                               "--train-iters", "20", "--save", "")
    with pytest.raises(UserError, match=r"4 steps in a row had inf/nan gradients .*max_consecutive_overflows"):
        trainer.train()
    assert trainer.state.iteration == 3  # the 4th overflowed step raised before counting


def test_fp16_training_on_the_tiny_config_does_not_diverge(tmp_path, small_corpus):
    """configs/tiny.yml's recipe in fp16 (dynamic scaling from 2^16): losses stay finite and fall. Its width is
    shrunk: CPUs emulate fp16 matmuls, ~40x slower than fp32."""
    text = open(os.path.join(REPO, "configs", "tiny.yml")).read()
    assert "precision: auto" in text
    config = tmp_path / "tiny_fp16.yml"
    config.write_text(text.replace("precision: auto", "fp16: {enabled: true, loss_scale: 0, "
                                   "initial_scale_power: 16, hysteresis: 2, loss_scale_window: 10}"))
    cfg = load_config([str(config)], ["--data-path", small_corpus["prefix"], "--tokenizer-type", "HFTokenizer",
                                      "--vocab-file",
                                      str(small_corpus["tokenizer"]), "--train-iters", "40", "--seq-length", "64",
                                      "--hidden-size", "128", "--num-layers", "2",
                                      "--train-micro-batch-size-per-gpu", "4", "--save-interval", "1000"])
    cfg.log.peak_tflops = 1.0
    assert cfg.precision.precision == "fp16"
    trainer = Trainer(cfg)
    losses = [trainer.train_step()["loss"] for _ in range(40)]
    assert all(math.isfinite(x) for x in losses)
    assert trainer.state.skipped_iters < 10
    assert sum(losses[-5:]) / 5 < losses[0] - 0.75, losses
