"""Container memory limits: a memory cgroup per container where the host lets us, else RSS polling.

Detected once per process: cgroup v2 (``memory.max``, ``memory.events`` oom_kill), cgroup v1
(``memory.limit_in_bytes``, ``memory.oom_control`` oom_kill) nested under our own cgroup, or
neither (the runner then sums the resident set of the container's session every tick and
kills it when it goes over, which is what the kernel would have done, only later).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

_CGROOT = Path("/sys/fs/cgroup")


def _own_cgroup(controller: str | None) -> str | None:
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, ctrls, path = line.split(":", 2)
        if controller is None and ctrls == "":
            return path
        if controller is not None and controller in ctrls.split(","):
            return path
    return None


def _try_parent(base: Path, limit_file: str) -> Path | None:
    probe = base / f"localcluster-probe-{os.getpid()}"
    try:
        probe.mkdir()
        ok = (probe / limit_file).exists()
        probe.rmdir()
        return base if ok else None
    except OSError:
        return None


class ContainerCgroup:
    """One container's memory cgroup."""

    def __init__(self, path: Path, version: int) -> None:
        self.path = path
        self.version = version

    @property
    def procs_file(self) -> str:
        return str(self.path / "cgroup.procs")

    def oom_kills(self) -> int:
        """How many processes the kernel's OOM killer killed in this cgroup."""
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        try:
            for line in (self.path / name).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except OSError:
            pass
        return 0

    def pids(self) -> list[int]:
        try:
            return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]
        except OSError:
            return []

    def kill_all(self) -> None:
        """SIGKILL every process in the cgroup (memory.oom.group semantics)."""
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def remove(self) -> None:
        """Delete the cgroup once its processes are gone (retries briefly)."""
        for _ in range(20):
            self.kill_all()
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.1)


class MemoryLimiter:
    """Creates per-container memory cgroups under one parent, if the host allows it."""

    def __init__(self, name: str) -> None:
        self.version = 0
        self.parent: Path | None = None
        if os.environ.get("FTO_MEMORY_LIMITS") == "poll":
            return
        v2_own = _own_cgroup(None)
        if (_CGROOT / "cgroup.controllers").exists() and v2_own is not None:
            controllers = (_CGROOT / "cgroup.controllers").read_text().split()
            if "memory" in controllers:
                base = _try_parent(_CGROOT, "memory.max")
                if base:
                    self._init(base / name, 2)
                    return
        v1_own = _own_cgroup("memory")
        if v1_own is not None and (_CGROOT / "memory").is_dir():
            base = _try_parent(_CGROOT / "memory" / v1_own.lstrip("/"), "memory.limit_in_bytes")
            if base:
                self._init(base / name, 1)

    def _init(self, parent: Path, version: int) -> None:
        try:
            parent.mkdir(exist_ok=True)
            if version == 2:
                # Children only get a memory.max if the parent delegates the controller.
                (parent.parent / "cgroup.subtree_control").write_text("+memory")
                (parent / "cgroup.subtree_control").write_text("+memory")
        except OSError:
            return
        self.parent, self.version = parent, version

    @property
    def mode(self) -> str:
        return {0: "rss-polling", 1: "cgroup-v1", 2: "cgroup-v2"}[self.version]

    def create(self, name: str, limit_bytes: int) -> ContainerCgroup | None:
        """A cgroup limited to ``limit_bytes``, or None when falling back to polling."""
        if self.parent is None:
            return None
        path = self.parent / name
        try:
            path.mkdir(exist_ok=True)
            if self.version == 2:
                (path / "memory.max").write_text(str(limit_bytes))
                (path / "memory.swap.max").write_text("0") if (path / "memory.swap.max").exists() else None
                # Kill the whole container on OOM, as the kubelet configures it on cgroup v2.
                if (path / "memory.oom.group").exists():
                    (path / "memory.oom.group").write_text("1")
            else:
                (path / "memory.limit_in_bytes").write_text(str(limit_bytes))
        except OSError:
            return None
        return ContainerCgroup(path, self.version)

    def remove_parent(self) -> None:
        """Remove the parent cgroup (after every container cgroup is gone)."""
        if self.parent is not None:
            for child in self.parent.iterdir() if self.parent.exists() else []:
                if child.is_dir():
                    ContainerCgroup(child, self.version).remove()
            try:
                self.parent.rmdir()
            except OSError:
                pass


def session_processes(sid: int) -> Iterator[Path]:
    """The /proc entries of every process in session ``sid`` (its leader included)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
            fields = raw[raw.rindex(")") + 2 :].split()
            if int(entry.name) == sid or int(fields[3]) == sid:
                yield entry
        except (OSError, ValueError, IndexError):
            continue


def session_rss_bytes(sid: int) -> int:
    """Total resident memory of every process in session ``sid`` (the polling fallback)."""
    page = os.sysconf("SC_PAGE_SIZE")
    total = 0
    for entry in session_processes(sid):
        try:
            total += int((entry / "statm").read_text().split()[1]) * page
        except (OSError, ValueError, IndexError):
            continue
    return total
