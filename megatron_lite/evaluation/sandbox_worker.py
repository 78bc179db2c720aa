"""A sandbox worker, the judge (stdlib only, run as a script by sandbox.Sandbox): decides every verdict.

The untrusted program runs in the zygote's sandbox (sandbox_runner); the job's trusted check runs here, and
its `candidate` calls the program's entry point there, with plain data going both ways (sandbox_wire). So
"passed" is decided in a process the program can neither write into nor see, from values with no methods of
the program's own.

Protocol with the pool: a hello line {"isolated", "reason"}, then one job per line on stdin {"code",
"entry_point", "check", "context", "cpu", "wall", "memory_mb", "nproc", "disk_mb"}, one verdict per line on
stdout {"status": passed | failed | timed out, "detail", "wall_timeout"}.
"""

import builtins
import json
import os
import shutil
import signal
import site
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sandbox_isolation as isolation  # noqa: E402
import sandbox_wire as wire  # noqa: E402

del sys.path[0]

RUNNER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sandbox_runner.py")
START_TIMEOUT = 60.0


class ProgramGone(BaseException):
    """The program ended (or closed its pipe) without answering."""


class ProgramTimeout(BaseException):
    """The program ran out of CPU time."""


class ProgramFault(BaseException):
    """The program answered with something that is not a value: not plain data, or not the protocol."""


class ProgramRaised(Exception):
    """An exception of a type the judge does not have (the program's own); its name and message."""


class ProgramExit(BaseException):
    """SystemExit, KeyboardInterrupt and the like, raised by the program: a failure no check may catch."""


class ZygoteDied(Exception):
    pass


def minimal_environment(home: str) -> dict:
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": home, "LANG": "C.UTF-8"}


