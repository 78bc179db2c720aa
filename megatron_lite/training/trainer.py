"""The training loop: build everything from the config, step, log, validate, checkpoint."""

import contextlib
import json
import math
import os
import random
import tempfile
import time

import numpy as np
import torch
import yaml
from tqdm import tqdm

from megatron_lite.config import Config
from megatron_lite.config_loader import dump_config
from megatron_lite.data.batches import get_batch
from megatron_lite.data.blended_dataset import check_token_ids, datasets_from_config
from megatron_lite.errors import UserError, warn_once
from megatron_lite.model.gpt import GPTModel
from megatron_lite.model.size import count_parameters, flops_per_token
from megatron_lite.parallel import state as parallel_state
from megatron_lite.parallel import zero
from megatron_lite.parallel.data_parallel import GradReducer
from megatron_lite.parallel.random import TRACKER
from megatron_lite.precision import default_device, resolve_precision
from megatron_lite.training.checkpoint import (TrainerState, check_same_model, latest_checkpoint, load_checkpoint,
                                               save_checkpoint, saved_config)
from megatron_lite.training.loss import dp_mean, lm_loss
from megatron_lite.training.loss_scaler import LossScaler
from megatron_lite.training.lr_schedule import LRSchedule
from megatron_lite.training.memory import check_fits
from megatron_lite.training.metrics import Throughput, peak_tflops
from megatron_lite.training.optim import build_optimizer, clip_grad_norm
from megatron_lite.training.time_budget import planned_iterations, seconds_per_step
from megatron_lite.training.vocab import build_tokenizer_for
from megatron_lite.training.wandb_logger import WandbLogger, wandb_wanted

