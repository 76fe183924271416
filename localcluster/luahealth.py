"""Runs the chart's Argo CD health check (health.lua) in gopher-lua, the Lua VM Argo CD embeds,
through the small Go harness in ``tools/luahealth`` (built once and cached by its sources' hash)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
HARNESS = REPO / "tools" / "luahealth"
CHECK_DIR = REPO / "charts" / "finetune-operator" / "files" / "argocd" / "resource_customizations" / "finetune.dev" / "FineTuneJob"
HEALTH_LUA = CHECK_DIR / "health.lua"


class HarnessError(RuntimeError):
    """The harness could not be built or run."""


def harness() -> Path:
    """``$FTO_LUAHEALTH``, else the cached build of ``tools/luahealth/build.sh`` (building it once)."""
    explicit = os.environ.get("FTO_LUAHEALTH")
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise HarnessError(f"FTO_LUAHEALTH={explicit} is not an executable file")
        return Path(explicit)
    try:
        proc = subprocess.run(["bash", str(HARNESS / "build.sh")], text=True, capture_output=True, timeout=900)
    except subprocess.TimeoutExpired as exc:
        raise HarnessError("tools/luahealth/build.sh did not finish within 15 minutes") from exc
    if proc.returncode != 0 or not proc.stdout.strip():
        raise HarnessError(f"tools/luahealth/build.sh failed ({proc.returncode}): {proc.stderr[-3000:]}")
    return Path(proc.stdout.strip().splitlines()[-1])


def evaluate(objects: Iterable[dict[str, Any]], script: Path = HEALTH_LUA, binary: Path | None = None) -> list[dict[str, str]]:
    """The health (``{"status", "message"}`` or ``{"error"}``) Argo CD's Lua VM gives each object."""
    lines = "".join(json.dumps(o) + "\n" for o in objects)
    proc = subprocess.run([str(binary or harness()), str(script)], input=lines, text=True, capture_output=True, timeout=60)
    if proc.returncode != 0:
        raise HarnessError(f"luahealth exited {proc.returncode}: {proc.stderr[-3000:]}")
    return [json.loads(line) for line in proc.stdout.splitlines()]


def load_cases(check_dir: Path = CHECK_DIR) -> list[tuple[str, dict[str, Any], dict[str, str]]]:
    """``health_test.yaml`` in Argo CD's layout: (inputPath, object, expected healthStatus)."""
    spec = yaml.safe_load((check_dir / "health_test.yaml").read_text())
    cases = []
    for case in spec["tests"]:
        obj = yaml.safe_load((check_dir / case["inputPath"]).read_text())
        cases.append((str(case["inputPath"]), obj, dict(case["healthStatus"])))
    return cases
