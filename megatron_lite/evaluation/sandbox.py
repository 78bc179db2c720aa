"""Run untrusted programs against trusted checks in parallel sandbox workers; verdicts cached by job hash.

Each worker is a judge (sandbox_worker.py) with its sandbox (sandbox_runner.py, isolated by
sandbox_isolation.py); README "HumanEval sandbox" says what is contained and what is not.
"""

import hashlib
import json
import os
import queue
import select
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import List, Optional

from tqdm import tqdm

from megatron_lite.data.jsonl import iter_jsonl
from megatron_lite.errors import UserError, warn_once
from megatron_lite.files import end_cut_short_line

MAX_WORKERS = 64
WORKER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sandbox_worker.py")


@dataclass
class SandboxLimits:
    cpu_timeout: float = 3.0  # CPU seconds, so machine load does not change verdicts
    wall_timeout: float = 10.0  # backstop for programs that sleep or block; doubled on each retry
    memory_mb: int = 1024
    nproc: int = 16
    disk_mb: int = 64  # the working directory's size (a tmpfs) and the largest file
    retries: int = 1  # re-runs of a wall-clock timeout (the only load-dependent verdict)


@dataclass(frozen=True)
class Job:
    """`code` (untrusted) runs in the sandbox; `check` (trusted) runs in the judge after `context` (trusted
    definitions it needs), with `entry_point` bound to a function calling the program's own, plain data only.
    Without a check the job passes when the code runs to its end, as the code reports it (so: forgeable)."""

    code: str
    entry_point: str = ""
    check: str = ""
    context: str = ""


class _Worker:
    """One judge process and its sandbox; restarted by its owner when it dies."""

    def __init__(self, uid: int, allow_unisolated: bool, disk_mb: int):
        self.uid = uid
        config = json.dumps({"uid": uid, "allow_unisolated": allow_unisolated, "disk_mb": disk_mb})
        self.proc = subprocess.Popen([sys.executable, "-I", WORKER_SCRIPT, config], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, start_new_session=True)
        hello = json.loads(self.proc.stdout.readline() or "{}")
        if "isolated" not in hello:
            raise RuntimeError(f"sandbox worker did not start (exit status {self.proc.poll()})")
        self.isolated, self.reason = hello["isolated"], hello["reason"]

    def run(self, job: dict) -> Optional[dict]:
        """The worker's verdict, or None when it died or stopped answering."""
        try:
            self.proc.stdin.write(json.dumps(job) + "\n")
            self.proc.stdin.flush()
            if select.select([self.proc.stdout], [], [], job["wall"] + 30)[0]:
                line = self.proc.stdout.readline()
                if line:
                    return json.loads(line)
        except (OSError, ValueError):
            pass
        return None

    def close(self):
        """End of input lets the judge stop its sandbox and remove its files; a judge that hangs is killed."""
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()


