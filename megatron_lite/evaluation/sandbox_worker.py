"""A sandbox worker process (stdlib only, run as a script): forks one guarded child per program it is sent.

Protocol: one JSON job per line on stdin {"program", "cpu", "wall", "memory_mb", "nproc"}; one JSON verdict
per line on stdout {"status": passed | failed | timed out, "detail", "wall_timeout": bool}.
The child runs in its own session and process group, under RLIMIT_CPU / RLIMIT_AS / RLIMIT_NPROC, in a
temporary directory emptied before each program, with stdio on /dev/null and destructive functions removed.
Afterwards its group is killed, and so is every other descendant (the worker is a child subreaper). As root
it also drops to a uid of its own (so it can neither signal nor delete anything of ours, and the process
limit counts only its own processes), and the worker lives in a network namespace without interfaces.
"""

import json
import os
import resource
import select
import shutil
import signal
import socket  # noqa: F401 - imported once here so every child does not pay for it
import subprocess  # noqa: F401
import sys
import tempfile
import time

IS_ROOT = os.geteuid() == 0
# Imported once by the worker: children start with them loaded (fast), and they work even where the
# interpreter's own files are unreadable to the sandbox uid (e.g. Python installed under /root).
PRELOAD = ("abc", "array", "base64", "binascii", "bisect", "calendar", "cmath", "collections", "contextlib", "copy",
           "dataclasses", "datetime", "decimal", "difflib", "enum", "fractions", "functools", "hashlib", "heapq",
           "io", "itertools", "json", "locale", "math", "numbers", "operator", "pprint", "queue", "random", "re",
           "secrets", "statistics", "string", "struct", "textwrap", "time", "typing", "unicodedata", "_strptime")
CLONE_NEWNET = 0x40000000
PR_SET_CHILD_SUBREAPER = 36
SUBREAPER = False  # set by main()


