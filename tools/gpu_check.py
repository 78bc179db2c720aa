#!/usr/bin/env python3
"""Everything that needs a GPU, measured in one command (`make gpu-check`), with one summary file.

Steps: build the CUDA kernels, tests/gpu, every device bench with --device cuda, a 160M training run (tokens/s
and MFU), 2-7B peak memory with and without activation checkpointing next to our estimate, and a generation.
GPU_CHECK_DRY=1 runs the same steps on the CPU with tiny shapes (CI runs that, so the script cannot rot).
Each step's status, time and key lines go to `--output` (default runs/gpu_check/summary.txt); exit 1 if any failed.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from megatron_lite.evaluation.report import write_json  # noqa: E402
from megatron_lite.files import atomic_write_text  # noqa: E402

DRY = os.environ.get("GPU_CHECK_DRY") == "1"
KEY_LINES = re.compile(r"^(RATIO .*|.*tokens/s.*|.*MFU.*|memory .*|.*peak.*|setup.py: .*|\d+ (passed|skipped).*)$")


def run(name: str, argv, summary: list, timeout: float, env=None) -> str:
    """Run one step, record its status, time and key output lines; its output."""
    print(f"== {name}: {' '.join(argv)}", flush=True)
    start = time.perf_counter()
    try:
        proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                              env=dict(os.environ, **(env or {})))
        output, status = proc.stdout + proc.stderr, "ok" if proc.returncode == 0 else f"failed ({proc.returncode})"
    except subprocess.TimeoutExpired as e:  # what it printed so far comes back as bytes
        output = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        status = f"timed out after {timeout:.0f} s"
    lines = [line for line in output.splitlines() if KEY_LINES.match(line.strip())]
    if status != "ok":
        lines += output.splitlines()[-15:]
    summary.append({"step": name, "status": status, "seconds": round(time.perf_counter() - start, 1), "lines": lines})
    print(f"   {status} in {summary[-1]['seconds']} s", *lines, sep="\n   ", flush=True)
    return output


def stdlib_data(workdir: str, summary: list) -> list:
    """A small corpus, tokenizer and .bin/.idx from this Python's standard library; the config overrides."""
    corpus, tok = os.path.join(workdir, "corpus.jsonl"), os.path.join(workdir, "tok")
    packages = ["json"] if DRY else ["json", "email", "logging", "http", "urllib", "asyncio", "xml", "unittest"]
    src = os.path.join(workdir, "src")
    for package in packages:
        shutil.copytree(os.path.join(sysconfig.get_paths()["stdlib"], package), os.path.join(src, package),
                        ignore=shutil.ignore_patterns("__pycache__", "test*"))
    py = sys.executable
    run("data: corpus", [py, "tools/collect_corpus.py", "--input", src, "--languages", "Python", "--output", corpus],
        summary, 300)
    run("data: tokenizer", [py, "tools/train_tokenizer.py", "--input", corpus, "--vocab-size", "2048" if DRY else "8192",
                            "--output", tok], summary, 300)
    prefix = os.path.join(workdir, "stdlib")
    run("data: preprocess", [py, "tools/preprocess_data.py", "--input", corpus, "--tokenizer-type", "HFTokenizer",
                             "--vocab-file", os.path.join(tok, "tokenizer.json"), "--append-eod",
                             "--output-prefix", prefix], summary, 300)
    return ["--data-path", prefix + "_text_document", "--tokenizer-type", "HFTokenizer", "--vocab-file",
            os.path.join(tok, "tokenizer.json")]


def measure_memory(argv) -> None:
    """(subcommand) Two training steps of the given configs; prints our estimate and the second step's peak."""
    from megatron_lite.config_loader import load_config
    from megatron_lite.errors import UserError
    from megatron_lite.model.size import count_parameters
    from megatron_lite.training.memory import GIB, estimate_training_bytes, measure_step_peak
    from megatron_lite.training.trainer import Trainer

    cfg = load_config(argv[:1], argv[1:])
    label = "with activation checkpointing" if cfg.model.checkpoint_activations else "without checkpointing"
    try:
        trainer = Trainer(cfg)
    except UserError as e:
        if "needs an estimated" not in str(e):
            raise
        print(f"memory {label}: refused by the estimate: {e}")
        return
    estimate = estimate_training_bytes(cfg, count_parameters(cfg.model), trainer.precision,
                                       trainer.device.type)["total"]
    trainer.train_step()  # the first step makes Adam's state; the second is the one measured
    peak = measure_step_peak(trainer)
    print(f"memory {label}: estimate {estimate / GIB:.3f} GiB, measured peak {peak / GIB:.3f} GiB "
          f"(estimate / peak {estimate / peak:.2f})")


