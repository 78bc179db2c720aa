"""deepy.py across processes: two "machines" from a hostfile train like one machine with the same processes;
a rank that dies or raises ends the whole job in bounded time with its error shown; hostfile errors."""

import json
import os
import re
import subprocess
import sys
import textwrap
import time

import pytest

from megatron_lite.errors import UserError
from megatron_lite import launcher
from megatron_lite.config import ParallelConfig
from megatron_lite.launcher import read_hostfile
from tests.conftest import REPO, cpu_env, run_tool
from tests.distributed.harness import free_port

FAILING_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    import torch.distributed as dist
    from megatron_lite.config_loader import load_config_from_argv
    from megatron_lite.errors import exit_on_user_error
    from megatron_lite.parallel import state

    @exit_on_user_error  # as our entry scripts: a failing rank reports to the launcher
    def main():
        state.initialize(load_config_from_argv(sys.argv[1:]).parallel)
        if state.get().rank == 1:
            if os.environ["FAIL_MODE"] == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError("rank 1 failed on purpose")
        dist.barrier()  # without the launcher, rank 0 would wait here until the collective timeout

    main()
    """
)


def losses(log_dir):
    with open(log_dir / "metrics.jsonl") as f:
        return [r["loss"] for r in map(json.loads, f)]


COMMON = ["--train-iters", "3", "--eval-interval", "3", "--eval-iters", "1", "--log-interval", "1",
          "--gradient-accumulation-steps", "1"]


@pytest.fixture(scope="module")
def one_machine(tmp_path_factory, small_corpus):
    """Losses of a 2-process torchrun run on one machine: the baseline of the other launch paths."""
    from tests.conftest import micro_config

    root = tmp_path_factory.mktemp("one_machine")
    config = micro_config.__wrapped__(root, small_corpus)
    run_tool("deepy.py", "train.py", config, *COMMON, "--num-procs", "2", "--log-dir", str(root / "logs"),
             timeout=240)
    return config, losses(root / "logs")


def test_hostfile_two_local_machines_train_like_one(one_machine, tmp_path):
    config, one = one_machine
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("# two 'machines' on this one\nlocalhost slots=1\n127.0.0.1 slots=1\nfarhost slots=1\n")
    run_tool("deepy.py", "train.py", config, *COMMON, "--hostfile", str(hostfile), "--exclude", "farhost",
             "--master-port", str(free_port()), "--log-dir", str(tmp_path / "two"), "--save", str(tmp_path / "c"),
             timeout=240)
    two = losses(tmp_path / "two")
    assert len(two) == 3 and two == pytest.approx(one, rel=1e-6)


def test_mpirun_launch_trains_like_torchrun(one_machine, tmp_path):
    import mpi4py  # noqa: F401  the 'mpi' extra, installed by make test: missing must fail, not skip
    config, one = one_machine
    run_tool("deepy.py", "train.py", config, *COMMON, "--num-procs", "2", "--launcher", "mpirun",
             "--master-port", str(free_port()), "--log-dir", str(tmp_path / "mpi"), "--save", str(tmp_path / "c"),
             timeout=240)
    assert losses(tmp_path / "mpi") == pytest.approx(one, rel=1e-6)


@pytest.mark.parametrize("mode", ["raise", "kill"])
def test_failing_rank_stops_the_job(micro_config, tmp_path, mode):
    script = tmp_path / "fail.py"
    script.write_text(FAILING_SCRIPT)
    started = time.time()
    proc = subprocess.run([sys.executable, "deepy.py", str(script), micro_config, "--num-procs", "2"],
                          cwd=REPO, capture_output=True, text=True, timeout=120, env=cpu_env(FAIL_MODE=mode))
    elapsed = time.time() - started
    assert proc.returncode != 0
    assert elapsed < 60, f"took {elapsed:.0f}s"
    assert "a node of the job exited" in proc.stderr
    summary = proc.stderr[proc.stderr.index("a node of the job exited"):]  # the launcher's last words
    if mode == "raise":
        assert "rank 1 failed with:\n" in summary and "RuntimeError: rank 1 failed on purpose" in summary
    else:
        assert "Signals.SIGKILL" in proc.stderr or "SIGKILL" in proc.stderr
        # Rank 0 usually reports the broken collective; on a loaded machine torchrun may stop it first.
        assert re.search(r"[12] of 2 ranks reported no error: killed \(out of memory\? a signal\?\)", summary), summary


def test_hostfile_errors_name_the_line_and_host(tmp_path):
    bad = tmp_path / "hosts"
    bad.write_text("node1 slots=2\nnode2 slot=2\n")
    with pytest.raises(UserError, match="line 2: expected 'HOST slots=N'"):
        read_hostfile(str(bad))
    bad.write_text("node1 slots=2\nnode2 slots=4\n")
    with pytest.raises(UserError, match="same slots"):
        read_hostfile(str(bad))
    bad.write_text("node1 slots=2\nnode2 slots=2\n")
    with pytest.raises(UserError, match="'node3' is not in hostfile"):
        read_hostfile(str(bad), include="node3")
    assert read_hostfile(str(bad), exclude="node1") == [("node2", 2)]



def test_one_process_per_visible_gpu_unless_told(monkeypatch):
    """As GPT-NeoX's launcher: every visible GPU when neither num-gpus nor num-procs is given; 1 on a CPU."""
    import torch

    monkeypatch.setattr(launcher.glob, "glob", lambda pattern: [f"/dev/nvidia{i}" for i in range(8)])
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    assert launcher.world_size(ParallelConfig()) == 8
    assert "--nproc-per-node=8" in launcher.commands(ParallelConfig(), "train.py", [])[0]
    assert launcher.world_size(ParallelConfig(num_procs=2)) == 2 and launcher.world_size(ParallelConfig(num_gpus=4)) == 4
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert launcher.world_size(ParallelConfig()) == 1
    monkeypatch.setattr(launcher.glob, "glob", lambda pattern: [])  # no GPU device nodes: torch is not asked
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1 / 0)
    assert launcher.world_size(ParallelConfig()) == 1
