"""GPT-NeoX and DeepSpeed keys that are not config fields of ours: each is an alias, accepted with one warning,
passed on to DeepSpeed, or refused.

Every key of GPT-NeoX's NeoXArgs (today's and the PolyCoder fork's) is either a config field of ours or in one of
these tables; tests/data/neox_args_keys.tsv lists them all and a test keeps the two in step (another does the same
for DeepSpeed's zero_optimization keys).
"""

# Keys that only tune GPT-NeoX's or DeepSpeed's own machinery (launch, logging, profiling, kernels, memory layout):
# they change nothing we compute, so they are accepted with one warning naming them.
_LAUNCH = "deepy.py launches the processes itself (torchrun or mpirun)"
_DERIVED = "GPT-NeoX derives it at run time; it is not read from a config"
_PROFILE = "a GPT-NeoX profiling / debugging aid"
_KERNEL = "a GPT-NeoX kernel or numerics switch; our kernels are chosen by their own keys"
_LOGGING = "GPT-NeoX logging of its own internals (loss, lr, grad norm, loss scale and MFU are always logged)"
_CHECKPOINT = "checkpoints are always written whole, in our own format"
NO_EFFECT = {
    **dict.fromkeys(("partition_activations", "checkpoint_in_cpu", "contiguous_checkpointing",
                     "deepspeed_activation_checkpointing", "activation_checkpointing"),
                    "activation memory layout of DeepSpeed's checkpointing (checkpoint-activations is honoured)"),
    **dict.fromkeys(("synchronize_each_layer", "wall_clock_breakdown", "memory_profiling", "memory_profiling_path",
                     "profile", "profile_backward", "profile_step_start", "profile_step_stop", "flops_profiler",
                     "comms_logger", "dump_state", "autotuning", "csv_monitor", "coord_check"), _PROFILE),
    **dict.fromkeys(("steps_per_print", "log_grad_norm", "log_grad_pct_zeros", "log_gradient_noise_scale",
                     "gradient_noise_scale_n_batches", "gradient_noise_scale_cpu_offload", "log_optimizer_states",
                     "log_param_norm", "tensorboard", "wandb", "wandb_init_all_ranks", "git_hash",
                     "comet_experiment", "comet_experiment_name", "comet_others", "comet_project", "comet_tags",
                     "comet_workspace"), _LOGGING),
    **dict.fromkeys(("deepspeed_mpi", "deepspeed_slurm", "account", "comment", "autotuning_run", "force_multi",
                     "detect_nvlink_pairs", "no_ssh_check", "num_nodes", "deepscale", "deepscale_config",
                     "deepspeed", "deepspeed_extra_args", "distributed_backend", "use_shared_fs", "lazy_mpu_init",
                     "adlr_autoresume", "adlr_autoresume_interval", "config_files", "user_script"), _LAUNCH),
    **dict.fromkeys(("global_num_gpus", "rank", "local_rank", "iteration", "is_pipe_parallel", "do_train",
                     "do_valid", "do_test", "dynamic_loss_scale", "min_scale", "batch_size", "zero_reduce_scatter",
                     "zero_contiguous_gradients", "zero_reduce_bucket_size",
                     "zero_allgather_bucket_size"), _DERIVED),
    **dict.fromkeys(("bias_dropout_fusion", "layernorm_fusion",
                     "rmsnorm_fusion", "rope_fusion", "use_flashattn_swiglu", "mamba_selective_scan_fusion",
                     "mamba_causal_conv_fusion", "mamba_inner_func_fusion", "attention_softmax_in_fp32",
                     "apply_query_key_layer_scaling", "fused_kernels_build_path", "onnx_safe",
                     "use_cpu_initialization", "rotary_save_freqs_buffer", "fp16_lm_cross_entropy",
                     "output_layer_parallelism", "param_sharing_style", "pipe_partition_method"), _KERNEL),
    **dict.fromkeys(("fp32_allreduce", "gradient_predivide_factor", "prescale_gradients", "communication_data_type",
                     "sparse_gradients", "data_types", "zero_allow_untested_optimizer", "sequence_parallel"),
                    "how DeepSpeed / Megatron communicate gradients and activations; the result is the same"),
    **dict.fromkeys(("checkpoint_validation_with_forward_pass", "checkpoint"), _CHECKPOINT),
    **dict.fromkeys(("num_workers", "mmap_warmup", "short_seq_prob", "char_level_ppl"),
                    "GPT-NeoX data-loader and BERT-era settings; our data path has no counterpart"),
    **dict.fromkeys(("use_checkpoint_lr_scheduler", "override_lr_scheduler"),
                    "the lr schedule is a function of the iteration and the config, never read from a checkpoint"),
    "scalenorm_epsilon": "ScaleNorm is not supported (norm: layernorm | rmsnorm)",
    **dict.fromkeys(("rpe_num_buckets", "rpe_max_distance", "opt_pos_emb_offset"),
                    "settings of position embeddings other than learned and rotary"),
    **dict.fromkeys(("te_fp8_format", "te_fp8_wgrad", "te_fp8_amax_history_len", "te_fp8_amax_compute_algo",
                     "te_fp8_margin", "mamba_selective_fp32_params", "mamba_use_bias_in_conv",
                     "mamba_use_bias_in_linears", "moe_jitter_eps", "moe_lbl_in_fp32", "moe_router_type",
                     "moe_top_k", "moe_expert_interval", "gmlp_attn_dim", "s3_chunk_size", "kl_impl",
                     "dpo_fp32", "kto_fp32", "fp32_reinforce", "online_dataserver_ips", "online_dataserver_ports",
                     "weight_server_port", "precompute_model_name", "prompt_end", "return_logits",
                     "allow_chopped", "mup_init_scale", "mup_attn_temp", "mup_output_temp", "mup_embedding_mult",
                     "mup_rp_embedding_mult", "mup_width_scale", "curriculum_seqlen"),
                    "a setting of a GPT-NeoX feature we do not have (Transformer Engine, MoE, Mamba, muP, RLHF, "
                    "S3, online serving); the feature itself is refused if asked for"),
}

