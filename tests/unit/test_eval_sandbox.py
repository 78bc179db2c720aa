"""The sandbox contains hostile programs, records them as failures, and gives load-independent verdicts."""

import os
import socket
import threading
import time

import pytest

from megatron_lite.evaluation.sandbox import Sandbox, SandboxLimits

pytestmark = pytest.mark.timeout(120)
IS_ROOT = os.geteuid() == 0
UID_BASE = 62000
# Deleting sys.modules['posix'] and importing it again brings back the functions the guard removed, so
# these programs test the limits underneath the guard (own uid, RLIMIT_NPROC, network namespace).
UNGUARDED = "import sys\ndel sys.modules['posix']\nimport posix\n"


def processes_of(uids):
    """Live pids owned by any of `uids`."""
    found = []
    for pid in os.listdir("/proc"):
        try:
            if pid.isdigit() and os.stat(f"/proc/{pid}").st_uid in uids:
                found.append(int(pid))
        except FileNotFoundError:
            pass
    return found


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(2, SandboxLimits(cpu_timeout=1.0, wall_timeout=2.0, nproc=8, retries=0), uid_base=UID_BASE) as box:
        yield box


def run_one(sandbox, program):
    return sandbox.run([program])[0]


def test_plain_programs(sandbox):
    ok, wrong, raising = sandbox.run(["assert sum(range(4)) == 6", "assert 1 == 2", "raise KeyError('x')"])
    assert ok == {"status": "passed", "detail": "", "passed": True}
    assert (wrong["status"], raising["status"]) == ("failed", "failed")
    assert raising["detail"] == "KeyError: 'x'"


def test_infinite_loop_times_out_on_cpu_time(sandbox):
    start = time.monotonic()
    verdict = run_one(sandbox, "while True:\n    pass\n")
    assert verdict["status"] == "timed out" and verdict["detail"].startswith("cpu time limit")
    assert time.monotonic() - start < 10


def test_sleeping_program_hits_the_wall_clock_backstop(sandbox):
    verdict = run_one(sandbox, "import time\ntime.sleep(60)\n")
    assert verdict == {"status": "timed out", "detail": "wall-clock backstop", "passed": False}


def test_wall_timeouts_are_retried_with_a_longer_backstop():
    slow = "import time\ntime.sleep(0.8)\n"  # no CPU used: only the load-dependent wall limit can stop it
    with Sandbox(1, SandboxLimits(cpu_timeout=1.0, wall_timeout=0.5, retries=0), uid_base=UID_BASE + 10) as box:
        assert run_one(box, slow)["status"] == "timed out"
    with Sandbox(1, SandboxLimits(cpu_timeout=1.0, wall_timeout=0.5, retries=1), uid_base=UID_BASE + 10) as box:
        assert run_one(box, slow)["status"] == "passed"


@pytest.mark.parametrize("program", [
    "import sys\nsys.exit(0)\n",
    "import os\nos._exit(0)\n",
    "exit()\n",
    "raise SystemExit\n",
    "raise KeyboardInterrupt\n",
])
def test_exits_are_failures(sandbox, program):
    assert run_one(sandbox, program)["status"] == "failed"


@pytest.mark.parametrize("program", [
    "x = bytearray(8 * 2**30)\n",
    "x = [0] * (2**31)\n",
    "x = ' ' * (2**33)\n",
])
def test_huge_allocations_fail_with_memory_error(sandbox, program):
    verdict = run_one(sandbox, program)
    assert verdict["status"] == "failed" and "MemoryError" in verdict["detail"]


def test_fork_bomb_is_contained(sandbox):
    guarded = "import os\nwhile True:\n    os.fork()\n"
    assert run_one(sandbox, guarded)["status"] == "failed"  # os.fork is gone
    bomb = UNGUARDED + "while True:\n    try:\n        posix.fork()\n    except OSError:\n        pass\n"
    if not IS_ROOT:
        pytest.skip("the unguarded fork bomb is only run where the sandbox has a uid of its own (root)")
    verdict = run_one(sandbox, bomb)
    assert not verdict["passed"]
    assert processes_of({UID_BASE, UID_BASE + 1}) == []  # every forked process was killed and reaped
    assert run_one(sandbox, "assert True")["passed"]  # the workers are fine afterwards


def test_escaped_process_is_killed(sandbox):
    if not IS_ROOT:
        pytest.skip("killing processes that leave the process group needs a sandbox uid of its own (root)")
    escape = UNGUARDED + "if posix.fork() == 0:\n    posix.setsid()\n    while True:\n        pass\n"
    assert run_one(sandbox, escape)["passed"]  # the parent finishes normally
    assert processes_of({UID_BASE, UID_BASE + 1}) == []


