"""The sandbox: hostile completions are recorded as failures, as root and as an unprivileged user, with nothing
outside changed and no secret in any output; plain data crosses the boundary exactly; verdicts do not depend on
load; it refuses to run unisolated unless allowed."""

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading

import pytest

from megatron_lite.evaluation import sandbox_wire as wire
from megatron_lite.evaluation.sandbox import Job, Sandbox, SandboxLimits
from tests.unit import sandbox_attacks

pytestmark = pytest.mark.timeout(180)
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
IS_ROOT = os.geteuid() == 0
UID_BASE = 62000
NOBODY = 65534


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(2, SandboxLimits(cpu_timeout=1.0, wall_timeout=2.0, nproc=8, retries=0), uid_base=UID_BASE) as box:
        yield box


def run_one(sandbox, code, entry_point="", check=""):
    return sandbox.run([Job(code, entry_point, check)])[0]


def visible_dir(owner: int) -> str:
    """A directory the sandbox sees (read-only): in the repository, not under a hidden one such as /tmp."""
    path = tempfile.mkdtemp(prefix=".sandbox-victims-", dir=REPO)
    if IS_ROOT:
        os.chown(path, owner, owner)
    os.chmod(path, 0o755)
    return path


def as_nobody(argv, scratch: str):
    """argv run as nobody, in a private mount namespace where the interpreter, the virtual environment and the
    repository are reachable even if they live under a private home (each bound at its own path on a tmpfs that
    covers the directory nobody could not traverse; the originals are reached through mount points in `scratch`)."""
    needed = sorted({os.path.realpath(p) for p in (sys.base_prefix, sys.prefix, REPO)})
    script = ["set -e", "mount --make-rprivate /"]
    for blocked in sorted({closed_ancestor(p) for p in needed} - {None}):
        stash = tempfile.mkdtemp(dir=scratch)
        script += [f"mount --bind '{blocked}' '{stash}'", f"mount -t tmpfs -o mode=755 tmpfs '{blocked}'"]
        for path in needed:
            if path.startswith(blocked + "/"):
                inside = os.path.join(stash, os.path.relpath(path, blocked))
                script += [f"mkdir -p '{path}'", f"mount --bind '{inside}' '{path}'"]
    script.append(f'exec setpriv --reuid={NOBODY} --regid={NOBODY} --clear-groups env -i PATH=/usr/bin:/bin '
                  f'HOME=/nonexistent "$@"')
    return ["unshare", "--mount", "sh", "-c", "\n".join(script), "sh", *argv]


def closed_ancestor(path: str):
    """The outermost directory above `path` that others may not traverse, or None."""
    parts = path.split("/")
    for i in range(2, len(parts) + 1):
        ancestor = "/".join(parts[:i])
        if not os.stat(ancestor).st_mode & 0o001:
            return ancestor
    return None


@pytest.fixture(scope="module", params=["this user", "nobody"])
def attack_report(request):
    """sandbox_attacks.run_attacks as we are (root in CI), and dropped to nobody in a subprocess."""
    if request.param == "this user":
        directory = visible_dir(os.getuid())
        try:
            yield sandbox_attacks.run_attacks(UID_BASE + 60, directory)
        finally:
            shutil.rmtree(directory, ignore_errors=True)
        return
    if not IS_ROOT:
        pytest.skip("dropping to nobody needs root; as a non-root user the 'this user' run is the unprivileged one")
    directory = visible_dir(NOBODY)
    try:
        with tempfile.TemporaryDirectory() as scratch:
            proc = subprocess.run(as_nobody([sys.executable, sandbox_attacks.__file__, str(UID_BASE + 70), directory],
                                            scratch), capture_output=True, text=True, timeout=150)
        assert proc.returncode == 0, proc.stderr[-3000:]
        yield json.loads(proc.stdout.splitlines()[-1])
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# One pytest worker runs both reports (`--dist loadgroup`): two runs as nobody at once would see each other's processes.
@pytest.mark.xdist_group("sandbox_attacks")
@pytest.mark.parametrize("attack", list(sandbox_attacks.ATTACKS))
def test_attack_is_a_failure_and_the_worker_serves_the_next_job(attack_report, attack):
    index = list(sandbox_attacks.ATTACKS).index(attack)
    verdict = attack_report["attacks"][attack]
    assert verdict["status"] in ("failed", "timed out"), verdict
    assert attack_report["honest_after"][index] == "passed"