def main():
    if sys.argv[1:2] == ["memory"]:
        return measure_memory(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=os.path.join(REPO, "runs", "gpu_check", "summary.txt"))
    args = parser.parse_args()
    py, summary = sys.executable, []
    device = "cpu" if DRY else "cuda"
    # The CPU here stands in for the GPU: no CUDA anywhere, so every step takes the CPU path it would on a laptop.
    env = {"CUDA_VISIBLE_DEVICES": ""} if DRY else {}
    os.environ.update(env)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as workdir:
        if DRY:
            run("kernels: import", [py, "-c", "import torch, megatron_lite._fused_cpu"], summary, 120)
        else:
            import torch

            arch = "{}.{}".format(*torch.cuda.get_device_capability()) if torch.cuda.is_available() else "9.0"
            run("kernels: build", [py, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "-e", "."],
                summary, 600, {"TORCH_CUDA_ARCH_LIST": arch})  # this GPU's architecture only: a faster build
        run("tests/gpu", [py, "-m", "pytest", "-q", "tests/gpu"], summary, 600)
        micro = os.path.join(workdir, "micro.yml")  # the dry run's model: the benches' machinery, little compute
        text = open(os.path.join(REPO, "configs", "tiny.yml")).read()
        for key, value in (("num-layers", 2), ("hidden-size", 64), ("seq-length", 64)):
            text = re.sub(rf"^{key}:.*$", f"{key}: {value}", text, flags=re.M)
        with open(micro, "w") as f:
            f.write(text)
        once = ["--rounds", "1", "--warmup", "0"]
        benches = {
            "kernels": once + ["--small"] if DRY else [],
            "train_throughput": once + ["--steps-per-round", "1", "--packages", "json", "--config", micro] if DRY else [],
            "generate_throughput": ["--rounds", "1", "--new-tokens", "8", "--config", micro] if DRY else [],
            "hf_load": ["--repeats", "1", "--layers", "2", "--hidden", "64", "--heads", "4"] if DRY else [],
            "eval_throughput": once[:2] + ["--files", "2", "--layers", "1", "--hidden", "64", "--context", "64"]
            if DRY else [],
        }
        for bench, extra in benches.items():
            run(f"bench: {bench}", [py, f"bench/{bench}.py", "--device", device, *extra], summary, 900)
        data = stdlib_data(workdir, summary)
        save = os.path.join(workdir, "ckpt")
        model = [micro] if DRY else ["configs/160M.yml"]
        train = [py, "deepy.py", "train.py", *model, *data, "--save", save, "--load", save, "--log-interval", "5",
                 "--train-iters", "3" if DRY else "30", "--eval-interval", "1000"]
        run("train: 160M, 30 steps" if not DRY else "train: micro, 3 steps", train, summary, 900)
        for checkpointing in ("false", "true"):
            big = [micro] if DRY else ["configs/2-7B.yml"]
            run(f"memory: 2-7B, checkpoint-activations {checkpointing}",
                [py, "tools/gpu_check.py", "memory", *big, *data, "--checkpoint-activations", checkpointing,
                 "--train-iters", "1"], summary, 900)
        run("generate", [py, "deepy.py", "generate.py", *model, *data, "--load", save, "--text-gen-type",
                         "unconditional", "--num-samples", "1", "--maximum-tokens", "32"], summary, 600)
    failed = [s["step"] for s in summary if s["status"] != "ok"]
    text = (f"gpu-check ({'dry run on the CPU' if DRY else 'GPU'}): {len(summary) - len(failed)} of {len(summary)} "
            f"steps ok" + (f"; failed: {', '.join(failed)}" if failed else "") + "\n")
    for s in summary:
        text += f"\n[{s['status']}] {s['step']} ({s['seconds']} s)\n" + "".join(f"  {line}\n" for line in s["lines"])
    atomic_write_text(args.output, text)
    write_json(os.path.splitext(args.output)[0] + ".json", summary)
    print(f"\nwrote {args.output}\n{text.splitlines()[0]}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
