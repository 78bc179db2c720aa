"""precision: auto picks bf16 only where the hardware runs it natively (the CPU probe faked both ways), an
explicit 16-bit format on a CPU that emulates it trains after one warning, and MFU's peak is in that format."""

import os

import pytest
import torch

from megatron_lite import precision
from megatron_lite.config_loader import load_config
from megatron_lite.training import metrics

CPU = torch.device("cpu")


@pytest.fixture
def cpu_speeds(monkeypatch):
    """Fake the CPU probe: set speeds["bf16"] etc. in GFLOP/s; fp32 is 100."""
    speeds = {"fp32": 100.0}
    for module in (precision, metrics):
        monkeypatch.setattr(module, "cpu_matmul_tflops", lambda name: speeds[name] / 1e3)
    monkeypatch.setattr(precision, "cpu_speedup", lambda name: speeds[name] / speeds["fp32"])
    return speeds


@pytest.fixture
def warnings_seen(monkeypatch):
    """The warnings printed through errors.warn_once, forgetting those of earlier tests."""
    from megatron_lite import errors

    monkeypatch.setattr(errors, "_warned", set())
    return errors._warned


def test_auto_takes_bf16_on_a_cpu_with_native_bf16(cpu_speeds, warnings_seen):
    cpu_speeds["bf16"] = 260.0
    chosen = precision.resolve_precision("auto", CPU)
    assert chosen.name == "bf16" and chosen.dtype == torch.bfloat16
    assert "auto" in chosen.reason and "2.6x" in chosen.reason
    assert not warnings_seen


def test_auto_takes_fp32_where_bf16_is_emulated_or_barely_faster(cpu_speeds, warnings_seen):
    cpu_speeds["bf16"] = 2.2  # AVX2 only: ~46x slower
    chosen = precision.resolve_precision("auto", CPU)
    assert chosen.name == "fp32" and "no native bf16" in chosen.reason
    cpu_speeds["bf16"] = 110.0  # faster, but not enough to pay for autocast's casts
    assert precision.resolve_precision("auto", CPU).name == "fp32"
    assert not warnings_seen


def test_explicit_bf16_on_an_emulating_cpu_trains_after_one_warning(cpu_speeds, warnings_seen, capsys):
    cpu_speeds["bf16"] = 2.0
    for _ in range(2):
        assert precision.resolve_precision("bf16", CPU).name == "bf16"
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("warning: precision bf16") and "50x slower than fp32" in lines[0]
    assert "'precision: auto' chooses fp32 here" in lines[0]


def test_explicit_fp16_on_a_cpu_is_measured_too(cpu_speeds, warnings_seen, capsys):
    cpu_speeds["fp16"] = 4.0
    assert precision.resolve_precision("fp16", CPU).name == "fp16"
    assert "precision fp16" in capsys.readouterr().err
    cpu_speeds["bf16"] = 300.0
    assert precision.resolve_precision("bf16", CPU).name == "bf16"
    assert "precision bf16" not in capsys.readouterr().err  # native: nothing to warn about


def test_fp32_needs_no_probe(monkeypatch):
    def probe(name):
        raise AssertionError("probed")

    monkeypatch.setattr(precision, "cpu_speedup", probe)
    assert precision.resolve_precision("fp32", CPU).name == "fp32"


@pytest.mark.parametrize("has_bf16, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_on_a_gpu_follows_its_bf16_support(monkeypatch, has_bf16, expected):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA Faked GPU")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: has_bf16)
    chosen = precision.resolve_precision("auto", torch.device("cuda"))
    assert chosen.name == expected and "NVIDIA Faked GPU" in chosen.reason
    assert precision.resolve_precision("fp16", torch.device("cuda")).name == "fp16"  # explicit is honoured


def test_cpu_probe_measures_each_format_once_per_process():
    precision.cpu_matmul_tflops.cache_clear()
    fp32 = precision.cpu_matmul_tflops("fp32")
    assert fp32 > 0 and precision.cpu_matmul_tflops("fp32") == fp32  # cached: the same number
    speedup = precision.cpu_speedup("bf16")
    assert speedup > 0 and precision.cpu_speedup("bf16") == speedup