@pytest.mark.xdist_group("sandbox_attacks")
def test_attacks_change_nothing_outside_and_leak_nothing(attack_report):
    report = attack_report
    assert report["isolated"]
    assert report["victim_intact"] and not report["cache_forged"]
    assert not report["secret_leaked"] and not report["network_reached"]
    assert report["sleeper_alive"] and report["processes_left"] == []


@pytest.mark.xdist_group("sandbox_attacks")
def test_the_standard_library_imports_wherever_python_lives(attack_report):
    """colorsys, graphlib, sqlite3, ... are not preloaded: they are read from the interpreter's own directory
    (here under /root, which neither a sandbox uid of its own nor nobody can traverse outside the sandbox)."""
    assert attack_report["stdlib_user"]["status"] == "passed", attack_report["stdlib_user"]


def test_plain_programs(sandbox):
    ok, wrong, raising = sandbox.run([Job("assert sum(range(4)) == 6"), Job("assert 1 == 2"),
                                      Job("raise KeyError('x')")])
    assert ok == {"status": "passed", "detail": "", "passed": True}
    assert (wrong["status"], raising["status"]) == ("failed", "failed")
    assert raising["detail"] == "KeyError: 'x'"


def test_checks_run_in_the_judge_against_the_program(sandbox):
    double = "def f(x):\n    return 2 * x\n"
    assert run_one(sandbox, double, "f", "assert f(21) == 42")["passed"]
    assert run_one(sandbox, double, "f", "assert f(2) == 5")["detail"] == "AssertionError: "
    # An exception of a builtin type arrives as the judge's own: a check may catch it.
    raising = "def f(x):\n    raise ValueError('no ' + str(x))\n"
    catch = "try:\n    f(1)\nexcept ValueError as e:\n    assert str(e) == 'no 1'\nelse:\n    assert False\n"
    assert run_one(sandbox, raising, "f", catch)["passed"]
    assert run_one(sandbox, raising, "f", "f(3)")["detail"] == "ValueError: no 3"
    assert run_one(sandbox, "def g(): pass", "f", "f()")["detail"] == "NameError: the program defines no function 'f'"


def test_plain_data_round_trips_exactly():
    values = [None, True, 0, -7, 2**4000 + 1, 0.1, -0.0, math.inf, 1e-320, 1 + 2j, "é\ud800", b"\x00\xff",
              [1, [2, (3,)]], (), {1: "a", (2, "b"): frozenset({3})}, {0.5, "x"}, frozenset()]
    for value in values:
        back = wire.decode(json.loads(json.dumps(wire.encode(value))))
        assert type(back) is type(value) and (back == value or repr(back) == repr(value))
    assert math.isnan(wire.decode(wire.encode(math.nan)))
    for not_plain in (object(), True.__class__.__mro__, type("I", (int,), {})(1), [lambda: 0], {1: print}):
        with pytest.raises(wire.NotPlainData):
            wire.encode(not_plain)
    for forged in (1, 2.5, {"i": "1"}, ["i"], ["i", 1], ["x", "1"], ["l", "ab"], ["d", [[["l", []], None]]]):
        with pytest.raises(ValueError):
            wire.decode(forged)


def test_sleeping_program_hits_the_wall_clock_backstop(sandbox):
    verdict = run_one(sandbox, "import time\ntime.sleep(60)\n")
    assert verdict == {"status": "timed out", "detail": "wall-clock backstop", "passed": False}


def test_wall_timeouts_are_retried_with_a_longer_backstop():
    slow = Job("import time\ntime.sleep(0.8)\n")  # no CPU used: only the load-dependent wall limit can stop it
    with Sandbox(1, SandboxLimits(cpu_timeout=1.0, wall_timeout=0.5, retries=0), uid_base=UID_BASE + 10) as box:
        assert box.run([slow])[0]["status"] == "timed out"
    with Sandbox(1, SandboxLimits(cpu_timeout=1.0, wall_timeout=0.5, retries=1), uid_base=UID_BASE + 10) as box:
        assert box.run([slow])[0]["status"] == "passed"


@pytest.mark.parametrize("code", [
    "import sys\nsys.exit(0)\n",
    "import os\nos._exit(0)\n",
    "exit()\n",
    "raise SystemExit\n",
    "raise KeyboardInterrupt\n",
])
def test_exits_are_failures(sandbox, code):
    assert run_one(sandbox, code)["status"] == "failed"
    assert run_one(sandbox, code.replace("\n", "\n    ").join(["def f():\n    ", "\n"]), "f", "f()")["status"] == "failed"


