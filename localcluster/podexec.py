"""Container start helper: join the cgroup, enter private mount and UTS namespaces, mount, exec.

Run by the pod runner as ``python -I podexec.py SPEC.json`` (standard library only, so it
starts fast and needs no package import). The process keeps its pid through ``execve``, so
the runner's pid is the container's main process, as with a real runtime.

Exit codes before exec, mirroring runc: 127 when the command is not found, 128 when the
container could not be set up. Either way the reason is written to ``startErrorFile``.
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


def _ensure_target(source: str, target: str) -> None:
    # The namespace only isolates mounts, not the filesystem: a missing mount point is created
    # on the host (an empty file or directory), as container runtimes do inside the rootfs.
    if os.path.isdir(source):
        os.makedirs(target, exist_ok=True)
    elif not os.path.exists(target):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "a"):
            pass


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
    error_file = spec["startErrorFile"]
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
        for m in sorted(spec.get("mounts") or [], key=lambda m: m["target"].count("/")):
            _ensure_target(m["source"], m["target"])
            _mount(m["source"], m["target"], MS_BIND | MS_REC)
            if m.get("readOnly"):
                _mount(None, m["target"], MS_BIND | MS_REMOUNT | MS_RDONLY)
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
            with open(error_file, "w") as f:
                f.write(f'exec: "{argv[0]}": executable file not found in $PATH')
            os._exit(127)
        os.execve(exe, argv, env)
    except BaseException as e:  # noqa: BLE001 - every failure must become a start error
        with open(error_file, "w") as f:
            f.write(f"failed to start container: {e}")
        os._exit(128)


if __name__ == "__main__":
    main(sys.argv[1])
