"""The sandbox's inside (stdlib only; the judge starts it as a script with a minimal environment): the zygote.

It isolates itself once (sandbox_isolation) and becomes pid 1 of its own PID namespace. For each program it
forks a child that runs the program under resource limits, then answers the judge's calls to the program's
entry point over two pipes the judge made for that program alone (plain data only, sandbox_wire). Afterwards
every process in the namespace is killed and the working directory replaced. The zygote never sees a test,
and a program's memory holds nothing of the judge's.

Control messages on the SEQPACKET socket from the judge (sandbox_worker.Zygote): {"mapped"} once (our uid
map is written), then per program {"cpu", "memory_mb", "nproc"} with the two pipe ends attached, and
{"finish"}, answered by {"status": the program's wait status}.
"""

import json
import os
import resource
import shutil
import signal
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sandbox_isolation as isolation  # noqa: E402
import sandbox_wire as wire  # noqa: E402

del sys.path[0]

# Imported once by the zygote: each program starts with them loaded (fast).
PRELOAD = ("abc", "array", "base64", "binascii", "bisect", "calendar", "cmath", "collections", "contextlib", "copy",
           "dataclasses", "datetime", "decimal", "difflib", "enum", "fractions", "functools", "hashlib", "heapq",
           "io", "itertools", "json", "locale", "math", "numbers", "operator", "pprint", "queue", "random", "re",
           "secrets", "statistics", "string", "struct", "textwrap", "time", "typing", "unicodedata", "_strptime")
PR_SET_CHILD_SUBREAPER = 36


class CpuTimeout(BaseException):
    pass


def _on_cpu_alarm(signum, frame):
    raise CpuTimeout()


def main():
    config = json.loads(sys.argv[1])  # {"ctrl_fd", "isolate", "hidden", "kept", "disk_mb"}
    ctrl = socket.socket(fileno=config["ctrl_fd"])
    for name in PRELOAD:
        __import__(name)
    if not config["isolate"]:
        isolation.prctl(PR_SET_CHILD_SUBREAPER, 1)  # orphans of a program become ours to kill
        workdir = os.environ["HOME"]
        tell(ctrl, {"isolated": False})
        return serve(ctrl, lambda child: finish_unisolated(child, workdir), workdir, isolated=False)
    reason = isolate(ctrl, config)
    if reason is not None:
        try:
            tell(ctrl, {"isolated": False, "reason": reason})
        except OSError:
            pass  # the judge is gone
        return
    pid = os.fork()  # the first process in the new PID namespace: its pid 1
    if pid:
        ctrl.close()
        os.waitpid(pid, 0)
        os._exit(0)
    try:
        isolation.mount_proc()
        isolation.fresh_workdir(config["disk_mb"], replace=False)
        isolation.prctl(isolation.PR_SET_DUMPABLE, 0)  # no ptrace or /proc/1/mem for programs, even with our uid
    except OSError as e:
        tell(ctrl, {"isolated": False, "reason": e.strerror or str(e)})
        os._exit(1)
    tell(ctrl, {"isolated": True})

    def finish(child):
        status = kill_all_but_us(child)
        isolation.fresh_workdir(config["disk_mb"], replace=True)
        return status

    serve(ctrl, finish, isolation.WORKDIR, isolated=True)
    os._exit(0)


def isolate(ctrl: socket.socket, config: dict):
    """New namespaces, with the judge mapping our uid, and the filesystem view; None, or why not."""
    try:
        isolation.unshare(isolation.NAMESPACES)
    except OSError as e:
        return e.strerror or str(e)
    tell(ctrl, {"unshared": True})
    if not json.loads(ctrl.recv(4096) or b"{}").get("mapped"):
        return "the judge did not map our uid"
    try:
        isolation.make_read_only(config["hidden"])
        kept = isolation.open_dirs(config["kept"])  # with our original uid, which can reach them
        os.setresgid(0, 0, 0)
        os.setresuid(0, 0, 0)  # the namespace's root: the uid the judge mapped (ours, or one of its own as root)
        isolation.hide(config["hidden"], kept)
    except OSError as e:
        return e.strerror or str(e)
    return None


def tell(ctrl: socket.socket, message: dict):
    ctrl.send(json.dumps(message).encode())


def serve(ctrl: socket.socket, finish, workdir: str, isolated: bool):
    """Per program: fork its child, wait for the judge's finish, clean up (`finish(child)` -> wait status)."""
    while True:
        try:
            data, fds, _, _ = socket.recv_fds(ctrl, 4096, 2)
        except OSError:
            return
        if not data or len(fds) != 2:
            return
        limits = json.loads(data)
        child = os.fork()
        if child == 0:
            ctrl.close()
            run_program(limits, fds[0], fds[1], workdir, isolated)
        for fd in fds:
            os.close(fd)
        try:
            ctrl.recv(4096)  # the judge's finish, or end of file
        except OSError:
            pass
        status = finish(child)
        try:
            tell(ctrl, {"status": status})
        except OSError:
            return


def kill_all_but_us(child: int):
    """As pid 1 of our PID namespace: SIGKILL every other process in it and reap them; `child`'s wait status."""
    status, deadline = None, time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(-1, signal.SIGKILL)  # everyone in the namespace but its pid 1
        except ProcessLookupError:
            pass
        while True:
            try:
                pid, wait_status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return status
            if pid == 0:
                break
            if pid == child:
                status = wait_status
        time.sleep(0.0005)
    return status