# GPT-NeoX keys spelled differently here: the value goes to our key.
ALIASES = {"clip_grad": "gradient_clipping", "gas": "gradient_accumulation_steps",
           "peak_theoretical_tflops": "peak_tflops"}

# Features we lack: GPT-NeoX's default (what we do) is accepted silently, any other value is refused.
_DATA = "only plain causal LM training on mmap datasets is supported"
_ARCH = "our model is the GPT-NeoX architecture without it"
UNSUPPORTED = {
    "intermediate_size": (None, "the MLP width follows hidden-size (4 x, or 2/3 of it gated for swiglu)"),
    "expansion_factor": (None, "the MLP width follows hidden-size (4 x, or 2/3 of it gated for swiglu)"),
    "ffn_dim": (None, "the MLP width follows hidden-size (4 x, or 2/3 of it gated for swiglu)"),
    "mlp_multiple_of": (1, "the MLP width follows hidden-size (4 x, or 2/3 of it gated for swiglu)"),
    "dim_att": (None, _ARCH),
    "head_size": (None, "heads are hidden-size / num-attention-heads wide"),
    "num_unique_layers": (None, "parameter sharing across layers is not supported"),
    "gpt_j_tied": (False, "gpt-j-residual with one shared LayerNorm is not supported"),
    "use_qk_layernorm": (False, _ARCH),
    "sliding_window_width": (None, "only global (dense) attention is supported"),
    "sparsity_config": (None, "only global (dense) attention is supported"),
    "sparse_attention": (None, "only global (dense) attention is supported"),
    "soft_prompt_tuning": (None, "soft prompt tuning is not supported"),
    "moe_num_experts": (1, "mixture of experts is not supported"),
    "te_columnparallel": (False, "Transformer Engine is not supported"),
    "te_rowparallel": (False, "Transformer Engine is not supported"),
    "te_layernorm_mlp": (False, "Transformer Engine is not supported"),
    "te_mha": (False, "Transformer Engine is not supported"),
    "te_fp8_mha": (False, "Transformer Engine is not supported"),
    "use_mup": (False, "muP is not supported"),
    "base_shapes_file": (None, "muP is not supported"),
    "save_base_shapes": (False, "muP is not supported"),
    "use_bnb_optimizer": (False, "bitsandbytes optimizers are not supported; use optimizer Adam or AdamW"),
    "z_loss": (0.0, "the loss is plain cross-entropy"),
    "eod_mask_loss": (False, "end-of-document tokens are always part of the loss"),
    "train_epochs": (None, "training length is train-iters"),
    "checkpoint_factor": (None, "checkpoints are saved every save-interval iterations"),
    "checkpoint_scale": ("linear", "checkpoints are saved every save-interval iterations"),
    "extra_save_iters": (None, "checkpoints are saved every save-interval iterations"),
    "no_load_optim": (False, "a resumed run loads its optimizer state (finetune: true loads weights only)"),
    "no_load_rng": (False, "a resumed run's random state follows from seed and iteration"),
    "no_save_optim": (False, "checkpoints always hold the optimizer state"),
    "no_save_rng": (False, "checkpoints are always complete"),
    "s3_path": (None, "checkpoints are written to the local file system only"),
    "use_comet": (None, "Comet logging is not supported; use use_wandb or tensorboard-dir"),
    "serve_model_weights": (False, "serving weights to an online data server is not supported"),
    "dataset_impl": ("gpt2", _DATA),
    "train_impl": ("normal", _DATA),
    "pack_impl": ("packed", _DATA),
    "reinforce_leave_one_out": (False, _DATA),
    "dpo_beta": (0.1, _DATA), "dpo_reference_free": (False, _DATA),
    "kto_beta": (0.1, _DATA), "kto_desirable_weight": (1.0, _DATA), "kto_undesirable_weight": (1.0, _DATA),
    "kl_div_beta": (0.1, _DATA),
    **{f"{kind}_{split}_{what}": (None, _DATA) for kind in ("pos", "neg") for split in ("train", "valid", "test")
       for what in ("data_paths", "label_data_paths")},
    **{f"{split}_{what}": (None, _DATA) for split in ("train", "valid", "test")
       for what in ("label_data_paths", "reward_data_paths")},
    "curriculum_learning": (None, "curriculum learning is not supported"),
    "data_efficiency": (None, "DeepSpeed data efficiency is not supported"),
    "compression_training": (None, "DeepSpeed compression is not supported"),
    "elasticity": (None, "DeepSpeed elastic training is not supported"),
    "amp": (None, "use precision fp16 or bf16 (DeepSpeed's apex AMP is not supported)"),
    "scheduler": (None, "DeepSpeed's lr schedulers are not supported; use lr-decay-style"),
}

