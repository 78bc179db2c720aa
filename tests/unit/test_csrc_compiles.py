"""CI has no GPU: it still compiles every CUDA kernel with nvcc and the CUDA binding against torch's headers,
so a CUDA build break shows here. (tests/gpu runs them where a GPU exists.)"""

import glob
import os
import shutil
import subprocess
import sysconfig

import pytest
from torch.utils.cpp_extension import include_paths

CSRC = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "csrc")
NVCC = shutil.which("nvcc") or next(iter(glob.glob("/usr/local/cuda*/bin/nvcc")), None)


def test_every_kernel_file_names_its_python_reference():
    from megatron_lite.ops import fused

    for path in glob.glob(os.path.join(CSRC, "*.cu")) + glob.glob(os.path.join(CSRC, "*_cpu.cpp")):
        text = open(path).read()
        names = [w.split("::")[1].rstrip(".") for w in text.split() if w.startswith("megatron_lite/ops/fused.py::")]
        assert names and all(hasattr(fused, n) for n in names), f"{path} must name its reference in fused.py"


@pytest.mark.parametrize("source", sorted(os.path.basename(p) for p in glob.glob(os.path.join(CSRC, "*.cu"))))
def test_cuda_kernel_compiles_with_nvcc(source, tmp_path):
    assert NVCC, "nvcc not found: CI compiles the CUDA kernels (install the CUDA toolkit or put nvcc on PATH)"
    proc = subprocess.run([NVCC, "-std=c++17", "-O3", "--use_fast_math", "-arch=sm_80", "-c",
                           os.path.join(CSRC, source), "-o", str(tmp_path / "k.o")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr


def test_cuda_binding_compiles_against_torch_headers():
    """cuda_module.cpp uses only torch's CPU-side headers, so the CPU torch can check it."""
    flags = [f"-I{p}" for p in include_paths()] + [f"-I{sysconfig.get_paths()['include']}", f"-I{CSRC}"]
    proc = subprocess.run(["c++", "-std=c++17", "-fsyntax-only", "-DTORCH_EXTENSION_NAME=_fused_cuda",
                           "-DTORCH_API_INCLUDE_EXTENSION_H", *flags, os.path.join(CSRC, "cuda_module.cpp")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr


def load_setup_py():
    """setup.py as a module (its setup() call runs only as __main__, as pip runs it)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("megatron_lite_setup", os.path.join(os.path.dirname(CSRC), "setup.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cuda_build_plan_builds_for_every_recent_gpu_or_says_why_not():
    plan = load_setup_py().cuda_build_plan
    # No GPU visible (a Docker build): a fixed list for the nvcc version, not torch's guess from the visible GPUs.
    assert plan("12.8", "12.6", None) == (True, "7.0;7.5;8.0;8.6;8.9;9.0+PTX")
    assert plan("13.0", "13.0", None) == (True, "7.5;8.0;8.6;8.9;9.0;10.0;12.0+PTX")  # nvcc 13 has no Volta
    assert plan("14.0", "14.1", None)[1] == "7.5;8.0;8.6;8.9;9.0;10.0;12.0+PTX"  # a newer nvcc: the latest list
    assert plan("12.8", "12.8", "9.0") == (True, "9.0")  # the user's TORCH_CUDA_ARCH_LIST wins
    # A mismatch torch's build would abort on (and with it the CPU kernels): the CUDA kernels are left out.
    build, why = plan("12.8", "13.0", None)
    assert not build and "nvcc 13.0 and torch's CUDA 12.8 differ" in why
    assert plan(None, "13.0", None) == (False, "torch is a CPU build")
    assert plan("12.8", None, None) == (False, "no nvcc found (CUDA_HOME)")


def test_nvcc_version_reads_the_installed_compiler():
    assert NVCC, "nvcc not found: CI compiles the CUDA kernels (install the CUDA toolkit or put nvcc on PATH)"
    version = load_setup_py().nvcc_version(os.path.dirname(os.path.dirname(os.path.realpath(NVCC))))
    out = subprocess.run([NVCC, "--version"], capture_output=True, text=True).stdout
    assert version and f"release {version}" in out
