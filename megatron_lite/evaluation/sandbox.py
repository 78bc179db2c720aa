"""Run untrusted programs in parallel sandbox workers (see sandbox_worker.py); verdicts cached by program hash."""

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

from megatron_lite.errors import warn_once
from megatron_lite.evaluation.report import end_cut_short_line

MAX_WORKERS = 64
WORKER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sandbox_worker.py")


@dataclass
class SandboxLimits:
    cpu_timeout: float = 3.0  # CPU seconds, so machine load does not change verdicts
    wall_timeout: float = 10.0  # backstop for programs that sleep or block; doubled on each retry
    memory_mb: int = 1024
    nproc: int = 16
    retries: int = 1  # re-runs of a wall-clock timeout (the only load-dependent verdict)


class _Worker:
    """One sandbox worker process; restarted by its owner when a program manages to kill it."""

    def __init__(self, uid: int):
        self.uid = uid
        self.proc = subprocess.Popen([sys.executable, "-I", WORKER_SCRIPT, str(uid)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, start_new_session=True)
        hello = json.loads(self.proc.stdout.readline() or "{}")
        if not hello.get("ready"):
            raise RuntimeError(f"sandbox worker did not start (exit status {self.proc.poll()})")
        self.network_isolated = hello["network_isolated"]
        self.stdlib_readable = hello["stdlib_readable"]

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
        self.proc.kill()
        self.proc.wait()


class Sandbox:
    """A pool of `workers` sandbox processes executing programs; verdicts are dicts {status, detail, passed}."""

    def __init__(self, workers: int, limits: SandboxLimits, cache_path: Optional[str] = None,
                 uid_base: Optional[int] = None):
        if not 1 <= workers <= MAX_WORKERS:
            raise ValueError(f"sandbox workers must be between 1 and {MAX_WORKERS}, got {workers}")
        # Each worker's programs run as a uid of their own (as root), all killed after each program, so two
        # runs on one machine must not share uids: the range follows our pid.
        uid_base = 100000 + (os.getpid() % 10000) * MAX_WORKERS if uid_base is None else uid_base
        self.limits, self.cache_path = limits, cache_path
        self.cache = load_cache(cache_path)
        self.lock = threading.Lock()
        self.idle = queue.Queue()
        self.all_workers = []
        for i in range(workers):
            self._start_worker(uid_base + i)
        if not all(w.stdlib_readable for w in self.all_workers):
            warn_once("the sandbox uid cannot read this Python's standard library (installed under a private "
                      "directory?): completions can import only the preloaded modules")

    def _start_worker(self, uid: int) -> _Worker:
        worker = _Worker(uid)
        self.all_workers.append(worker)
        self.idle.put(worker)
        return worker

    @property
    def network_isolated(self) -> bool:
        return all(w.network_isolated for w in self.all_workers)

    def key(self, program: str) -> str:
        """Cache key: the program and the limits that decide its verdict (not the load-dependent wall backstop)."""
        text = json.dumps([program, self.limits.cpu_timeout, self.limits.memory_mb, self.limits.nproc])
        return hashlib.sha256(text.encode()).hexdigest()

    def run(self, programs: List[str], desc: str = "execute") -> List[dict]:
        """Verdicts for `programs`, in order; cached ones are not run again."""
        keys = [self.key(p) for p in programs]
        todo = {k: p for k, p in zip(keys, programs) if k not in self.cache}
        with ThreadPoolExecutor(max_workers=max(1, len(self.all_workers))) as pool:
            futures = {pool.submit(self._execute, p): k for k, p in todo.items()}
            for future in tqdm(as_completed(futures), total=len(futures), desc=desc, unit="program", disable=None):
                self._remember(futures[future], future.result())
        return [dict(self.cache[k], passed=self.cache[k]["status"] == "passed") for k in keys]

    def _execute(self, program: str) -> dict:
        wall = self.limits.wall_timeout
        for _ in range(self.limits.retries + 1):
            worker = self.idle.get()
            job = {"program": program, "cpu": self.limits.cpu_timeout, "wall": wall,
                   "memory_mb": self.limits.memory_mb, "nproc": self.limits.nproc}
            verdict = worker.run(job)
            if verdict is None:  # the program killed its worker: replace the worker, record a failure
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
        with open(path) as f:
            for line in f:
                try:
                    entry = json.loads(line)
                    cache[entry.pop("key")] = entry
                except (ValueError, KeyError):
                    continue
        end_cut_short_line(path)
    elif path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return cache
