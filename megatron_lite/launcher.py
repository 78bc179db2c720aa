"""Start the processes of a run: one process, torchrun on this machine, one torchrun node per hostfile host
(local hosts directly, others over ssh), or mpirun. If any node or rank fails, every other one is stopped."""

import glob
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import List, Tuple

from megatron_lite.config import ParallelConfig
from megatron_lite.errors import RANK_ERRORS_ENV, UserError

LOCAL_NAMES = {"localhost", "127.0.0.1", "::1"}
STOP_GRACE_S = 10  # after SIGTERM, how long a node may take to stop before SIGKILL


def procs_per_node(cfg: ParallelConfig) -> int:
    """num-gpus, else num-procs, else one process per visible GPU (GPT-NeoX's default), else 1."""
    if cfg.num_gpus is not None:
        return cfg.num_gpus
    if cfg.num_procs is not None:
        return cfg.num_procs
    if not glob.glob("/dev/nvidia[0-9]*"):  # no NVIDIA GPU: skip importing torch (2.5 s on a small CPU)
        return 1
    import torch

    return max(torch.cuda.device_count(), 1)  # honours CUDA_VISIBLE_DEVICES; CUDA is not initialised


def read_hostfile(path: str, include: str = None, exclude: str = None) -> List[Tuple[str, int]]:
    """[(host, slots)] from 'host slots=N' lines (# comments allowed), filtered by include / exclude."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise UserError(f"cannot read hostfile '{path}' (key 'hostfile'): {e.strerror}") from None
    hosts = []
    for n, line in enumerate(lines, 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].startswith("slots=") or not parts[1][6:].isdigit() or int(parts[1][6:]) < 1:
            raise UserError(f"hostfile '{path}' line {n}: expected 'HOST slots=N' with N >= 1, got {line!r}")
        if parts[0] in dict(hosts):
            raise UserError(f"hostfile '{path}' line {n}: host '{parts[0]}' is listed twice")
        hosts.append((parts[0], int(parts[1][6:])))
    names = [h for h, _ in hosts]
    for key, value in (("include", include), ("exclude", exclude)):
        for host in (value or "").split(","):
            if host and host not in names:
                raise UserError(f"key '{key}': host '{host}' is not in hostfile '{path}' ({', '.join(names)})")
    if include:
        hosts = [(h, s) for h, s in hosts if h in include.split(",")]
    if exclude:
        hosts = [(h, s) for h, s in hosts if h not in exclude.split(",")]
    if not hosts:
        raise UserError(f"hostfile '{path}' leaves no hosts after include/exclude")
    if len({s for _, s in hosts}) > 1:
        raise UserError(f"hostfile '{path}': every host needs the same slots (torchrun starts equal nodes), "
                        f"got {', '.join(f'{h}={s}' for h, s in hosts)}")
    return hosts


def world_size(cfg: ParallelConfig) -> int:
    """Processes the launch will start (checked against the config before anything starts)."""
    if cfg.hostfile:
        return sum(s for _, s in read_hostfile(cfg.hostfile, cfg.include, cfg.exclude))
    return procs_per_node(cfg)


def is_local(host: str) -> bool:
    return host in LOCAL_NAMES or host in (socket.gethostname(), socket.getfqdn())


def torchrun(nnodes: int, node_rank: int, nproc: int, addr: str, port: int, script: str, args) -> List[str]:
    return [sys.executable, "-m", "torch.distributed.run", f"--nnodes={nnodes}", f"--node-rank={node_rank}",
            f"--nproc-per-node={nproc}", f"--master-addr={addr}", f"--master-port={port}", "--max-restarts=0",
            script, *args]


def commands(cfg: ParallelConfig, script: str, args) -> List[List[str]]:
    """One command per node (or a single mpirun command)."""
    if cfg.launcher in ("mpirun", "openmpi"):
        if cfg.hostfile:
            raise UserError("key 'launcher': mpirun with a hostfile is not supported here; use torchrun")
        return [mpirun_command(procs_per_node(cfg), cfg, script, args)]
    if not cfg.hostfile:
        return [[sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs_per_node(cfg)}",
                 "--max-restarts=0", script, *args]]
    hosts = read_hostfile(cfg.hostfile, cfg.include, cfg.exclude)
    addr = cfg.master_addr or ("127.0.0.1" if is_local(hosts[0][0]) else hosts[0][0])
    cmds = []
    for rank, (host, slots) in enumerate(hosts):
        cmd = torchrun(len(hosts), rank, slots, addr, cfg.master_port, script, args)
        if not is_local(host):  # same interpreter and working directory on the remote machine
            cmd = ["ssh", host, f"cd {shlex.quote(os.getcwd())} && " + shlex.join(cmd)]
        cmds.append(cmd)
    return cmds


def mpirun_command(nprocs: int, cfg: ParallelConfig, script: str, args) -> List[str]:
    venv_bin = os.path.dirname(sys.executable)
    mpirun = os.path.join(venv_bin, "mpirun")
    if not os.path.exists(mpirun):
        mpirun = "mpirun"
    env = {"MASTER_ADDR": cfg.master_addr or "127.0.0.1", "MASTER_PORT": str(cfg.master_port),
           "WORLD_SIZE": str(nprocs), "MEGATRON_LITE_MPI": "1"}
    exports = [a for k, v in env.items() for a in ("-x", f"{k}={v}")]
    return [mpirun, "-np", str(nprocs), "--allow-run-as-root", "--oversubscribe", *exports,
            sys.executable, script, *args]


def run_nodes(cmds: List[List[str]], world_size: int) -> int:
    """Run all node commands; when one fails, stop the rest (SIGTERM, then SIGKILL), show what the failing ranks
    reported, and return its status."""
    with tempfile.TemporaryDirectory(prefix="megatron_lite_ranks_") as errors:
        return _run_nodes(cmds, errors, world_size)


def _run_nodes(cmds: List[List[str]], errors: str, world_size: int) -> int:
    procs = []
    signal.signal(signal.SIGTERM, _interrupt)  # a stopped launcher stops its nodes too
    env = dict(os.environ, **{RANK_ERRORS_ENV: errors})  # local ranks leave their fatal errors there
    try:
        for cmd in cmds:
            procs.append(subprocess.Popen(cmd, start_new_session=True, env=env))
    except FileNotFoundError as e:
        _stop(procs)
        raise UserError(f"cannot start {e.filename}: not found") from None
    try:
        while True:
            codes = [p.poll() for p in procs]
            failed = [c for c in codes if c not in (None, 0)]
            if failed:
                _stop(procs)
                print(f"error: a node of the job exited with status {failed[0]}; stopped the others. "
                      + _rank_reports(errors, world_size), file=sys.stderr, flush=True)
                return failed[0] if failed[0] > 0 else 1
            if all(c == 0 for c in codes):
                return 0
            time.sleep(0.2)
    except KeyboardInterrupt:
        _stop(procs)
        return 130


def _rank_reports(errors: str, world_size: int) -> str:
    """What the failed ranks of this machine reported, and how many reported nothing (and why that can be)."""
    reports = []
    for name in sorted(os.listdir(errors)):
        with open(os.path.join(errors, name)) as f:
            reports.append(f"rank {int(name[4:-4])} failed with:\n{f.read().rstrip()}")  # rankNNNNN.txt
    silent = world_size - len(reports)
    if silent:
        reports.append(f"{silent} of {world_size} ranks reported no error: killed (out of memory? a signal?), "
                       "stopped by the launcher, or running on another machine.")
    return "\n".join(reports)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _stop(procs) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    deadline = time.time() + STOP_GRACE_S
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