def test_one_and_eight_workers_give_identical_verdicts():
    jobs = [Job(c) for c in ("assert 2 + 2 == 4", "assert 2 + 2 == 5", "import sys\nsys.exit(1)",
                             "x = bytearray(8 * 2**30)", "total = 0\nfor i in range(2 * 10**6):\n    total += i")]
    verdicts = []
    for workers in (1, 8):
        with Sandbox(workers, SandboxLimits(cpu_timeout=1.0, wall_timeout=20.0), uid_base=UID_BASE + 20) as box:
            verdicts.append([(v["status"], v["detail"]) for v in box.run(jobs)])
    assert verdicts[0] == verdicts[1]
    assert [s for s, _ in verdicts[0]] == ["passed", "failed", "failed", "failed", "passed"]


def test_cached_verdicts_are_reused(tmp_path, monkeypatch):
    cache = tmp_path / "cache.jsonl"
    jobs = [Job("assert True"), Job("assert False")]
    limits = SandboxLimits(cpu_timeout=1.0)
    with Sandbox(1, limits, cache_path=str(cache), uid_base=UID_BASE + 30) as box:
        first = box.run(jobs)
    with open(cache, "a") as f:
        f.write('{"key": "cut sho')  # a line cut short by a killed run
    with Sandbox(1, limits, cache_path=str(cache), uid_base=UID_BASE + 30) as box:
        assert box.run(jobs + [Job("assert 1")])[:2] == first  # appended after the cut-short line
    monkeypatch.setattr(Sandbox, "_execute", lambda self, job: pytest.fail("ran a cached job"))
    with Sandbox(1, limits, cache_path=str(cache), uid_base=UID_BASE + 30) as box:
        assert box.run(jobs + [Job("assert 1")]) == first + [{"status": "passed", "detail": "", "passed": True}]


def test_a_worker_that_dies_is_replaced_and_its_job_recorded_as_failed():
    with Sandbox(1, SandboxLimits(cpu_timeout=1.0, wall_timeout=5.0, retries=0), uid_base=UID_BASE + 40) as box:
        worker = box.all_workers[0]
        timer = threading.Timer(0.5, worker.proc.kill)
        timer.start()
        assert box.run([Job("import time\ntime.sleep(3)\n")])[0] == {
            "status": "failed", "detail": "the sandbox worker died", "passed": False}
        timer.join()
        assert box.all_workers[0] is not worker and box.run([Job("assert True")])[0]["passed"]


def test_each_program_starts_in_an_empty_working_directory():
    leave = "import os\nopen('left.txt', 'w').write('x')\nos.mkdir('sub')\nopen('sub/deeper.txt', 'w').write('y')\n"
    look = "import os\nassert os.listdir('.') == [], os.listdir('.')\n"
    with Sandbox(1, SandboxLimits(cpu_timeout=1.0), uid_base=UID_BASE + 50) as box:  # one worker: the same directory
        assert [v["status"] for v in box.run([Job(leave), Job(look), Job(leave + "#2"), Job(look + "#2")])] == [
            "passed"] * 4


UNISOLATED = """
import sys, warnings
sys.path.insert(0, {repo!r})
from megatron_lite.evaluation.sandbox import Job, Sandbox, SandboxLimits
from megatron_lite.errors import UserError
try:
    Sandbox(1, SandboxLimits(cpu_timeout=1.0))
except UserError as e:
    print("refused:", e)
with Sandbox(1, SandboxLimits(cpu_timeout=1.0), allow_unisolated=True) as box:
    print("unisolated verdicts:", [v["status"] for v in box.run([Job("def f(x): return x + 1", "f", "assert f(1) == 2"),
                                                               Job("while True: pass")])], box.isolated)
"""


@pytest.mark.skipif(not shutil.which("unshare"), reason="util-linux unshare makes the kernel refuse namespaces here")
def test_refuses_to_run_unisolated_unless_allowed():
    """Inside a user namespace whose limit on user namespaces is 0, as on a kernel that refuses them."""
    script = "echo 0 > /proc/sys/user/max_user_namespaces && exec \"$@\""
    proc = subprocess.run(["unshare", "--user", "--map-root-user", "sh", "-c", script, "sh", sys.executable, "-c",
                           UNISOLATED.format(repo=REPO)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "refused: humaneval: the kernel refused to isolate the sandbox (unshare: No space left on device)" in proc.stdout
    assert "unisolated verdicts: ['passed', 'timed out'] False" in proc.stdout
    assert proc.stderr.count("humaneval-allow-unisolated: completions run without isolation") == 1

