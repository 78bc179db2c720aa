"""LR schedules, loss scaling and checkpoint save/load (atomicity under a kill, no pickle)."""

import math
import os
import random
import subprocess
import sys
import textwrap

import pytest
import torch

from megatron_lite.config import OptimConfig, PrecisionConfig
from megatron_lite.errors import UserError
from megatron_lite.training import checkpoint as C
from megatron_lite.training.loss_scaler import LossScaler
from megatron_lite.training.lr_schedule import LRSchedule
from megatron_lite.training.optim import build_optimizer, clip_grad_norm


def schedule(style, **kw):
    return LRSchedule(OptimConfig(lr=1.0, min_lr=0.1, lr_decay_style=style, lr_decay_iters=110, warmup_iters=10, **kw))


def test_warmup_is_linear_from_zero():
    s = schedule("cosine")
    assert [s(i) for i in (0, 5, 10)] == [0.0, 0.5, 1.0]


def test_decay_follows_gpt_neox_annealing_lr():
    """Values worked by hand from GPT-NeoX's AnnealingLR.get_lr (decay 110, warmup 10, lr 1, min_lr 0.1): progress
    is (n - warmup) over the whole decay span and stops at n = decay - warmup; min_lr is a floor, not an offset."""
    assert schedule("linear")(60) == pytest.approx(60 / 110)
    assert schedule("linear")(500) == pytest.approx(20 / 110)  # stops at (110 - 90) / 110, above the floor
    assert schedule("cosine")(60) == pytest.approx(0.5 * (math.cos(math.pi * 50 / 110) + 1))
    assert schedule("cosine")(500) == pytest.approx(0.1)  # 0.079 floored at min_lr
    assert schedule("exponential")(60) == pytest.approx(math.exp(-0.693 * 50 / 110))
    assert schedule("constant")(100) == 1.0
    assert schedule("inverse_square_root")(40) == pytest.approx(math.sqrt(10 / 40))


def test_warmup_fraction_is_not_rounded():
    s = LRSchedule(OptimConfig(lr=1.0, warmup=0.01, lr_decay_iters=250))  # GPT-NeoX: warmup_iter = 2.5
    assert s.warmup_iters == 2.5 and s(1) == pytest.approx(0.4) and s(2) == pytest.approx(0.8)


def test_dynamic_loss_scale_matches_deepspeed_on_a_random_overflow_sequence(monkeypatch):
    """The same scale after every step as DeepSpeed's DynamicLossScaler, on 3000 steps of runs of overflows and
    clean stretches (e.g. three overflows in a row from 256 go 256 -> 256 -> 128 -> 64 with hysteresis 2)."""
    from deepspeed.runtime.fp16 import loss_scaler as ds

    monkeypatch.setattr(ds.dist, "get_rank", lambda: 0)  # it logs from rank 0 only
    rng = random.Random(0)
    for window, hysteresis, consecutive in ((4, 2, False), (7, 3, False), (5, 2, True), (3, 1, False)):
        ours = LossScaler(PrecisionConfig(precision="fp16", loss_scale=0, initial_scale_power=8,
                                          loss_scale_window=window, hysteresis=hysteresis, min_loss_scale=2,
                                          consecutive_hysteresis=consecutive))
        theirs = ds.DynamicLossScaler(init_scale=256, scale_window=window, min_scale=2, delayed_shift=hysteresis,
                                      consecutive_hysteresis=consecutive, raise_error_at_min_scale=False)
        overflow = False
        for step in range(3000):
            overflow = rng.random() < (0.6 if overflow else 0.15)  # overflows come in runs
            ours.update(overflow)
            theirs.update_scale(overflow)
            assert ours.scale == theirs.cur_scale, (window, hysteresis, consecutive, step)
        restored = LossScaler(PrecisionConfig(precision="fp16"))
        restored.load_state_dict(ours.state_dict())
        assert restored.state_dict() == ours.state_dict()
    three = LossScaler(PrecisionConfig(precision="fp16", initial_scale_power=8))
    scales = []
    for _ in range(3):
        three.update(True)
        scales.append(three.scale)
    assert scales == [256, 128, 64]


def test_static_and_fp32_scales():
    assert LossScaler(PrecisionConfig(precision="fp16", loss_scale=128)).scale == 128
    sc = LossScaler(PrecisionConfig(precision="fp32"))
    sc.update(True)
    assert sc.scale == 1.0


def test_no_weight_decay_on_biases_and_norms():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    opt = build_optimizer(model, OptimConfig(weight_decay=0.1))
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == {id(model[0].weight)}


def test_clip_grad_norm_scales_large_gradients_to_the_limit():
    """Returns the norm before clipping; afterwards the global norm is the limit and each direction is kept."""
    params = [torch.nn.Parameter(torch.zeros(shape)) for shape in ((4,), (2, 2), (3,))]
    params[0].grad = torch.full((4,), 30.0)  # norm 60
    params[1].grad = torch.tensor([[80.0, 0.0], [0.0, 0.0]])  # norm 80; params[2] has no gradient
    before = [p.grad.clone() for p in params[:2]]
    assert clip_grad_norm(params, 1.0) == pytest.approx(100.0)
    after = torch.cat([p.grad.flatten() for p in params[:2]])
    assert after.norm().item() == pytest.approx(1.0, rel=1e-5)
    for p, g in zip(params, before):
        assert torch.allclose(p.grad, g / 100.0, rtol=1e-5)
    assert params[2].grad is None
    small = [p.grad.clone() for p in params[:2]]  # now within the limit: left as they are
    assert clip_grad_norm(params, 2.0) == pytest.approx(1.0, rel=1e-5)
    assert all(torch.equal(p.grad, g) for p, g in zip(params, small))


