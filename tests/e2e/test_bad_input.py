"""Bad input of every kind: one line `error: ...` naming the key or file, exit status 2, no traceback,
nothing half-written."""

import json
import os

import pytest

from tests.conftest import run_tool


def assert_clean_error(proc, *needles):
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("warning:")]
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def no_checkpoint(save_dir):
    return not os.path.exists(save_dir) or not [d for d in os.listdir(save_dir) if d != "."]


def train(tmp_path, micro_config, text, *overrides, extra_files=()):
    bad = tmp_path / "bad.yml"
    bad.write_text(text)
    return run_tool("deepy.py", "train.py", micro_config, str(bad), *extra_files, *overrides, check=False)


CASES = {
    # name: (yaml text, overrides, words the message must contain)
    "unknown key": ("num-layer: 3\n", (), ("num-layer", "did you mean 'num-layers'")),
    "mistyped value": ("rotary-emb-base: ten\n", (), ("rotary-emb-base", "bad.yml", "integer")),
    "heads do not divide hidden": ("", ("--num-attention-heads", "5"), ("num-attention-heads",)),
    "positions shorter than sequence": ("", ("--max-position-embeddings", "32"), ("max-position-embeddings", "seq-length")),
    "batch arithmetic": ("train_batch_size: 7\n", (), ("train_batch_size", "bad.yml")),
    "lr below min lr": ("", ("--min-lr", "1.0"), ("min-lr",)),
    "pipeline parallel": ("pipe-parallel-size: 4\n", (), ("pipe-parallel-size", "not supported")),
    "unsupported position embedding": ("", ("--pos-emb", "alibi"), ("pos-emb", "alibi")),
    "missing data": ("", ("--data-path", "/nonexistent/data_text_document"), ("/nonexistent/data_text_document",)),
    "missing tokenizer": ("", ("--vocab-file", "/nonexistent/tokenizer.json"), ("/nonexistent/tokenizer.json",)),
    "split without training data": ("", ("--split", "0,1,0"), ("split",)),
    "malformed split": ("", ("--split", "a,b"), ("split",)),
    "model too big for the machine": ("", ("--num-layers", "32", "--hidden-size", "2560", "--num-attention-heads", "32",
                                           "--seq-length", "2048", "--max-position-embeddings", "2048"),
                                      ("GiB",)),
    "unknown override": ("", ("--trian-iters", "5"), ("trian-iters", "did you mean")),
}


@pytest.mark.parametrize("name", list(CASES))
def test_training_config_mistakes(tmp_path, micro_config, name):
    text, overrides, needles = CASES[name]
    proc = train(tmp_path, micro_config, text, *overrides)
    assert_clean_error(proc, *needles)
    assert no_checkpoint(tmp_path / "ckpt")


def test_data_too_small_for_sequence(tmp_path, micro_config, small_corpus):
    tiny = tmp_path / "tiny.jsonl"
    tiny.write_text("\n".join(json.dumps({"text": f"x = {i}"}) for i in range(40)) + "\n")
    run_tool("tools/preprocess_data.py", "--input", str(tiny), "--tokenizer-type", "HFTokenizer",
             "--vocab-file", str(small_corpus["tokenizer"]), "--append-eod", "--output-prefix", str(tmp_path / "tiny"))
    proc = train(tmp_path, micro_config, "", "--data-path", str(tmp_path / "tiny_text_document"))
    assert_clean_error(proc, "seq")


def test_invalid_yaml_names_file_and_line(tmp_path, micro_config):
    proc = train(tmp_path, micro_config, "num-layers: 2\n  bad: [unclosed\n")
    assert_clean_error(proc, "bad.yml:", "invalid YAML")


def test_missing_config_file(tmp_path, micro_config):
    proc = run_tool("deepy.py", "train.py", micro_config, str(tmp_path / "absent.yml"), check=False)
    assert_clean_error(proc, "absent.yml")


def test_same_key_in_two_files(tmp_path, micro_config):
    proc = train(tmp_path, micro_config, "train-iters: 3\n")
    assert_clean_error(proc, "train-iters", "micro.yml", "bad.yml")


def test_unwritable_save_directory(tmp_path, micro_config):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    proc = train(tmp_path, micro_config, "", "--save", str(blocker / "ckpt"))
    assert_clean_error(proc, "save", str(blocker / "ckpt"))