class Zygote:
    """The sandbox process (sandbox_runner) and its control socket."""

    def __init__(self, uid: int, isolate: bool, disk_mb: int):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.home = None if isolate else tempfile.mkdtemp(prefix="sandbox-")
        config = {"ctrl_fd": theirs.fileno(), "isolate": isolate, "disk_mb": disk_mb,
                  "hidden": hidden_directories(), "kept": kept_directories()}
        self.proc = subprocess.Popen([sys.executable, "-I", "-S", RUNNER, json.dumps(config)],
                                     env=minimal_environment(self.home or isolation.WORKDIR),
                                     pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        theirs.close()
        self.ctrl = ours
        hello = self.receive(START_TIMEOUT)
        if hello.get("unshared"):
            self.map_ids(uid)
            self.ctrl.send(json.dumps({"mapped": True}).encode())
            hello = self.receive(START_TIMEOUT)
        self.isolated, self.reason = bool(hello.get("isolated")), hello.get("reason", "")

    def map_ids(self, uid: int):
        """Map the namespace's root to `uid`, a uid of the worker's own, where we may (as root); else to ours."""
        with open(f"/proc/{self.proc.pid}/setgroups", "w") as f:
            f.write("deny")
        own = (os.geteuid(), os.getegid())
        for ids in ([(uid, uid)] if os.geteuid() == 0 else []) + [own]:
            try:  # a root whose own namespace maps no such uid (a rootless container) falls back to its own
                for name, outer in zip(("uid_map", "gid_map"), ids):
                    with open(f"/proc/{self.proc.pid}/{name}", "w") as f:
                        f.write(f"0 {outer} 1")
                return
            except OSError:
                if ids == own:
                    raise

    def receive(self, timeout: float) -> dict:
        self.ctrl.settimeout(timeout)
        try:
            data = self.ctrl.recv(65536)
        except OSError:
            data = b""
        if not data:
            raise ZygoteDied()
        return json.loads(data)

    def start(self, limits: dict, from_judge: int, to_judge: int):
        socket.send_fds(self.ctrl, [json.dumps(limits).encode()], [from_judge, to_judge])

    def finish(self):
        """Kill everything the program started; its wait status (None if unknown)."""
        self.ctrl.send(b'{"finish": true}')
        return self.receive(START_TIMEOUT)["status"]

    def close(self):
        """End of the control socket stops the zygote (its pid 1 first, reaped by it); one that hangs is killed."""
        self.ctrl.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.home:
            shutil.rmtree(self.home, ignore_errors=True)


def hidden_directories() -> list:
    """Where secrets live (homes, temporary and runtime directories) and installed packages (the tasks need only
    the standard library; the problems and their solutions may be among them)."""
    dirs = list(isolation.HIDDEN) + [os.path.expanduser("~"), tempfile.gettempdir()]
    dirs += site.getsitepackages() + [site.getusersitepackages()]
    stdlib = {sysconfig.get_paths()[name] for name in ("stdlib", "platstdlib")}
    dirs += [os.path.join(d, name) for d in stdlib for name in ("site-packages", "dist-packages")]
    return sorted({os.path.realpath(d) for d in dirs} - {"/"})  # a HOME of / would hide everything


def kept_directories() -> list:
    """The standard library and the interpreter's own shared libraries (a conda Python's extension modules link
    to them), visible inside wherever Python is installed."""
    paths = sysconfig.get_paths()
    dirs = {os.path.realpath(d) for d in (paths["stdlib"], paths["platstdlib"], os.path.join(sys.base_prefix, "lib"))}
    return sorted(d for d in dirs if os.path.isdir(d) and not isolation.is_under(d, dirs - {d}))


class Program:
    """One program in the sandbox, reached through the two pipes made for it."""

    def __init__(self, to_program: int, from_program: int, deadline: float):
        self.to_program, self.reader, self.deadline = to_program, wire.LineReader(from_program), deadline

    def send(self, message: dict):
        try:
            wire.send(self.to_program, message, self.deadline)
        except BrokenPipeError:
            raise ProgramGone() from None

    def receive(self) -> dict:
        try:
            reply = self.reader.read(self.deadline)
        except ValueError as e:
            raise ProgramFault(f"the program broke the protocol: {e}") from None
        if reply is None:
            raise ProgramGone()
        return reply

    def call(self, *args, **kwargs):
        """The entry point's result for these arguments, computed in the sandbox."""
        self.send({"args": wire.encode(list(args)), "kwargs": wire.encode(kwargs)})
        reply = self.receive()
        if set(reply) == {"returned"}:
            try:
                return wire.decode(reply["returned"])
            except ValueError as e:
                raise ProgramFault(f"the program broke the protocol: {e}") from None
        raise exception_of(reply)


def exception_of(reply: dict) -> BaseException:
    """The judge's own exception for a program's answer that is not a value."""
    if reply == {"timeout": True}:
        return ProgramTimeout()
    if set(reply) == {"not_plain"}:
        return ProgramFault(f"the entry point returned a {str(reply['not_plain'])[:100]}, not plain data "
                            f"(only plain data leaves the sandbox)")
    if set(reply) == {"raised"} and isinstance(reply["raised"], list) and len(reply["raised"]) == 2:
        name, message = (str(x) for x in reply["raised"])
        kind = getattr(builtins, name, None)
        if isinstance(kind, type) and issubclass(kind, Exception):
            try:
                rebuilt = kind(message)  # a test may catch, say, ValueError: the judge's own ValueError
                rebuilt.program_message = f"{name}: {message}"  # as the program said it (KeyError quotes its str)
                return rebuilt
            except TypeError:
                pass
        elif isinstance(kind, type) and issubclass(kind, BaseException):
            return ProgramExit(f"{name}: {message}")
        return ProgramRaised(f"{name}: {message}")
    return ProgramFault("the program broke the protocol")


def describe(e: BaseException) -> str:
    if isinstance(e, (ProgramRaised, ProgramExit, ProgramFault)):
        return str(e)[:300]
    return getattr(e, "program_message", f"{type(e).__name__}: {e}")[:300]


def judge(job: dict, program: Program) -> dict:
    """Wait for the program to load, then run the check here; the verdict (ProgramGone propagates)."""
    try:
        reply = program.receive()
        if reply != {"ready": True}:
            raise exception_of(reply)
        namespace = {"__name__": "__main__"}
        if job["context"]:
            exec(compile(job["context"], "<context>", "exec"), namespace)
        if job["entry_point"]:
            namespace[job["entry_point"]] = program.call
        if job["check"]:
            exec(compile(job["check"], "<check>", "exec"), namespace)
        return {"status": "passed", "detail": ""}
    except ProgramTimeout:
        return {"status": "timed out", "detail": "cpu time limit"}
    except TimeoutError:
        return {"status": "timed out", "detail": "wall-clock backstop", "wall_timeout": True}
    except ProgramGone:
        raise
    except BaseException as e:  # noqa: BLE001 - a failed assert, an exception, anything: not a pass
        return {"status": "failed", "detail": describe(e)}


def execute(zygote: Zygote, job: dict) -> dict:
    """One job: the program in a fresh child of the zygote, the check here; then everything it started killed."""
    program_reads, to_program = os.pipe()
    judge_reads, from_program = os.pipe()
    os.set_blocking(to_program, False)  # a program that stops reading cannot block the judge past the deadline
    limits = {k: job[k] for k in ("cpu", "memory_mb", "nproc", "disk_mb")}
    try:
        zygote.start(limits, program_reads, from_program)
    finally:
        os.close(program_reads)
        os.close(from_program)
    program = Program(to_program, judge_reads, time.monotonic() + job["wall"])
    try:
        program.send({"code": job["code"], "entry_point": job["entry_point"]})
        verdict = judge(job, program)
    except ProgramGone:
        verdict = None
    except TimeoutError:
        verdict = {"status": "timed out", "detail": "wall-clock backstop", "wall_timeout": True}
    finally:
        os.close(to_program)
        os.close(judge_reads)
    status = zygote.finish()
    if verdict is None:
        if status is not None and os.WIFSIGNALED(status) and os.WTERMSIG(status) in (signal.SIGXCPU,
                                                                                      signal.SIGKILL):
            verdict = {"status": "timed out", "detail": "cpu time limit (killed)"}
        else:
            verdict = {"status": "failed", "detail": f"the program ended without answering (wait status {status})"}
    verdict.setdefault("wall_timeout", False)
    return verdict


def start_zygote(uid: int, allow_unisolated: bool, disk_mb: int) -> Zygote:
    zygote = Zygote(uid, isolate=True, disk_mb=disk_mb)
    if not zygote.isolated and allow_unisolated:
        reason = zygote.reason
        zygote.close()
        zygote = Zygote(uid, isolate=False, disk_mb=disk_mb)
        zygote.reason = reason
    return zygote


def main():
    config = json.loads(sys.argv[1])  # {"uid", "allow_unisolated", "disk_mb"}
    isolation.prctl(isolation.PR_SET_DUMPABLE, 0)  # not even a process of our uid may ptrace the judge
    zygote = start_zygote(config["uid"], config["allow_unisolated"], config["disk_mb"])
    out = sys.stdout
    out.write(json.dumps({"isolated": zygote.isolated, "reason": zygote.reason}) + "\n")
    out.flush()
    for line in sys.stdin:
        job = json.loads(line)
        try:
            verdict = execute(zygote, job)
        except (ZygoteDied, OSError):
            zygote.close()
            zygote = start_zygote(config["uid"], config["allow_unisolated"], config["disk_mb"])
            verdict = {"status": "failed", "detail": "the sandbox died", "wall_timeout": False}
        out.write(json.dumps(verdict) + "\n")
        out.flush()
    zygote.close()


if __name__ == "__main__":
    main()