class Sandbox:
    """A pool of `workers` judges with their sandboxes; verdicts are dicts {status, detail, passed}.

    Refuses to start where the kernel cannot isolate programs, unless `allow_unisolated`."""

    def __init__(self, workers: int, limits: SandboxLimits, cache_path: Optional[str] = None,
                 uid_base: Optional[int] = None, allow_unisolated: bool = False):
        if not 1 <= workers <= MAX_WORKERS:
            raise ValueError(f"sandbox workers must be between 1 and {MAX_WORKERS}, got {workers}")
        # As root each worker's sandbox runs as a uid of its own, so two runs on one machine must not share
        # uids: the range follows our pid.
        uid_base = 100000 + (os.getpid() % 10000) * MAX_WORKERS if uid_base is None else uid_base
        self.limits, self.cache_path, self.allow_unisolated = limits, cache_path, allow_unisolated
        self.cache = load_cache(cache_path)
        self.lock = threading.Lock()
        self.idle = queue.Queue()
        self.all_workers = []
        for i in range(workers):
            self._start_worker(uid_base + i)
        if not self.isolated:
            reason = next(w.reason for w in self.all_workers if not w.isolated)
            if not allow_unisolated:
                self.close()
                raise UserError(f"humaneval: the kernel refused to isolate the sandbox ({reason}); allow user "
                                f"namespaces (sysctl user.max_user_namespaces, kernel.unprivileged_userns_clone, "
                                f"kernel.apparmor_restrict_unprivileged_userns; in Docker a seccomp profile that "
                                f"permits unshare), or set humaneval-allow-unisolated: true to run completions with "
                                f"resource limits only")
            warn_once(f"humaneval-allow-unisolated: completions run without isolation ({reason}): only CPU, memory, "
                      f"process and file-size limits apply; the network, this user's files (the verdict cache "
                      f"included) and processes are within a completion's reach")

    def _start_worker(self, uid: int) -> _Worker:
        worker = _Worker(uid, self.allow_unisolated, self.limits.disk_mb)
        self.all_workers.append(worker)
        self.idle.put(worker)
        return worker

    @property
    def isolated(self) -> bool:
        return all(w.isolated for w in self.all_workers)

    def key(self, job: Job) -> str:
        """Cache key: the job and the limits that decide its verdict (not the load-dependent wall backstop)."""
        limits = self.limits
        text = json.dumps([job.code, job.entry_point, job.check, job.context, limits.cpu_timeout, limits.memory_mb,
                           limits.nproc, limits.disk_mb, self.isolated])
        return hashlib.sha256(text.encode()).hexdigest()

    def run(self, jobs: List[Job], desc: str = "execute") -> List[dict]:
        """Verdicts for `jobs`, in order; cached ones are not run again."""
        keys = [self.key(j) for j in jobs]
        todo = {k: j for k, j in zip(keys, jobs) if k not in self.cache}
        with ThreadPoolExecutor(max_workers=max(1, len(self.all_workers))) as pool:
            futures = {pool.submit(self._execute, p): k for k, p in todo.items()}
            for future in tqdm(as_completed(futures), total=len(futures), desc=desc, unit="program", disable=None):
                self._remember(futures[future], future.result())
        return [dict(self.cache[k], passed=self.cache[k]["status"] == "passed") for k in keys]

    def _execute(self, job: Job) -> dict:
        wall, limits = self.limits.wall_timeout, self.limits
        for _ in range(limits.retries + 1):
            worker = self.idle.get()
            request = dict(vars(job), cpu=limits.cpu_timeout, wall=wall, memory_mb=limits.memory_mb,
                           nproc=limits.nproc, disk_mb=limits.disk_mb)
            verdict = worker.run(request)
            if verdict is None:  # the worker died or hung: replace the worker, record a failure
                worker.close()
                with self.lock:
                    self.all_workers.remove(worker)
                    self._start_worker(worker.uid)
                return {"status": "failed", "detail": "the sandbox worker died", "wall_timeout": False}
            self.idle.put(worker)
            if not verdict.get("wall_timeout"):
                return verdict
            wall *= 2
        return verdict

    def _remember(self, key: str, verdict: dict):
        entry = {"status": verdict["status"], "detail": verdict["detail"]}
        self.cache[key] = entry
        # A wall-clock timeout depends on load, so it is not kept: a resumed run tries again.
        if self.cache_path and not verdict.get("wall_timeout"):
            with open(self.cache_path, "a") as f:
                f.write(json.dumps({"key": key, **entry}) + "\n")

    def close(self):
        for worker in self.all_workers:
            worker.close()
        self.all_workers = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def load_cache(path: Optional[str]) -> dict:
    """key -> verdict from a cache file (jsonl); a line cut short by a killed run is ignored."""
    cache = {}
    if path and os.path.exists(path):
        for _, entry in iter_jsonl(path, resumable=True):
            if "key" in entry:
                cache[entry.pop("key")] = entry
        end_cut_short_line(path)
    elif path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return cache
