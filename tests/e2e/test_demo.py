"""`make demo`, exactly as the README tells a user to run it, passes end to end."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_make_demo(tmp_path: Path) -> None:
    env = {**os.environ, "DEMO_ARGS": f"--state-dir {tmp_path / 'demo'} --timeout 600"}
    proc = subprocess.run(["make", "demo"], cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    assert "state=Succeeded" in output
    assert "adapter: s3://" in output
    lines = output.splitlines()
    header = next(line for line in lines if line.startswith("NAME"))
    for column in ("STATE", "MODEL", "GPU", "PROGRESS", "LOSS", "AGE"):
        assert column in header
    # Everything the demo started is stopped again.
    assert "still running after down" not in output
