"""torch-compile: the compiled model trains to the same losses as the eager one (fp32, no dropout)."""

from megatron_lite.config_loader import load_config
from megatron_lite.training.trainer import Trainer


def losses(config, compile_flag: str, steps: int = 3):
    cfg = load_config([config], ["--torch-compile", compile_flag, "--hidden-dropout", "0", "--attention-dropout", "0",
                                 "--save", ""])
    cfg.log.peak_tflops = 1.0  # skip the CPU peak measurement
    trainer = Trainer(cfg)
    assert (trainer.forward_model is trainer.model) is (compile_flag == "false")
    return [trainer.train_step()["loss"] for _ in range(steps)]


def test_compiled_training_matches_eager(micro_config, tmp_path, monkeypatch):
    # A private inductor cache: its on-disk kernels are not keyed by ATEN_CPU_CAPABILITY, so kernels cached by a
    # native run were reused by an AVX2-restricted one on the same machine (NaN losses, heap corruption).
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    eager, compiled = losses(micro_config, "false"), losses(micro_config, "true")
    assert all(abs(a - b) < 1e-4 for a, b in zip(eager, compiled)), (eager, compiled)
