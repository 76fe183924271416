"""The three packages type-check under ``mypy --strict`` (STYLE.md: typed throughout).

The configuration is pyproject.toml's ``[tool.mypy]`` (which third-party modules are not followed,
and why). The cache lives outside the repo, so a warm run takes seconds and a cold one well under
a minute.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("finetune_operator", "finetune_trainer", "localcluster")


def _cache_dir() -> Path:
    root = os.environ.get("FTO_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "finetune-operator") / "mypy"


def test_packages_pass_mypy_strict() -> None:
    args = [sys.executable, "-m", "mypy", "--strict", "--config-file", str(REPO / "pyproject.toml"),
            "--cache-dir", str(_cache_dir()), "--no-error-summary", "--no-pretty"]
    for package in PACKAGES:
        args += ["-p", package]
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600)
    findings = [line for line in proc.stdout.splitlines() if ": error:" in line]
    assert proc.returncode == 0 and not findings, (
        f"mypy --strict found {len(findings)} problem(s):\n" + "\n".join(findings[:60]) + "\n" + proc.stderr[-2000:]
    )
