"""Several GPUs on one node: `finetune-trainer` starts one worker per GPU through torchrun.

Why not make torchrun the container's entry point: on SIGTERM torchrun exits with its own code,
not the contract's 13, and the workers' termination messages would be lost. Here the launcher
stays the container's main process, passes SIGTERM to every worker at once (so each can save
its part of the checkpoint), and exits with the most telling worker result.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from types import FrameType
from typing import Any

from .errors import ExitCode, write_termination, write_termination_text

RANK_DIR_ENV = "FINETUNE_RANK_TERMINATION_DIR"  # read by errors.termination_path
NPROC_ENV = "FINETUNE_NPROC_PER_NODE"


def nproc_per_node() -> int:
    """Workers to start: FINETUNE_NPROC_PER_NODE, else one per visible GPU; 1 inside torchrun."""
    if "WORLD_SIZE" in os.environ:
        return 1
    if os.environ.get(NPROC_ENV):
        return int(os.environ[NPROC_ENV])
    import torch

    return max(1, int(torch.cuda.device_count()))


def _pick(messages: dict[int, dict[str, Any]]) -> dict[str, Any] | None:
    """Rank 0's result unless it is only the echo ('Other') of another rank's specific failure."""
    if not messages:
        return None
    first = messages.get(0)
    if first and first.get("exitCode") != ExitCode.OTHER:
        return first
    specific = [m for _, m in sorted(messages.items()) if m.get("exitCode") not in (ExitCode.OTHER, ExitCode.SUCCEEDED)]
    return specific[0] if specific else first or messages[min(messages)]


def launch(argv: list[str], nproc: int) -> int:
    rank_dir = tempfile.mkdtemp(prefix="finetune-ranks-")
    env = dict(os.environ)
    env[RANK_DIR_ENV] = rank_dir
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    cmd += ["-m", "finetune_trainer", *argv]
    # Own process group: one SIGTERM reaches torchrun and every worker together.
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)

    def forward(signum: int, frame: FrameType | None) -> None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        rc = proc.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
    messages: dict[int, dict[str, Any]] = {}
    for name in os.listdir(rank_dir):
        try:
            with open(os.path.join(rank_dir, name), encoding="utf-8") as f:
                messages[int(name.split("-")[1].split(".")[0])] = json.load(f)
        except (OSError, ValueError):
            continue
    chosen = _pick(messages)
    if chosen is None:
        write_termination(ExitCode.OTHER, f"workers exited with {rc} without a termination message")
        return int(ExitCode.OTHER)
    write_termination_text(json.dumps(chosen, separators=(",", ":")))
    return int(chosen.get("exitCode", ExitCode.OTHER))