def test_files_outside_the_working_directory_survive(sandbox, tmp_path):
    victim = tmp_path / "keep" / "precious.txt"
    victim.parent.mkdir()
    victim.write_text("data")
    attempts = [f"import os\nos.remove({str(victim)!r})\n", f"import shutil\nshutil.rmtree({str(victim.parent)!r})\n"]
    if IS_ROOT:  # with a uid of its own it can neither overwrite our files nor unlink them with the guard undone
        attempts += [f"open({str(victim)!r}, 'w').write('')\n", UNGUARDED + f"posix.unlink({str(victim)!r})\n"]
    for program in attempts:
        assert run_one(sandbox, program)["status"] == "failed", program
    assert victim.read_text() == "data"
    # Its own temporary working directory is writable and removed afterwards.
    assert run_one(sandbox, "open('scratch.txt', 'w').write('x')\nimport os\nassert os.listdir('.') == ['scratch.txt']")[
        "passed"]


def test_no_network(sandbox):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    port = server.getsockname()[1]
    attempts = [f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\n",
                "import urllib.request\nurllib.request.urlopen('http://example.com', timeout=1)\n"]
    if IS_ROOT:
        attempts.append(f"import sys\ndel sys.modules['_socket']\nimport _socket\n"
                        f"s = _socket.socket()\ns.settimeout(1)\ns.connect(('127.0.0.1', {port}))\n")
    try:
        for program in attempts:
            assert run_one(sandbox, program)["status"] == "failed", program
        with pytest.raises(socket.timeout):
            server.accept()
    finally:
        server.close()


def test_killing_the_parents_is_contained(sandbox):
    attempts = ["import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n",
                "import os, signal\nos.killpg(os.getpgid(os.getppid()), signal.SIGKILL)\n",
                UNGUARDED + "posix.kill(posix.getppid(), 9)\n"]  # the worker: EPERM as root, else it is replaced
    if IS_ROOT:
        attempts.append(UNGUARDED + f"posix.kill({os.getpid()}, 9)\n")  # this test process
    for program in attempts:
        assert run_one(sandbox, program)["status"] == "failed", program
    assert run_one(sandbox, "assert True")["passed"]


def test_one_and_eight_workers_give_identical_verdicts():
    programs = ["assert 2 + 2 == 4", "assert 2 + 2 == 5", "import sys\nsys.exit(1)", "x = bytearray(8 * 2**30)",
                "total = 0\nfor i in range(2 * 10**6):\n    total += i\nassert total > 0"]  # loops: humaneval test
    verdicts = []
    for workers in (1, 8):
        with Sandbox(workers, SandboxLimits(cpu_timeout=1.0, wall_timeout=20.0), uid_base=UID_BASE + 20) as box:
            verdicts.append([(v["status"], v["detail"]) for v in box.run(programs)])
    assert verdicts[0] == verdicts[1]
    assert [s for s, _ in verdicts[0]] == ["passed", "failed", "failed", "failed", "passed"]


def test_cached_verdicts_are_reused(tmp_path, monkeypatch):
    cache = tmp_path / "cache.jsonl"
    programs = ["assert True", "assert False"]
    limits = SandboxLimits(cpu_timeout=1.0)
    with Sandbox(1, limits, cache_path=str(cache), uid_base=UID_BASE + 30) as box:
        first = box.run(programs)
    with open(cache, "a") as f:
        f.write('{"key": "cut sho')  # a line cut short by a killed run
    with Sandbox(1, limits, cache_path=str(cache), uid_base=UID_BASE + 30) as box:
        assert box.run(programs + ["assert 1"])[:2] == first  # appended after the cut-short line
    monkeypatch.setattr(Sandbox, "_execute", lambda self, program: pytest.fail("ran a cached program"))
    with Sandbox(1, limits, cache_path=str(cache), uid_base=UID_BASE + 30) as box:
        assert box.run(programs + ["assert 1"]) == first + [{"status": "passed", "detail": "", "passed": True}]


def test_a_worker_that_dies_is_replaced_and_its_program_recorded_as_failed():
    """What a program that kills its worker causes (possible without root): the run goes on."""
    with Sandbox(1, SandboxLimits(cpu_timeout=1.0, wall_timeout=5.0, retries=0), uid_base=UID_BASE + 40) as box:
        worker = box.all_workers[0]
        timer = threading.Timer(0.5, worker.proc.kill)
        timer.start()
        assert run_one(box, "import time\ntime.sleep(3)\n") == {
            "status": "failed", "detail": "the sandbox worker died", "passed": False}
        timer.join()
        assert box.all_workers[0] is not worker and run_one(box, "assert True")["passed"]


def test_each_program_starts_in_an_empty_working_directory():
    leave = "import os\nopen('left.txt', 'w').write('x')\nos.mkdir('sub')\nopen('sub/deeper.txt', 'w').write('y')\n"
    look = "import os\nassert os.listdir('.') == [], os.listdir('.')\n"
    with Sandbox(1, SandboxLimits(cpu_timeout=1.0), uid_base=UID_BASE + 50) as box:  # one worker: the same directory
        assert [v["status"] for v in box.run([leave, look, leave + "#2", look + "#2"])] == ["passed"] * 4