def _trained(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8))
    opt = build_optimizer(model, OptimConfig())
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    return model, opt


def test_checkpoint_round_trip_is_exact(tmp_path):
    model, opt = _trained()
    state = C.TrainerState(iteration=7, consumed_train_samples=70, skipped_iters=1, loss_scaler={"scale": 4.0})
    path = C.save_checkpoint(str(tmp_path), model, opt, state, "lr: 0.1\n")
    assert open(tmp_path / "latest").read().strip() == "global_step7"
    assert sorted(os.listdir(path)) == sorted(
        ["model_mp_rank_00.safetensors", "optim_mp_rank_00.safetensors", "optim_mp_rank_00.json",
         "rng_rank_00.safetensors", "trainer_state.json", "config.yml"])
    expected_rand = torch.rand(3)
    model2, opt2 = _trained(seed=1)
    loaded = C.load_checkpoint(str(tmp_path), model2, opt2)
    assert loaded == state
    assert torch.equal(torch.rand(3), expected_rand)  # RNG restored to the moment of saving
    for a, b in zip(model.state_dict().values(), model2.state_dict().values()):
        assert torch.equal(a, b)
    s1, s2 = opt.state_dict(), opt2.state_dict()
    for k in s1["state"]:
        for name in s1["state"][k]:
            assert torch.equal(s1["state"][k][name], s2["state"][k][name])


def test_keep_last_n_prunes_old_checkpoints(tmp_path):
    model, opt = _trained()
    for it in (1, 2, 3):
        C.save_checkpoint(str(tmp_path), model, opt, C.TrainerState(iteration=it), "", keep_last=2)
    assert sorted(d for d in os.listdir(tmp_path) if d.startswith("global")) == ["global_step2", "global_step3"]


KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, torch
    from megatron_lite.training import checkpoint as C
    from megatron_lite.training.optim import build_optimizer
    from megatron_lite.config import OptimConfig
    save_dir, kill_point = sys.argv[1], sys.argv[2]
    model = torch.nn.Linear(4, 4)
    opt = build_optimizer(model, OptimConfig())
    model(torch.randn(2, 4)).sum().backward(); opt.step()
    C.save_checkpoint(save_dir, model, opt, C.TrainerState(iteration=1), "")
    die = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
    if kill_point == "mid_files":
        original = C._write_tensors
        C._write_tensors = lambda path, t: (original(path, t), die())
    else:  # after the directory is in place, before `latest` moves
        C.os.replace = die
    C.save_checkpoint(save_dir, model, opt, C.TrainerState(iteration=2), "")
    """
)


@pytest.mark.parametrize("kill_point", ["mid_files", "before_latest"])
def test_killed_save_leaves_latest_on_previous_checkpoint(tmp_path, kill_point):
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(tmp_path), kill_point], timeout=120)
    assert proc.returncode == -9
    assert open(tmp_path / "latest").read().strip() == "global_step1"
    model = torch.nn.Linear(4, 4)
    opt = build_optimizer(model, OptimConfig())
    assert C.load_checkpoint(str(tmp_path), model, opt).iteration == 1
    # The next save clears the leftovers of the killed one.
    C.save_checkpoint(str(tmp_path), model, opt, C.TrainerState(iteration=3), "")
    assert not [d for d in os.listdir(tmp_path) if d.startswith(".tmp")]


def test_loading_refuses_mismatched_shapes_and_missing_checkpoints(tmp_path):
    model, opt = _trained()
    C.save_checkpoint(str(tmp_path), model, opt, C.TrainerState(iteration=1), "")
    other = torch.nn.Sequential(torch.nn.Linear(4, 9), torch.nn.LayerNorm(9))
    with pytest.raises(UserError, match="has shape"):
        C.load_checkpoint(str(tmp_path), other)
    with pytest.raises(UserError, match="no checkpoint found"):
        C.resolve_checkpoint(str(tmp_path / "nowhere"))
    C.save_checkpoint(str(tmp_path / "weights"), model, None, C.TrainerState(iteration=1), "")
    with pytest.raises(UserError, match="holds no optimizer state.*finetune: true"):
        C.load_checkpoint(str(tmp_path / "weights"), model, opt)
    (tmp_path / "latest").write_text("global_step99\n")
    with pytest.raises(UserError, match="not a checkpoint directory"):
        C.latest_checkpoint(str(tmp_path))


def test_a_training_step_syncs_with_the_host_once_whatever_the_accumulation(micro_config, monkeypatch):
    """No .item() (a host sync on a GPU) per micro batch or in clipping: the step's one is the gradient norm's."""
    from megatron_lite.config_loader import load_config
    from megatron_lite.training.trainer import Trainer

    counts = {}
    for gas in (1, 4):
        cfg = load_config([micro_config], ["--gradient-accumulation-steps", str(gas), "--gradient-clipping", "1.0",
                                           "--peak-tflops", "1", "--train-iters", "3"])
        trainer = Trainer(cfg)
        trainer.train_step()  # warm-up
        calls, item = [], torch.Tensor.item
        monkeypatch.setattr(torch.Tensor, "item", lambda self: calls.append(1) or item(self))
        trainer.train_step()
        monkeypatch.undo()
        counts[gas] = len(calls)
    assert counts[4] == counts[1] <= 2  # the gradient norm, and the logged loss