def become_subreaper() -> bool:
    """Orphaned descendants of a program become our children (not init's), so we can kill and reap them."""
    try:
        import ctypes

        return ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def reap_children(seconds: float):
    """Collect every exited child (zombies would count against the next program's process limit)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            if time.monotonic() > deadline:
                return
            time.sleep(0.002)


def isolate_network() -> bool:
    """Move this worker (and so every child) into an empty network namespace; False when not permitted."""
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).unshare(CLONE_NEWNET) == 0
    except (OSError, AttributeError):
        return False


def user_process_count() -> int:
    """Processes owned by our uid (RLIMIT_NPROC counts these when we cannot switch to a uid of our own)."""
    uid, count = os.getuid(), 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                count += os.stat(f"/proc/{pid}").st_uid == uid
            except OSError:
                pass
    return count


def disable_destructive_functions():
    """Remove what a completion could use to harm the machine or escape its limits (os and posix alike)."""
    import builtins
    import posix
    import shutil as shutil_module
    import subprocess

    for name in ("kill", "killpg", "system", "fork", "forkpty", "vfork", "posix_spawn", "posix_spawnp",
                 "execv", "execve", "execvp", "execvpe", "execl", "execle", "execlp", "execlpe", "spawnv",
                 "spawnve", "spawnvp", "spawnvpe", "spawnl", "spawnle", "spawnlp", "spawnlpe", "popen",
                 "putenv", "remove", "removedirs", "rmdir", "unlink", "rename", "renames", "replace", "truncate",
                 "ftruncate", "chmod", "fchmod", "lchmod", "chown", "fchown", "lchown", "chroot", "fchdir",
                 "chdir", "setuid", "seteuid", "setgid", "setsid", "setpgid", "setpgrp", "setresuid", "link",
                 "symlink", "pidfd_open", "register_at_fork"):
        for module in (os, posix):
            if hasattr(module, name):
                setattr(module, name, None)
    for name in ("rmtree", "move", "chown"):
        setattr(shutil_module, name, None)
    subprocess.Popen = None
    builtins.exit = builtins.quit = builtins.help = None
    import socket  # the namespace already has no network; this also stops code that expects a socket to work

    def no_network(*args, **kwargs):
        raise OSError("network access is disabled in the sandbox")

    for name in ("socket", "create_connection", "create_server", "socketpair", "getaddrinfo", "fromfd"):
        setattr(socket, name, no_network)
    for name in ("ctypes", "_ctypes", "_posixsubprocess", "multiprocessing", "resource", "psutil", "signal",
                 "_signal", "pty"):
        sys.modules[name] = None


def lower_limit(kind: int, soft: int, hard: int = None):
    """Set a resource limit, never above the hard limit we were given (raising it needs privileges)."""
    _, current = resource.getrlimit(kind)
    hard = soft if hard is None else hard
    if current != resource.RLIM_INFINITY:
        soft, hard = min(soft, current), min(hard, current)
    resource.setrlimit(kind, (soft, hard))


def run_child(program: str, job: dict, workdir: str, uid: int, report_fd: int):
    """In the forked child: limit, isolate, guard, execute; write the verdict to report_fd; never return."""
    try:
        os.setsid()  # own session and process group: the worker kills the whole group afterwards
        cpu = int(job["cpu"]) + 1  # whole seconds, after the finer timer below: the backstop for code that blocks it
        lower_limit(resource.RLIMIT_CPU, cpu, cpu + 1)  # SIGXCPU, then SIGKILL one second later
        lower_limit(resource.RLIMIT_AS, job["memory_mb"] * 2**20)
        lower_limit(resource.RLIMIT_FSIZE, 64 * 2**20)
        lower_limit(resource.RLIMIT_CORE, 0)
        lower_limit(resource.RLIMIT_NPROC, job["nproc"] if IS_ROOT else user_process_count() + job["nproc"])
        os.chdir(workdir)
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        if IS_ROOT:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
        # Finer than RLIMIT_CPU's whole seconds: a CPU-time (not wall-time) alarm raises inside the program.
        signal.signal(signal.SIGPROF, _on_cpu_alarm)
        signal.setitimer(signal.ITIMER_PROF, job["cpu"])
        report = os.fdopen(report_fd, "w")
        disable_destructive_functions()
    except BaseException as e:  # noqa: BLE001 - any setup failure is reported, never silently a pass
        os.write(report_fd, json.dumps({"status": "failed", "detail": f"sandbox setup: {e!r}"}).encode() + b"\n")
        os._exit(1)
    try:
        exec(compile(program, "<completion>", "exec"), {"__name__": "__main__"})
        verdict = {"status": "passed", "detail": ""}
    except _CpuTimeout:
        verdict = {"status": "timed out", "detail": "cpu time limit"}
    except BaseException as e:  # noqa: BLE001 - SystemExit and KeyboardInterrupt are failures too
        verdict = {"status": "failed", "detail": f"{type(e).__name__}: {e}"[:300]}
    report.write(json.dumps(verdict) + "\n")
    report.flush()
    os._exit(0)


class _CpuTimeout(BaseException):
    pass


def _on_cpu_alarm(signum, frame):
    raise _CpuTimeout()


def kill_uid(uid: int):
    """SIGKILL every process of `uid`, including any that left our process group (root only)."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setuid(uid)
            os.kill(-1, signal.SIGKILL)  # all processes this uid may signal, i.e. its own, except this one
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


def new_workdir(uid: int) -> str:
    workdir = tempfile.mkdtemp(prefix="sandbox-")
    if IS_ROOT:
        os.chown(workdir, uid, uid)
    return workdir


def empty_workdir(workdir: str, uid: int) -> str:
    """`workdir` emptied for the next program (reusing it is much cheaper than a new one on some filesystems);
    a fresh directory when something the program left cannot be removed."""
    os.chmod(workdir, 0o700)
    for name in os.listdir(workdir):
        path = os.path.join(workdir, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                os.unlink(path)
            except OSError:
                pass
    if os.listdir(workdir):
        shutil.rmtree(workdir, ignore_errors=True)
        return new_workdir(uid)
    return workdir


def kill_descendants(seconds: float) -> bool:
    """SIGKILL and reap every descendant left (as their parents die they become our children: we are a
    subreaper), including any that left the process group; False if some survive `seconds` or we cannot see them."""
    children_file = f"/proc/self/task/{os.getpid()}/children"
    deadline = time.monotonic() + seconds
    while True:
        reap_children(0)
        try:
            with open(children_file) as f:
                children = [int(pid) for pid in f.read().split()]
        except OSError:
            return False
        if not children:
            return True
        if time.monotonic() > deadline:
            return False
        for pid in children:  # not yet reaped, so these pids cannot have been reused
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.001)