# Keys whose change on resume re-shapes the learning-rate schedule mid-run.
SCHEDULE_KEYS = {"train_iters", "lr", "min_lr", "lr_decay_style", "lr_decay_iters", "warmup", "warmup_iters",
                 "train_time_budget"}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Trainer:
    """Owns the model, optimizer, schedule, data and loggers for one training run."""

    def __init__(self, cfg: Config):
        self.par = parallel_state.initialize(cfg.parallel)
        self.cfg, self.device = cfg, default_device()
        self.is_main = self.par.rank == 0  # only rank 0 logs and writes shared files
        resolved = resolve_precision(cfg.precision.precision, self.device)
        self.precision = resolved.name  # fp32 | bf16 | fp16: what this run computes in
        self.say(f"precision: {resolved.name} ({resolved.reason})")
        t = cfg.train
        if t.save:
            _check_writable(t.save, "save")
        seed_everything(t.seed)
        self.tokenizer = build_tokenizer_for(cfg)
        self.num_params = count_parameters(cfg.model)
        check_fits(cfg, self.num_params, self.device, self.precision)
        self.train_data, self.valid_data, _ = datasets_from_config(
            cfg.data, cfg.model.seq_length,
            num_samples=(t.train_iters * t.train_batch_size, t.eval_iters * t.train_batch_size, 0),
            seed=t.seed,
        )
        if self.train_data is None:
            raise UserError(f"split '{cfg.data.split}' leaves no training data (key 'split')")
        sizes = {name: ds.split_size() for name, ds in (("train", self.train_data), ("valid", self.valid_data))
                 if ds is not None}
        self.say("data: " + "; ".join(f"{name} {docs} documents, {tokens} tokens"
                                      for name, (docs, tokens) in sizes.items()))
        check_token_ids(cfg.data, self.tokenizer.vocab_size, cfg.data.vocab_file)
        for key, folder in (("load", t.load), ("save", t.save)):  # before anything is loaded or written
            ckpt = latest_checkpoint(folder) if folder else None
            if ckpt:
                check_same_model(ckpt, cfg.model, key)
        self.model = GPTModel(cfg.model).to(self.device)
        # The compiled wrapper shares the model's parameters; saving and loading go through self.model.
        self.forward_model = torch.compile(self.model) if t.torch_compile else self.model
        step_s = self._measure_step() if t.train_time_budget else None
        TRACKER.seed(t.seed)  # after init, which must be equal on every rank; dropout streams differ from here
        use_zero = cfg.optim.zero_stage > 0 and self.par.dp_size > 1  # DeepSpeed then reduces the gradients
        self.reducer = GradReducer(self.model.parameters(), self.par.dp_group, self.par.dp_size,
                                   cfg.parallel.ddp_bucket_mb) if self.par.dp_size > 1 and not use_zero else None
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.scaler = LossScaler(cfg.precision)
        self.overflows_in_a_row = 0
        self.state = TrainerState()
        if t.load:
            self.state = load_checkpoint(t.load, self.model, self.optimizer, self.par, weights_only=t.finetune)
            if self.state.loss_scaler:
                self.scaler.load_state_dict(self.state.loss_scaler)
            if self.state.iteration:
                self._report_resume(latest_checkpoint(t.load))
        self.engine = self._zero_engine() if use_zero else None
        if step_s is not None:
            self._plan_length(step_s)
        else:
            self.state.planned_iters = None
        self.train_iters = self.state.planned_iters or t.train_iters  # this run's length
        self.schedule = LRSchedule(cfg.optim, length_scale=self.train_iters / t.train_iters)
        self.last_saved = self.state.iteration if t.load and self.state.iteration else None
        peak, self.peak_source = peak_tflops(self.device, self.precision, cfg.log.peak_tflops)
        self.throughput = Throughput(flops_per_token(cfg.model, cfg.model.seq_length), peak, self.par.world_size)
        self.tb = _tensorboard(cfg.log.tensorboard_dir) if self.is_main else None
        self.wandb = WandbLogger(cfg.log, cfg.to_flat_dict(), cfg.log.log_dir) \
            if self.is_main and wandb_wanted(cfg.log) else None
        self.metrics_file = os.path.join(cfg.log.log_dir, "metrics.jsonl") if cfg.log.log_dir and self.is_main else None
        if self.metrics_file:
            _check_writable(cfg.log.log_dir, "log-dir")

    def say(self, message: str) -> None:
        if self.is_main:
            tqdm.write(message)

    def _measure_step(self) -> float:
        """Seconds of forward and backward of one step's micro batches; weights and RNG are left as they were."""
        micro, gas = self.cfg.train.train_micro_batch_size_per_gpu, self.cfg.train.gradient_accumulation_steps
        tokens = get_batch(self.train_data, 0, micro, self.device)

        def step():
            for _ in range(gas):
                lm_loss(self.forward_model, tokens, self.device, self.precision,
                        self.cfg.model.cross_entropy_loss_fusion).backward()
            self.model.zero_grad(set_to_none=True)

        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            return seconds_per_step(step)

    def _plan_length(self, step_s: float) -> None:
        """Fix the run's length from the measured speed, once: a resumed run keeps its checkpoint's plan."""
        t = self.cfg.train
        if self.state.planned_iters is None:
            self.state.planned_iters = planned_iterations(t.train_time_budget, step_s, t.train_iters)
        self.say(f"train-time-budget {t.train_time_budget:g}s: a step measured {step_s:.3f}s here, so this run "
                 f"trains {self.state.planned_iters} of train-iters {t.train_iters} iterations (lr schedule scaled "
                 "to match)")

    def _report_resume(self, ckpt: str) -> None:
        """One line naming where the run continues from, and one warning per config key that changed since."""
        self.say(f"resumed from {ckpt}: iteration {self.state.iteration}, "
                 f"{self.state.consumed_train_samples} samples consumed")
        saved, now = saved_config(ckpt), yaml.safe_load(dump_config(self.cfg))
        for key in sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k)):
            effect = "; the lr schedule changes from here" if key in SCHEDULE_KEYS else ""
            warn_once(f"config key '{key.replace('_', '-')}' is {now.get(key)!r} now but was {saved.get(key)!r} "
                      f"when {ckpt} was saved{effect}")

    def _zero_engine(self):
        """DeepSpeed takes over gradient reduction, clipping and the optimizer step (ZeRO stages 1-3)."""
        cfg = self.cfg
        engine, self.zero_groups = zero.initialize(self.model, self.optimizer, cfg.optim, cfg.train)
        offload = engine.zero_offload_optimizer()
        self.say(f"ZeRO stage {cfg.optim.zero_stage} over {self.par.dp_size} data-parallel ranks (DeepSpeed)"
                 + (f", optimizer state and step offloaded to {offload.device}" if offload else ""))
        return engine

    def _zero_step(self, first: int) -> tuple:
        """Micro batches through the DeepSpeed engine: (summed loss, gradient norm before clipping, overflow).

        In fp16 DeepSpeed multiplies the loss by our scale (its external loss scale), unscales and clips its
        fp32 partitions and skips the step when the norm is not finite; our scaler then updates, as without ZeRO."""
        micro, gas = self.cfg.train.train_micro_batch_size_per_gpu, self.cfg.train.gradient_accumulation_steps
        self.engine.train()
        if self.precision == "fp16":
            self.engine.optimizer.override_loss_scale(self.scaler.scale)
        total = torch.zeros((), device=self.device)
        for j in range(gas):
            tokens = get_batch(self.train_data, first + j * micro, micro, self.device)
            loss = lm_loss(self.engine, tokens, self.device, self.precision,
                           self.cfg.model.cross_entropy_loss_fusion)
            self.engine.backward(loss)  # scaled by 1/gas (and the loss scale) inside; reduces at the boundary
            self.engine.step()  # steps (and clips) only at the boundary
            total += loss.detach()
        overflow = bool(getattr(self.engine.optimizer, "overflow", False))  # agreed over all ranks by DeepSpeed
        return total, float(self.engine.get_global_grad_norm()), overflow

    def train_step(self) -> dict:
        """One optimizer step over gradient_accumulation_steps micro batches."""
        t, precision = self.cfg.train, self.precision
        lr = self.schedule(self.state.iteration - self.state.skipped_iters)  # steps applied so far, as GPT-NeoX
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        # This data-parallel rank's contiguous slice of the global batch.
        first = self.state.consumed_train_samples + self.par.dp_rank * t.train_micro_batch_size_per_gpu * \
            t.gradient_accumulation_steps
        if self.engine:
            total, grad_norm, overflow = self._zero_step(first)
            self._record_overflow(overflow)
            return self._finish_step(total, lr, grad_norm)
        self.model.train()
        if self.reducer:
            self.reducer.zero_grad()  # gradients are views of its all-reduce buffers
        else:
            self.optimizer.zero_grad(set_to_none=True)
        micro, gas = t.train_micro_batch_size_per_gpu, t.gradient_accumulation_steps
        total = torch.zeros((), device=self.device)
        for j in range(gas):
            if self.reducer:
                self.reducer.set_sync(j == gas - 1)  # all-reduce during the last micro batch's backward
            tokens = get_batch(self.train_data, first + j * micro, micro, self.device)
            loss = lm_loss(self.forward_model, tokens, self.device, precision,
                           self.cfg.model.cross_entropy_loss_fusion)
            (loss * (self.scaler.scale / gas)).backward()
            total += loss.detach()
        if self.reducer:
            self.reducer.finish()
        params = [p for p in self.model.parameters() if p.grad is not None]
        if self.scaler.scale != 1.0:
            torch._foreach_mul_([p.grad for p in params], 1.0 / self.scaler.scale)
        clip = self.cfg.optim.gradient_clipping or math.inf
        grad_norm = clip_grad_norm(params, clip, self.par.tp_group if self.par.tp_size > 1 else None)
        overflow = not math.isfinite(grad_norm)  # reduced over tp ranks; dp ranks hold equal gradients already
        if not overflow:
            self.optimizer.step()
        self._record_overflow(overflow)
        return self._finish_step(total, lr, grad_norm)

    def _record_overflow(self, overflow: bool) -> None:
        """Count a skipped step, update the loss scale, and stop with a clear message once
        max_consecutive_overflows steps in a row were skipped."""
        self.state.skipped_iters += overflow
        self.scaler.update(overflow)
        self.overflows_in_a_row = self.overflows_in_a_row + 1 if overflow else 0
        limit = self.cfg.precision.max_consecutive_overflows
        if limit and self.overflows_in_a_row >= limit:
            raise UserError(
                f"training stopped at iteration {self.state.iteration + 1}: {self.overflows_in_a_row} steps in a row "
                f"had inf/nan gradients (loss scale now {self.scaler.scale:g}; key 'max_consecutive_overflows'); "
                "lower the learning rate, use bf16, or resume from the last checkpoint")

    def _finish_step(self, total: torch.Tensor, lr: float, grad_norm: float) -> dict:
        t = self.cfg.train
        self.state.iteration += 1
        self.state.consumed_train_samples += t.train_batch_size
        self.throughput.add(t.train_batch_size * self.cfg.model.seq_length)
        loss = dp_mean(total / t.gradient_accumulation_steps, self.par).item()
        return {"loss": loss, "lr": lr, "grad_norm": grad_norm, "loss_scale": self.scaler.scale}

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Mean loss and perplexity over the first eval_iters global batches of the validation split."""
        t = self.cfg.train
        if self.valid_data is None:
            return {}
        self.model.eval()
        micro, dp = t.train_micro_batch_size_per_gpu, self.par.dp_size
        starts = range(0, t.eval_iters * t.train_batch_size, micro)[self.par.dp_rank::dp]  # equal share per dp rank
        losses = [lm_loss(self.forward_model, get_batch(self.valid_data, start, micro, self.device), self.device,
                          self.precision) for start in starts]
        loss = dp_mean(torch.stack(losses).mean(), self.par).item()
        return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0))}

    def save(self) -> None:
        t = self.cfg.train
        if not t.save or self.last_saved == self.state.iteration:
            return
        self.state.loss_scaler = self.scaler.state_dict()
        # Under ZeRO each rank holds part of the optimizer state: gathered, it is saved as without ZeRO.
        optimizer = zero.optimizer_state_dict(self.engine, self.zero_groups) if self.engine else self.optimizer
        with zero.full_parameters(self.engine, self.cfg.optim.zero_stage) if self.engine else contextlib.nullcontext():
            save_checkpoint(t.save, self.model, optimizer, self.state,
                            dump_config(self.cfg), keep_last=t.keep_last_n_checkpoints, par=self.par)
        self.last_saved = self.state.iteration

    def log(self, record: dict) -> None:
        if self.metrics_file:
            with open(self.metrics_file, "a") as f:
                f.write(json.dumps(record) + "\n")
        if self.wandb:
            self.wandb.log(record)
        if self.tb:
            for key, value in record.items():
                if key != "iteration":
                    self.tb.add_scalar(f"train/{key}" if not key.startswith("val") else f"valid/{key}",
                                       value, record["iteration"])

    def train(self) -> dict:
        """Run to train_iters (or its train-time-budget plan, or exit_interval); returns the last validation metrics."""
        cfg, t = self.cfg, self.cfg.train
        self.say(
            f"model: {self.num_params / 1e6:.2f}M parameters, {cfg.model.num_layers} layers x "
            f"{cfg.model.hidden_size} hidden x {cfg.model.num_attention_heads} heads, vocab "
            f"{cfg.model.padded_vocab_size}; {self.precision} on {self.device}; global batch "
            f"{t.train_batch_size} x {cfg.model.seq_length} tokens; MFU per device vs "
            f"{self.throughput.peak:.2f} TFLOP/s ({self.peak_source}); {self.par.world_size} process(es): tensor "
            f"parallel {self.par.tp_size} x data parallel {self.par.dp_size}"
        )
        bar = tqdm(total=self.train_iters, initial=self.state.iteration, desc="train", unit="it",
                   dynamic_ncols=True, disable=None if self.is_main else True)
        last_eval, started, first_iter = {}, time.perf_counter(), self.state.iteration
        self.throughput.report()  # start the clock here, not at construction
        while self.state.iteration < self.train_iters:
            step = self.train_step()
            it = self.state.iteration
            bar.update(1)
            record = {"iteration": it, **step}
            if it % cfg.log.log_interval == 0 or it == self.train_iters:
                record.update(self.throughput.report())
                eta = (time.perf_counter() - started) / (it - first_iter) * (self.train_iters - it)
                self.say(
                    f"iter {it}/{self.train_iters} | loss {step['loss']:.4f} | lr {step['lr']:.3e} | "
                    f"grad norm {step['grad_norm']:.3f} | loss scale {step['loss_scale']:g} | "
                    f"tokens/s {record['tokens_per_s']:.0f} | MFU {100 * record['mfu']:.2f}% | "
                    f"skipped {self.state.skipped_iters} | ETA {eta:.0f}s"
                )
            if it % t.eval_interval == 0 or it == self.train_iters:
                last_eval = self.evaluate()
                record.update(last_eval)
                if last_eval:
                    self.say(f"validation at iter {it} | loss {last_eval['val_loss']:.4f} | "
                             f"perplexity {last_eval['val_ppl']:.3f}")
            self.log(record)
            if t.save_interval and it % t.save_interval == 0:
                self.save()
            if t.exit_interval and it % t.exit_interval == 0 and it < self.train_iters:
                self.say(f"exit-interval {t.exit_interval} reached at iteration {it}")
                break
        bar.close()
        self.save()
        if not last_eval:
            last_eval = self.evaluate()
        if last_eval:
            self.say(f"final validation loss {last_eval['val_loss']:.4f} | perplexity {last_eval['val_ppl']:.3f} "
                     f"| {time.perf_counter() - started:.0f}s")
        if self.tb:
            self.tb.close()
        if self.wandb:
            self.wandb.finish()
        return last_eval


def _check_writable(path: str, key: str) -> None:
    """Fail before training, not after it, when an output directory cannot be written."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create directory '{path}' (key '{key}'): {e.strerror}") from None
    try:  # a real probe: os.access says yes to root even on read-only mounts
        tempfile.TemporaryFile(dir=path).close()
    except OSError as e:
        raise UserError(f"directory '{path}' (key '{key}') is not writable: {e.strerror}") from None


def _tensorboard(log_dir):
    if not log_dir:
        return None
    _check_writable(log_dir, "tensorboard-dir")
    from torch.utils.tensorboard import SummaryWriter  # imported lazily: it is slow to import

    return SummaryWriter(log_dir)


def pretrain(cfg: Config) -> dict:
    try:
        return Trainer(cfg).train()
    finally:
        parallel_state.destroy()