# Our keys whose default is not GPT-NeoX's (the PolyCoder fork's where it and today's GPT-NeoX differ), and why.
# The README lists them. Only `precision` changes what a GPT-NeoX config that leaves it out computes, so only it
# warns at run time; GPT-NeoX has no default for the keys it requires, so a config that runs there sets them.
_REQUIRED = "GPT-NeoX requires it in a config; ours has a small default for tests and quick runs"
DIFFERENT_DEFAULTS = {
    "precision": "auto: bf16 where the device runs it natively (measured on a CPU), else fp32; GPT-NeoX: fp32",
    **dict.fromkeys(("num_layers", "hidden_size", "num_attention_heads", "seq_length", "max_position_embeddings",
                     "lr", "train_iters", "text_gen_type"), _REQUIRED),
    "eval_tasks": "ours are megatron_lite's evaluations (perplexity, humaneval), not lm-eval task names",
    "gradient_accumulation_steps": "derived from train_batch_size when that is given (as DeepSpeed), else 1",
    "loss_scale": "0 means dynamic, as GPT-NeoX's unset value",
    "log_interval": "GPT-NeoX's fork leaves it unset (today's: 100)",
    "sample_output_file": "generate.py prints samples unless a file is named (GPT-NeoX writes samples.txt)",
    **dict.fromkeys(("world_size", "zero_stage"), "derived: from the launcher's process count, from zero_optimization"),
}

# zero_optimization keys (DeepSpeed 0.19's DeepSpeedZeroConfig and its aliases).
ZERO_PASSED = {
    "allgather_partitions", "allgather_bucket_size", "reduce_scatter", "reduce_bucket_size", "overlap_comm",
    "contiguous_gradients", "round_robin_gradients", "use_multi_rank_bucket_allreduce", "ignore_unused_parameters",
    "offload_optimizer", "offload_param", "cpu_offload_param", "cpu_offload_use_pin_memory", "sub_group_size",
    "prefetch_bucket_size", "param_persistence_threshold", "model_persistence_threshold", "max_live_parameters",
    "max_reuse_distance", "stage3_prefetch_bucket_size", "stage3_param_persistence_threshold",
    "stage3_model_persistence_threshold", "stage3_max_live_parameters", "stage3_max_reuse_distance",
    "module_granularity_threshold", "stage3_module_granularity_threshold", "use_all_reduce_for_fetch_params",
    "stage3_use_all_reduce_for_fetch_params", "allgather_sequential", "stage3_allgather_sequential",
    "parameter_alignment", "zero_hpz_partition_size", "zero_quantized_weights", "zero_quantized_nontrainable_weights",
    "zero_quantized_gradients", "memory_efficient_linear", "override_module_apply", "leaf_module",
    "enable_sanity_checks",
}
ZERO_NO_EFFECT = {
    name: "checkpoints are always saved whole, in our own format" for name in (
        "elastic_checkpoint", "load_from_fp32_weights", "gather_16bit_weights_on_model_save",
        "stage3_gather_16bit_weights_on_model_save", "stage3_gather_fp16_weights_on_model_save",
        "pipeline_loading_checkpoint", "save_muon_momentum_buffer_in_memory")
} | {"legacy_stage1": "removed from DeepSpeed", "log_trace_cache_warnings": "a DeepSpeed debugging aid"}
ZERO_REFUSED = {
    "compute_grad_norm": "the gradient norm is always computed (it is logged, and decides fp16 overflow)",
    "zenflow": "ZenFlow replaces the optimizer step; train with offload_optimizer instead",
}