def test_mfu_peak_on_cpu_is_measured_in_the_precision_used(cpu_speeds):
    cpu_speeds["bf16"] = 2.0
    assert metrics.peak_tflops(CPU, "bf16") == (0.002, "measured CPU bf16 matmul peak")
    assert metrics.peak_tflops(CPU, "fp32") == (0.1, "measured CPU fp32 matmul peak")
    assert metrics.peak_tflops(CPU, "fp32", override=42) == (42.0, "config peak-tflops")


def write(tmp_path, text):
    path = tmp_path / "c.yml"
    path.write_text("train_micro_batch_size_per_gpu: 1\n" + text)
    return str(path)


@pytest.mark.parametrize("text, expected", [
    ("", "auto"),
    ("precision: bf16\n", "bf16"),
    ("bf16: {enabled: true}\n", "bf16"),
    ("fp16: {enabled: true}\n", "fp16"),
    ("bf16: {enabled: false}\n", "fp32"),  # an explicit "not bf16" is not auto
    ("fp16: {enabled: false}\nbf16: {enabled: true}\n", "bf16"),
    ("bf16: {enabled: true}\nfp16: {enabled: false}\n", "bf16"),
])
def test_config_precision_keys(tmp_path, text, expected):
    assert load_config([write(tmp_path, text)]).precision.precision == expected


def test_shipped_tiny_config_leaves_precision_to_the_hardware():
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    cfg = load_config([os.path.join(repo, "configs", "tiny.yml")])
    assert cfg.precision.precision == "auto" and cfg.train.train_time_budget == 300


def test_inference_precision_auto_is_fp32_on_the_cpu_and_bf16_on_a_gpu_that_has_it(monkeypatch, cpu_speeds):
    cpu_speeds["bf16"] = 300.0  # even where the CPU computes bf16 fast: auto stays exact there
    assert precision.resolve_inference_precision("auto", CPU).name == "fp32"
    assert precision.resolve_inference_precision("bf16", CPU).name == "bf16"  # explicit is honoured
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA Faked GPU")
    for has_bf16, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: has_bf16)
        assert precision.resolve_inference_precision("auto", torch.device("cuda")).name == expected


def test_bf16_inference_logits_and_decoding_match_fp32_within_bf16_rounding():
    """The model under inference-precision bf16 (autocast, fp32 weights) against fp32: logits within bf16's
    rounding; a bf16 generator decodes through the model in bf16 (not the fp32 fast step)."""
    from megatron_lite.config import GenerateConfig
    from megatron_lite.generation.engine import TextGenerator
    from megatron_lite.model.gpt import GPTModel
    from tests.conftest import tiny_model_config

    torch.manual_seed(0)
    model = GPTModel(tiny_model_config(num_layers=2, hidden_size=64, num_attention_heads=4, seq_length=64,
                                       max_position_embeddings=64, padded_vocab_size=128)).eval()
    tokens = torch.randint(0, 128, (2, 48))
    with torch.no_grad():
        exact = model(tokens)
        with precision.autocast(CPU, "bf16"):
            rounded = model(tokens)
    assert rounded.dtype == torch.bfloat16
    assert (rounded.float() - exact).abs().max() <= 0.03 * exact.abs().max()

    class Tokenizer:
        eod = -1  # never produced: every sample runs to its length

    cfg = GenerateConfig(maximum_tokens=8, temperature=0.0)
    fp32 = TextGenerator(model, Tokenizer(), cfg, 64, precision="fp32")
    bf16 = TextGenerator(model, Tokenizer(), cfg, 64, precision="bf16")
    assert fp32.fast is not None and bf16.fast is None
    seen = []
    model.layers[0].attention.query_key_value.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    assert len(bf16.generate_ids(tokens[0, :16].tolist(), 1)[0]) == 8
    assert len(seen) >= 7 and set(seen) == {torch.bfloat16}  # the prompt, then the new tokens, all in bf16