def test_corrupt_tokenizer_file(tmp_path, micro_config):
    broken = tmp_path / "tokenizer.json"
    broken.write_text("{not json")
    proc = train(tmp_path, micro_config, "", "--vocab-file", str(broken))
    assert_clean_error(proc, str(broken))


@pytest.mark.parametrize("kind", ["SPMTokenizer", "GPT2BPETokenizer"])
def test_tokenizer_file_of_the_wrong_kind(tmp_path, micro_config, kind):
    hf_json = tmp_path / "tokenizer.json"  # a file of another kind than tokenizer-type names
    hf_json.write_text('{"version": "1.0", "model": {"type": "BPE", "vocab": {}, "merges": []}}')
    merges = tmp_path / "merges.txt"
    merges.write_text("#version: 0.2\n")
    proc = train(tmp_path, micro_config, "", "--tokenizer-type", kind, "--vocab-file", str(hf_json),
                 "--merge-file", str(merges))
    assert_clean_error(proc, str(hf_json))


def test_data_made_with_another_tokenizer(tmp_path, micro_config):
    from megatron_lite.data.tokenizer import save_tokenizer, train_byte_level_bpe

    save_tokenizer(train_byte_level_bpe(["def f(x):\n    return x\n"] * 20, 300), str(tmp_path / "small_tok"))
    proc = train(tmp_path, micro_config, "", "--vocab-file", str(tmp_path / "small_tok" / "tokenizer.json"))
    assert_clean_error(proc, "small_text_document.bin", "holds token id", "has 2")  # the data's ids reach ~1023
    assert no_checkpoint(tmp_path / "ckpt")


def test_load_pointing_at_a_missing_step(tmp_path, micro_config):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "latest").write_text("global_step5\n")
    proc = train(tmp_path, micro_config, "", "--load", str(ckpt))
    assert_clean_error(proc, "global_step5")


def test_launcher_usage_mistakes(tmp_path, micro_config):
    assert_clean_error(run_tool("deepy.py", "nosuch.py", micro_config, check=False), "nosuch.py")
    assert_clean_error(run_tool("deepy.py", "train.py", "--lr", "1", check=False), "no config file")


def test_generate_without_checkpoint(tmp_path, micro_config):
    proc = run_tool("deepy.py", "generate.py", micro_config, "--load", str(tmp_path / "none"), check=False)
    assert_clean_error(proc, "none")


def test_empty_corpus_directory(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out.jsonl"
    proc = run_tool("tools/collect_corpus.py", "--input", str(empty), "--output", str(out), check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr and "error:" in proc.stderr
    assert not out.exists()


def test_empty_jsonl_preprocess(tmp_path, small_corpus):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    proc = run_tool("tools/preprocess_data.py", "--input", str(empty), "--tokenizer-type", "HFTokenizer",
                    "--vocab-file", str(small_corpus["tokenizer"]), "--output-prefix", str(tmp_path / "x"),
                    check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr and "error:" in proc.stderr
    assert not [p for p in os.listdir(tmp_path) if p.startswith("x")]


def test_malformed_jsonl_line(tmp_path, small_corpus):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "ok"}) + "\n{broken\n")
    proc = run_tool("tools/preprocess_data.py", "--input", str(bad), "--tokenizer-type", "HFTokenizer",
                    "--vocab-file", str(small_corpus["tokenizer"]), "--output-prefix", str(tmp_path / "y"),
                    check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr and "bad.jsonl" in proc.stderr
    assert not [p for p in os.listdir(tmp_path) if p.startswith("y")]


def test_checkpoint_of_another_model_is_refused_before_loading_or_writing(tmp_path, micro_config):
    """A config for a different model against a checkpoint folder (e.g. local_setup.yml's with a bigger model):
    one line naming the checkpoint and each differing key, for --load and for --save alike."""
    run_tool("deepy.py", "train.py", micro_config, "--train-iters", "1", "--eval-interval", "1", "--eval-iters", "1")
    ckpt = tmp_path / "ckpt" / "global_step1"
    bigger = ("--num-layers", "3", "--hidden-size", "128", "--train-iters", "2")
    proc = train(tmp_path, micro_config, "", *bigger, "--load", str(tmp_path / "ckpt"))
    assert_clean_error(proc, str(ckpt), "(key 'load')", "num-layers 2 there, 3 here", "hidden-size 64 there, 128 here")
    proc = train(tmp_path, micro_config, "", *bigger)  # no --load: would write into the small model's folder
    assert_clean_error(proc, "(key 'save')", "num-layers 2 there, 3 here", "choose another save directory")
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["global_step1", "latest"]