def run_program(limits: dict, from_judge: int, to_judge: int, workdir: str, isolated: bool):
    """In the forked child: limit, isolate further, run the program, then answer calls; never returns."""
    try:
        os.setsid()
        if isolated:
            isolation.drop_into_own_user_namespace()
        set_limits(limits, isolated)
        isolation.prctl(isolation.PR_SET_NO_NEW_PRIVS, 1)
        os.chdir(workdir)
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        if not isolated:
            remove_destructive_functions()
        reader = wire.LineReader(from_judge)
        request = reader.read()
        signal.signal(signal.SIGPROF, _on_cpu_alarm)  # CPU time, not wall time: load does not change verdicts
        signal.setitimer(signal.ITIMER_PROF, limits["cpu"])
    except BaseException as e:  # noqa: BLE001 - reported, never silently a pass
        wire.send(to_judge, {"raised": ["SandboxSetupError", repr(e)]})
        os._exit(1)
    function = None
    try:
        namespace = {"__name__": "__main__"}
        exec(compile(request["code"], "<completion>", "exec"), namespace)
        if request["entry_point"]:
            function = namespace.get(request["entry_point"])
            if not callable(function):
                raise NameError(f"the program defines no function {request['entry_point']!r}")
        reply = {"ready": True}
    except BaseException as e:  # noqa: BLE001 - SystemExit and KeyboardInterrupt are failures too
        reply = raised(e)
    answer(to_judge, reply)
    while True:
        call = reader.read()
        if call is None:
            os._exit(0)
        try:
            result = function(*wire.decode(call["args"]), **wire.decode(call["kwargs"]))
        except BaseException as e:  # noqa: BLE001
            answer(to_judge, raised(e))
            continue
        try:
            answer(to_judge, {"returned": wire.encode(result)})
        except (wire.NotPlainData, RecursionError):
            answer(to_judge, {"not_plain": type(result).__name__[:100]})


def raised(e: BaseException) -> dict:
    if isinstance(e, CpuTimeout):
        return {"timeout": True}
    try:
        return {"raised": [type(e).__name__[:100], str(e)[:300]]}
    except BaseException:  # noqa: BLE001 - a message that cannot be made into text
        return {"raised": [type(e).__name__[:100], ""]}


def answer(fd: int, reply: dict):
    try:
        wire.send(fd, reply)
    except BaseException:  # noqa: BLE001 - the CPU alarm or a closed pipe: the judge sees end of file
        os._exit(1)


def lower_limit(kind: int, soft: int, hard: int = None):
    """Set a resource limit, never above the hard limit we were given (raising it needs privileges)."""
    _, current = resource.getrlimit(kind)
    hard = soft if hard is None else hard
    if current != resource.RLIM_INFINITY:
        soft, hard = min(soft, current), min(hard, current)
    resource.setrlimit(kind, (soft, hard))


def set_limits(limits: dict, isolated: bool):
    cpu = int(limits["cpu"]) + 1  # whole seconds, after the finer timer: the backstop for code that blocks it
    lower_limit(resource.RLIMIT_CPU, cpu, cpu + 1)  # SIGXCPU, then SIGKILL one second later
    lower_limit(resource.RLIMIT_AS, limits["memory_mb"] * 2**20)
    lower_limit(resource.RLIMIT_FSIZE, limits["disk_mb"] * 2**20)
    lower_limit(resource.RLIMIT_CORE, 0)
    # In a user namespace of its own the process count is the program's alone; without, it is our uid's.
    lower_limit(resource.RLIMIT_NPROC, limits["nproc"] + (0 if isolated else user_process_count()))


def user_process_count() -> int:
    uid, count = os.getuid(), 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                count += os.stat(f"/proc/{pid}").st_uid == uid
            except OSError:
                pass
    return count


def remove_destructive_functions():
    """Without isolation, a speed bump for careless code (not a boundary: `import posix` undoes it)."""
    import builtins
    import subprocess

    for name in ("kill", "killpg", "system", "fork", "forkpty", "vfork", "posix_spawn", "posix_spawnp", "execv",
                 "execve", "execvp", "execvpe", "popen", "remove", "removedirs", "rmdir", "unlink", "rename",
                 "renames", "replace", "truncate", "chmod", "chown", "chdir", "setuid", "setsid", "link", "symlink"):
        setattr(os, name, None)
    for name in ("rmtree", "move", "chown"):
        setattr(shutil, name, None)
    subprocess.Popen = None
    builtins.exit = builtins.quit = builtins.help = None


def finish_unisolated(child: int, workdir: str):
    """Kill the program's group and every descendant left (we are their subreaper); empty the workdir."""
    try:
        os.killpg(child, signal.SIGKILL)
    except ProcessLookupError:
        pass
    status, deadline = None, time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/self/task/{os.getpid()}/children") as f:
                for pid in f.read().split():
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            pid, wait_status = os.waitpid(-1, 0)
            if pid == child:
                status = wait_status
        except ChildProcessError:
            break
    for name in os.listdir(workdir):
        path = os.path.join(workdir, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                os.unlink(path)
            except OSError:
                pass
    return status


if __name__ == "__main__":
    main()
