"""convert_checkpoint.py and generate.py / eval.py on Hugging Face directories, driven from the command line."""

import os
import shutil

import pytest
import torch
import transformers
from safetensors.torch import load_file

from megatron_lite.config_loader import load_config
from tests.conftest import run_tool
from tests.unit.test_interop_neox import WritesMarker, known_model, write_neox_checkpoint


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, small_corpus):
    """A randomly initialised transformers GPTNeoX saved with save_pretrained, plus the small corpus tokenizer."""
    out = tmp_path_factory.mktemp("interop") / "hf"
    cfg = transformers.GPTNeoXConfig(
        vocab_size=1024, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
        max_position_embeddings=128, use_parallel_residual=False, tie_word_embeddings=False, eos_token_id=0,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5})
    torch.manual_seed(0)
    model = transformers.GPTNeoXForCausalLM(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(str(out))
    shutil.copy(small_corpus["tokenizer"], out / "tokenizer.json")
    return out


def weights_of(ckpt):
    return load_file(os.path.join(ckpt, "model_mp_rank_00.safetensors"))


def test_round_trip_through_every_converter_is_bitwise(hf_dir, tmp_path):
    run_tool("tools/convert_checkpoint.py", "from-hf", "--input", str(hf_dir), "--output", str(tmp_path / "ours"))
    run_tool("tools/convert_checkpoint.py", "reshard", "--load", str(tmp_path / "ours"), "--tp", "2",
             "--output", str(tmp_path / "tp2"))
    tp2 = tmp_path / "tp2" / "global_step0"
    assert sorted(os.listdir(tp2)) == ["config.yml", "model_mp_rank_00.safetensors", "model_mp_rank_01.safetensors",
                                       "trainer_state.json"]
    assert load_config([str(tp2 / "config.yml")], env={"WORLD_SIZE": "2"}).parallel.model_parallel_size == 2
    run_tool("tools/convert_checkpoint.py", "to-hf", "--load", str(tp2), "--output", str(tmp_path / "hf2"))
    run_tool("tools/convert_checkpoint.py", "from-hf", "--input", str(tmp_path / "hf2"), "--output", str(tmp_path / "back"))
    first, last = weights_of(tmp_path / "ours" / "global_step0"), weights_of(tmp_path / "back" / "global_step0")
    assert set(first) == set(last) and all(torch.equal(first[k], last[k]) for k in first)
    hf_in = load_file(str(hf_dir / "model.safetensors"))
    hf_out = load_file(str(tmp_path / "hf2" / "model.safetensors"))
    assert set(hf_in) == set(hf_out) and all(torch.equal(hf_in[k], hf_out[k]) for k in hf_in)


def test_generate_and_eval_accept_a_hugging_face_directory(hf_dir, tmp_path, small_corpus):
    """The HF directory and its converted checkpoint give the same greedy text and the same perplexity."""
    run_tool("tools/convert_checkpoint.py", "from-hf", "--input", str(hf_dir), "--output", str(tmp_path / "ours"))
    (tmp_path / "run.yml").write_text("train_micro_batch_size_per_gpu: 2\n")  # the HF directory brings the rest
    common = ["--seq-length", "64", "--data-path", small_corpus["prefix"], "--split", "90,5,5"]
    results = {}
    for name, cfg, load in (("hf", tmp_path / "run.yml", hf_dir),
                            ("ours", tmp_path / "ours" / "global_step0" / "config.yml", tmp_path / "ours")):
        gen = run_tool("deepy.py", "generate.py", str(cfg), "--load", str(load), *common, "--prompt", "def parse(self",
                       "--maximum-tokens", "12", "--temperature", "0")
        ev = run_tool("deepy.py", "eval.py", str(cfg), "--load", str(load), *common, "--eval-split", "test")
        results[name] = (gen.stdout, ev.stdout.strip().splitlines()[-1])
    assert results["hf"][0].startswith("def parse(self") and len(results["hf"][0]) > len("def parse(self")
    assert "test perplexity" in results["hf"][1]
    assert results["hf"] == results["ours"]


def write_neox_config(path, c, tp, vocab_file):
    """A GPT-NeoX run config for model config c, in GPT-NeoX's JSON-with-comments style."""
    path.write_text(
        "{\n  # a GPT-NeoX config\n"
        f'  "num-layers": {c.num_layers}, "hidden-size": {c.hidden_size}, "num-attention-heads": {c.num_attention_heads},\n'
        f'  "seq-length": 32, "max-position-embeddings": 32, "rotary-pct": {c.rotary_pct},\n'
        f'  "gpt-j-residual": {c.gpt_j_residual}, "no-weight-tying": {c.no_weight_tying},\n'
        f'  "model-parallel-size": {tp}, "pipe-parallel-size": 1,\n'
        f'  "train_micro_batch_size_per_gpu": 4, "vocab-file": "{vocab_file}",\n'
        '  "pos-emb": "rotary", "tokenizer-type": "HFTokenizer",\n'
        '}\n')
    return path


def test_neox_checkpoint_with_its_config_converts(tmp_path, small_corpus):
    source = known_model(vocab=1024, gpt_j_residual=True)  # the small corpus tokenizer's 1024 tokens
    step = tmp_path / "neox" / "global_step5"
    write_neox_checkpoint(source, str(step), tp=2)
    neox_yml = write_neox_config(tmp_path / "neox.yml", source.cfg, 2, small_corpus["tokenizer"])
    run_tool("tools/convert_checkpoint.py", "from-neox", "--input", str(step), "--config", str(neox_yml),
             "--output", str(tmp_path / "ours"))
    assert (tmp_path / "ours" / "latest").read_text().strip() == "global_step5"
    from megatron_lite.build import load_trained_model

    cfg = load_config([str(tmp_path / "ours" / "global_step5" / "config.yml")], ["--load", str(tmp_path / "ours")])
    model, _, _ = load_trained_model(cfg)
    x = torch.randint(0, 1024, (2, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert (model(x) - source(x)).abs().max().item() < 1e-5


def test_bad_inputs_fail_in_one_line_and_write_nothing(tmp_path, small_corpus):
    source = known_model(vocab=1024)
    step = tmp_path / "global_step1"
    write_neox_checkpoint(source, str(step), tp=1)
    neox_yml = write_neox_config(tmp_path / "neox.yml", source.cfg, 1, small_corpus["tokenizer"])
    torch.save({"attention.query_key_value.weight": WritesMarker(tmp_path / "pwned")},
               step / "layer_03-model_00-model_states.pt")
    cases = [
        (["from-neox", "--input", str(step), "--config", str(neox_yml)], "refused to load"),
        (["from-hf", "--input", str(tmp_path)], "is not a Hugging Face model directory"),
        (["to-hf", "--load", str(tmp_path / "nope")], "no checkpoint found"),
    ]
    for args, message in cases:
        proc = run_tool("tools/convert_checkpoint.py", *args, "--output", str(tmp_path / "out"), check=False)
        assert proc.returncode == 2, proc.stderr
        last = proc.stderr.strip().splitlines()[-1]  # after the progress bar, if any
        assert last.startswith("error: ") and message in last and "Traceback" not in proc.stderr
        assert not (tmp_path / "out").exists()
    assert not (tmp_path / "pwned").exists()
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")]


def test_trained_checkpoint_exports_and_runs_in_transformers(micro_config, tmp_path):
    """train.py -> to-hf -> transformers: the same token ids and logits as our loaded checkpoint."""
    run_tool("deepy.py", "train.py", micro_config, "--train-iters", "4", "--eval-interval", "100")
    run_tool("tools/convert_checkpoint.py", "to-hf", "--load", str(tmp_path / "ckpt"), "--output", str(tmp_path / "hf"))
    from megatron_lite.build import load_trained_model

    ours, tokenizer, _ = load_trained_model(load_config([micro_config], ["--load", str(tmp_path / "ckpt")]))
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf")).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    ids = tokenizer.encode("import os\n\ndef main(argv):\n    return")
    assert hf_tok("import os\n\ndef main(argv):\n    return")["input_ids"] == ids
    with torch.no_grad():
        assert (hf(torch.tensor([ids])).logits - ours(torch.tensor([ids]))).abs().max().item() < 1e-4
