"""Background processes recorded by pid files, so ``down`` can stop exactly what ``up`` started.

A pid file holds the pid and the process's start time (field 22 of /proc/<pid>/stat): a pid
that was recycled by an unrelated process after ours died is never signalled.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence


@dataclass(frozen=True)
class Recorded:
    """One process recorded in ``<state>/pids/<name>.pid``."""

    name: str
    pid: int
    start_time: str


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces; everything after the last ')' is fixed.
    return raw[raw.rindex(")") + 2 :].split()


def start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` in clock ticks, or None if it is gone."""
    fields = _stat_fields(pid)
    return fields[19] if fields else None


def is_running(pid: int, started: str | None = None) -> bool:
    """True if ``pid`` exists, is not a zombie and (if given) started at ``started``."""
    fields = _stat_fields(pid)
    if not fields or fields[0] in ("Z", "X"):
        return False
    return started is None or fields[19] == started


def _reap(pid: int) -> None:
    # Processes started by this very Python process (the pytest fixture) stay zombies until
    # waited for; reaping them is harmless when they are someone else's children.
    child = _CHILDREN.get(pid)
    if child is not None:
        if child.poll() is not None:
            del _CHILDREN[pid]
        return
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


# Popen objects of the children started by this process: kept so they are reaped when
# stopped (no zombies in a long pytest session) and never garbage-collected while running
# (which would warn with a ResourceWarning).
_CHILDREN: dict[int, "subprocess.Popen[bytes]"] = {}


def adopt(proc: "subprocess.Popen[bytes]") -> None:
    """Keep ``proc`` so a later :func:`terminate` reaps it."""
    _CHILDREN[proc.pid] = proc


class ProcessTable:
    """The pid files under ``<state>/pids``."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir / "pids"
        self.logs = state_dir / "logs"

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> int:
        """Start ``argv`` detached in its own session, log to ``logs/<name>.log``, record it."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        with open(self.logs / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
                close_fds=True,
            )
        adopt(proc)
        started = start_time(proc.pid) or ""
        (self.dir / f"{name}.pid").write_text(f"{proc.pid} {started}\n")
        return proc.pid

    def record(self, name: str, pid: int) -> None:
        """Record a process started elsewhere (e.g. the S3 server) so ``down`` stops it."""
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / f"{name}.pid").write_text(f"{pid} {start_time(pid) or ''}\n")

    def recorded(self) -> list[Recorded]:
        """Every recorded process, running or not."""
        out = []
        for f in sorted(self.dir.glob("*.pid")) if self.dir.is_dir() else []:
            parts = f.read_text().split()
            if not parts:
                continue
            out.append(Recorded(f.stem, int(parts[0]), parts[1] if len(parts) > 1 else ""))
        return out

    def running(self) -> list[Recorded]:
        """Recorded processes that are still alive."""
        return [r for r in self.recorded() if is_running(r.pid, r.start_time or None)]

    def stop(self, name: str, grace: float = 10.0) -> bool:
        """SIGTERM the recorded process (and its session), SIGKILL after ``grace``; True if gone."""
        pidfile = self.dir / f"{name}.pid"
        rec = next((r for r in self.recorded() if r.name == name), None)
        if rec is None:
            return True
        ok = terminate(rec.pid, rec.start_time or None, grace)
        if ok:
            pidfile.unlink(missing_ok=True)
        return ok

    def stop_all(self, order: Sequence[str] = (), grace: float = 10.0) -> list[str]:
        """Stop named processes first in ``order``, then the rest; return names left running."""
        names = [r.name for r in self.recorded()]
        ordered = [n for n in order if n in names] + [n for n in names if n not in order]
        return [n for n in ordered if not self.stop(n, grace)]


def terminate(pid: int, started: str | None, grace: float) -> bool:
    """Stop one process and its session: SIGTERM, wait ``grace`` seconds, SIGKILL."""
    if not is_running(pid, started):
        _reap(pid)
        if start_time(pid) is None:
            # The leader is gone but its session may live on (a shell's background child).
            # A session id cannot be reused while any member exists, so these are ours.
            _signal_session(pid, signal.SIGKILL, leader=False)
        return True
    _signal_session(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        _reap(pid)
        if not is_running(pid, started):
            break
        time.sleep(0.1)
    else:
        _signal_session(pid, signal.SIGKILL)
        for _ in range(50):
            _reap(pid)
            if not is_running(pid, started):
                break
            time.sleep(0.1)
    # Leftover session members (e.g. children of a killed shell) die with SIGKILL.
    _signal_session(pid, signal.SIGKILL, leader=False)
    return not is_running(pid, started)


def _signal_session(pid: int, sig: signal.Signals, leader: bool = True) -> None:
    """Signal every process whose session id is ``pid`` (our processes lead their session)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        other = int(entry.name)
        if other == pid and not leader:
            continue
        fields = _stat_fields(other)
        if fields is None:
            continue
        if other == pid or int(fields[3]) == pid:
            try:
                os.kill(other, sig)
            except ProcessLookupError:
                pass
