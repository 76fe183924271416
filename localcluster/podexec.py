"""Container start helper: join the cgroup, enter private mount and UTS namespaces, mount, exec.

Run by the pod runner as ``python -I podexec.py SPEC.json`` (standard library only, so it
starts fast and needs no package import). The process keeps its pid through ``execve``, so
the runner's pid is the container's main process, as with a real runtime.

Exit codes before exec, mirroring runc: 127 when the command is not found, 128 when the
container could not be set up. Either way the reason is written to ``startErrorFile``
(which stays empty when the exec succeeds).
"""

from __future__ import annotations

import ctypes
import json
import os
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
MS_RDONLY = 1
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18

_libc = ctypes.CDLL(None, use_errno=True)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source: str | None, target: str, flags: int) -> None:
    _check(
        _libc.mount(
            source.encode() if source else None, target.encode(), None, ctypes.c_ulong(flags), None
        ),
        f"mount {source} on {target}",
    )


def _ensure_target(source: str, target: str, is_dir: bool) -> None:
    # The namespace only isolates mounts, not the filesystem: a missing mount point is created
    # on the host (an empty file or directory), as container runtimes do inside the rootfs.
    if is_dir:
        os.makedirs(target, exist_ok=True)
    elif not os.path.exists(target):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "a"):
            pass


def _same_file(path: str, fd: int) -> bool:
    try:
        a, b = os.stat(path), os.fstat(fd)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _which(cmd: str, path: str) -> str | None:
    if "/" in cmd:
        return cmd if os.access(cmd, os.X_OK) and not os.path.isdir(cmd) else None
    for d in path.split(":"):
        cand = os.path.join(d or ".", cmd)
        if os.access(cand, os.X_OK) and not os.path.isdir(cand):
            return cand
    return None


def main(spec_path: str) -> None:
    with open(spec_path) as f:
        spec = json.load(f)
    # Opened before any mount can hide its directory; non-inheritable, so closed by execve.
    error = os.fdopen(os.open(spec["startErrorFile"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), "w")
    try:
        # Join the memory cgroup first so everything the container allocates is counted.
        for procs in spec.get("cgroupProcs") or []:
            with open(procs, "w") as f:
                f.write(str(os.getpid()))
        # A UTS namespace too, so `hostname` answers the pod's name as in a container.
        _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWUTS), "unshare(CLONE_NEWNS|CLONE_NEWUTS)")
        hostname = spec.get("hostname")
        if hostname:
            raw = hostname.encode()
            _check(_libc.sethostname(raw, len(raw)), "sethostname")
        # Without this, our bind mounts would propagate back to the host's mount table.
        _mount(None, "/", MS_REC | MS_PRIVATE)
        ordered = sorted(spec.get("mounts") or [], key=lambda m: m["target"].count("/"))
        # Open every source before the first mount: a volume mounted over /tmp would otherwise
        # hide sources that live under /tmp (pytest's state directories do).
        fds = [os.open(m["source"], os.O_PATH) for m in ordered]
        # Outermost first: re-exposing the project also re-exposes an environment inside it.
        image_paths = sorted((p for p in spec.get("imagePaths") or [] if os.path.isdir(p)), key=lambda p: p.count("/"))
        image_fds = [(p, os.open(p, os.O_PATH)) for p in image_paths]
        for m, fd in zip(ordered, fds):
            _ensure_target(m["source"], m["target"], os.path.isdir(f"/proc/self/fd/{fd}"))
            _mount(f"/proc/self/fd/{fd}", m["target"], MS_BIND | MS_REC)
            if m.get("readOnly"):
                _mount(None, m["target"], MS_BIND | MS_REMOUNT | MS_RDONLY)
        for fd in fds:
            os.close(fd)
        for path, fd in image_fds:
            if not _same_file(path, fd):  # hidden by a volume mounted over one of its parents
                _ensure_target(path, path, True)
                _mount(f"/proc/self/fd/{fd}", path, MS_BIND | MS_REC)
            os.close(fd)
        env = spec["env"]
        workdir = spec.get("workingDir")
        if workdir:
            os.makedirs(workdir, exist_ok=True)
            os.chdir(workdir)
        argv = spec["argv"]
        if not argv:
            raise RuntimeError("no command specified")
        exe = _which(argv[0], env.get("PATH", ""))
        if exe is None:
            error.write(f'exec: "{argv[0]}": executable file not found in $PATH')
            error.close()
            os._exit(127)
        os.execve(exe, argv, env)
    except BaseException as e:  # noqa: BLE001 - every failure must become a start error
        error.write(f"failed to start container: {e}")
        error.close()
        os._exit(128)


if __name__ == "__main__":
    main(sys.argv[1])