def execute(job: dict, uid: int, workdir: str) -> dict:
    """Run one program in a fresh child in `workdir`; wait for its verdict (wall-clock backstop); kill whatever it
    started."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        run_child(job["program"], job, workdir, uid, write_fd)
    os.close(write_fd)
    report, status, wall_timeout = read_report(read_fd, pid, time.monotonic() + job["wall"])
    os.close(read_fd)
    try:
        os.killpg(pid, signal.SIGKILL)  # the child and anything it started that stayed in its group
    except ProcessLookupError:
        pass
    if status is None:
        _, status = os.waitpid(pid, 0)
    if not (kill_descendants(2.0) and SUBREAPER) and IS_ROOT:
        kill_uid(uid)  # the fallback: every process of the program's own uid
        reap_children(1.0)
    return verdict_of(report, status, wall_timeout)


def read_report(read_fd: int, pid: int, deadline: float):
    """(report line, wait status or None, wall timeout?): until a whole line, the child's exit, or the deadline.

    Descendants may hold the pipe open, so the child's own exit is checked too, not only end of file."""
    data, status = b"", None
    while not data.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0:
            return data, status, True
        if select.select([read_fd], [], [], min(left, 0.05))[0]:
            chunk = os.read(read_fd, 65536)
            if not chunk:
                break
            data += chunk
        elif status is not None:
            break  # the child is gone and nothing more came
        else:
            done, wait_status = os.waitpid(pid, os.WNOHANG)
            status = wait_status if done == pid else None
    return data, status, False


def verdict_of(report: bytes, status: int, wall_timeout: bool) -> dict:
    if wall_timeout:
        return {"status": "timed out", "detail": "wall-clock backstop", "wall_timeout": True}
    try:
        verdict = json.loads(report.decode())
    except ValueError:
        if os.WIFSIGNALED(status) and os.WTERMSIG(status) in (signal.SIGXCPU, signal.SIGKILL):
            verdict = {"status": "timed out", "detail": "cpu time limit (killed)"}
        else:
            verdict = {"status": "failed", "detail": f"ended without a verdict (wait status {status})"}
    verdict["wall_timeout"] = False
    return verdict


def stdlib_readable_by(uid: int) -> bool:
    """Whether `uid` can read the standard library (else only PRELOAD modules import in the sandbox)."""
    import sysconfig

    pid = os.fork()
    if pid == 0:
        try:
            os.setuid(uid)
            os.listdir(sysconfig.get_paths()["stdlib"])
            os._exit(0)
        except BaseException:  # noqa: BLE001
            os._exit(1)
    return os.waitpid(pid, 0)[1] == 0


def main():
    uid = int(sys.argv[1]) if len(sys.argv) > 1 else 65534
    for name in PRELOAD:
        __import__(name)
    network_isolated = IS_ROOT and isolate_network()
    global SUBREAPER
    SUBREAPER = become_subreaper()
    if IS_ROOT:
        kill_uid(uid)  # leftovers of a predecessor that a program killed
    out = sys.stdout
    stdlib_readable = not IS_ROOT or stdlib_readable_by(uid)
    out.write(json.dumps({"ready": True, "network_isolated": network_isolated, "stdlib_readable": stdlib_readable})
              + "\n")
    out.flush()
    workdir = new_workdir(uid)
    try:
        for line in sys.stdin:
            out.write(json.dumps(execute(json.loads(line), uid, workdir)) + "\n")
            out.flush()
            workdir = empty_workdir(workdir, uid)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
