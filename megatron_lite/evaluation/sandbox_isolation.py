"""The kernel's isolation for the sandbox (stdlib only; no root needed where user namespaces are allowed).

New user, mount, network, PID, IPC and UTS namespaces; every mount remounted read-only; private directories
hidden under empty read-only tmpfs, with the standard library bound back wherever Python is installed; a
size-limited tmpfs to work in. Each program then drops into a user namespace of its own, below the zygote's,
so it holds no capability over the zygote, its mounts or its namespaces.
"""

import ctypes
import os
import re

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x20000, 0x4000000, 0x8000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
NAMESPACES = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
# A remount must repeat these: the kernel refuses to clear them on a mount locked by a user namespace.
KEPT_FLAGS = MS_NOSUID | MS_NODEV | MS_NOEXEC | 1024 | 2048 | 4096  # ... | NOATIME | NODIRATIME | RELATIME
MNT_DETACH = 2
PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS = 4, 38
# Where secrets and other users' files live; each program gets an empty /tmp of its own.
HIDDEN = ("/tmp", "/var/tmp", "/run", "/dev/shm", "/home", "/root", "/sys", "/mnt", "/media")
WORKDIR = "/tmp"

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str):
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _c(text):
    return None if text is None else text.encode()


def unshare(flags: int):
    _check(_libc.unshare(flags), "unshare")


def mount(source, target: str, fstype, flags: int, data=None):
    _check(_libc.mount(_c(source), _c(target), _c(fstype), ctypes.c_ulong(flags), _c(data)), f"mount {target}")


def prctl(option: int, value: int):
    _check(_libc.prctl(option, ctypes.c_ulong(value), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0)),
           "prctl")


def is_under(path: str, dirs) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in dirs)


def mount_points():
    """Mount points of this mount namespace, parents first (mountinfo escapes spaces as octal)."""
    with open("/proc/self/mountinfo") as f:
        return [re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4]) for line in f]


def make_read_only(hidden):
    """Remount every mount read-only; one that cannot be and stays visible (not under `hidden`) is an error."""
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing we mount propagates anywhere
    for point in mount_points():
        try:
            kept = os.statvfs(point).f_flag & KEPT_FLAGS
            mount(None, point, None, MS_REMOUNT | MS_BIND | MS_RDONLY | kept)
        except OSError as e:
            if not is_under(point, hidden):
                raise OSError(e.errno, f"cannot make {point} read-only: {os.strerror(e.errno)}") from None


def open_dirs(paths) -> dict:
    """path -> an O_PATH descriptor, to bind it back once what lies above it is hidden."""
    return {p: os.open(p, os.O_PATH | os.O_DIRECTORY) for p in dict.fromkeys(paths) if os.path.isdir(p)}


def _empty_tmpfs(path: str, size: str, read_only: bool):
    mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV | (MS_RDONLY if read_only else 0), f"size={size},mode=755")


def hide(hidden, kept: dict):
    """Empty tmpfs over each hidden directory, the `kept` ones (open_dirs) bound back, then all read-only.

    Needs the namespace's own uid (a file in the new tmpfs needs an owner the namespace maps)."""
    hidden = [d for d in hidden if os.path.isdir(d) and not os.path.islink(d)]
    outer = [d for d in hidden if not is_under(d, kept)]
    for path in outer:
        _empty_tmpfs(path, "64k", read_only=False)
    for path, fd in kept.items():
        if is_under(path, outer):
            os.makedirs(path, exist_ok=True)
            mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
            mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | (os.statvfs(path).f_flag & KEPT_FLAGS))
        os.close(fd)
    for path in outer:
        mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    for path in hidden:  # inside kept directories: the site-packages under a standard library
        if path not in outer:
            _empty_tmpfs(path, "4k", read_only=True)


def mount_proc():
    """A /proc of our own PID namespace (it lists only the sandbox's processes); where the kernel refuses (a
    container that masks parts of its /proc), an empty one."""
    try:
        mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    except OSError:
        _empty_tmpfs("/proc", "4k", read_only=True)


def fresh_workdir(size_mb: int, replace: bool):
    """An empty tmpfs of `size_mb` at WORKDIR (over the hiding one), or in place of the previous program's."""
    if replace:
        _check(_libc.umount2(_c(WORKDIR), MNT_DETACH), f"umount {WORKDIR}")
    mount("tmpfs", WORKDIR, "tmpfs", MS_NOSUID | MS_NODEV, f"size={size_mb}m,mode=700")


def drop_into_own_user_namespace():
    """Become root of a new user namespace below ours: no capability over anything of the zygote's."""
    unshare(CLONE_NEWUSER)
    prctl(PR_SET_DUMPABLE, 1)  # the zygote's setting would leave our /proc files to the global root
    try:
        for name, text in (("setgroups", "deny"), ("uid_map", "0 0 1"), ("gid_map", "0 0 1")):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
    except OSError:
        pass  # no /proc of ours: the program sees itself as the overflow uid, and nothing else changes
