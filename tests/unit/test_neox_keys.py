"""Every GPT-NeoX key (today's and the PolyCoder fork's NeoXArgs) is known here, with GPT-NeoX's default."""

import ast
import os
from dataclasses import MISSING

import pytest

from megatron_lite.config_loader import FIELDS, KNOWN_KEYS, load_config
from megatron_lite import errors
from megatron_lite.errors import UserError
from megatron_lite.neox_keys import ALIASES, DIFFERENT_DEFAULTS, NO_EFFECT, UNSUPPORTED

HERE = os.path.dirname(os.path.abspath(__file__))


def neox_keys() -> dict:
    """key -> (PolyCoder fork's default, today's default), each a Python value or '-' where the key is absent."""
    out = {}
    with open(os.path.join(HERE, "..", "data", "neox_args_keys.tsv")) as f:
        for line in f:
            if not line.startswith("#"):
                key, *defaults = line.rstrip("\n").split("\t")
                out[key] = tuple(d if d in ("-", "get_git_commit_hash()") else ast.literal_eval(d) for d in defaults)
    return out


NEOX = neox_keys()


def neox_default(key):
    """The PolyCoder fork's default where the fork has the key (PolyCoder configs were written against it)."""
    fork, today = NEOX[key]
    return fork if fork != "-" else today


def test_every_neox_key_is_known():
    assert len(NEOX) > 300
    assert sorted(set(NEOX) - set(KNOWN_KEYS)) == []
    assert not set(NO_EFFECT) & set(UNSUPPORTED) and not set(NO_EFFECT) & set(FIELDS)


def same(ours, theirs) -> bool:
    def norm(x):
        if x in (None, [], "", {}):
            return None
        return x.replace(" ", "").lower() if isinstance(x, str) else x
    return norm(ours) == norm(theirs)


def test_our_fields_have_gpt_neox_defaults_except_the_listed_ones():
    differ = {}
    for key in set(NEOX) & set(FIELDS):
        f = FIELDS[key][1]
        ours = f.default if f.default is not MISSING else f.default_factory()
        if not same(ours, neox_default(key)):
            differ[key] = (ours, neox_default(key))
    assert set(differ) == set(DIFFERENT_DEFAULTS), differ  # and no stale entry in the table


def test_unsupported_features_accept_gpt_neox_default_and_refuse_anything_else(tmp_path):
    for key, (default, _) in UNSUPPORTED.items():
        assert same(default, neox_default(key)), key
    path = tmp_path / "c.yml"
    path.write_text("train_micro_batch_size_per_gpu: 1\nuse_qk_layernorm: false\nintermediate_size: null\nz_loss: 0\n")
    load_config([str(path)])
    with pytest.raises(UserError, match=r"'--intermediate-size': 100 is not supported: the MLP width follows"):
        load_config([str(path)], ["--intermediate-size", "100"])
    with pytest.raises(UserError, match=r"'--use-qk-layernorm': True is not supported"):
        load_config([str(path)], ["--use-qk-layernorm", "true"])


def test_aliases_and_no_effect_keys(tmp_path, capsys):
    path = tmp_path / "c.yml"
    path.write_text("train_micro_batch_size_per_gpu: 1\nclip_grad: 0.5\npeak_theoretical_tflops: 312\n"
                    "num_workers: 8\nlr-decay-fraction: 0.5\ntrain-iters: 100\n")
    cfg = load_config([str(path)])
    assert cfg.optim.gradient_clipping == 0.5 and cfg.log.peak_tflops == 312 and cfg.optim.lr_decay_iters == 50
    assert "'num_workers' (" in capsys.readouterr().err
    assert set(ALIASES.values()) <= set(FIELDS)


def test_leaving_precision_out_says_how_we_differ(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(errors, "_warned", set())
    path = tmp_path / "c.yml"
    path.write_text("train_micro_batch_size_per_gpu: 1\n")
    load_config([str(path)])
    assert "key 'precision' is not set: megatron_lite's default is auto" in capsys.readouterr().err
    load_config([str(path)], ["--precision", "fp32"])
    assert "precision" not in capsys.readouterr().err
