"""Runs the chart's Argo CD health check (health.lua) in gopher-lua, the Lua VM Argo CD embeds,
through the small Go harness in ``tools/luahealth`` (built once and cached by its sources' hash)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from localcluster import tools

REPO = Path(__file__).resolve().parents[1]
HARNESS = REPO / "tools" / "luahealth"
CHECK_DIR = REPO / "charts" / "finetune-operator" / "files" / "argocd" / "resource_customizations" / "finetune.dev" / "FineTuneJob"
HEALTH_LUA = CHECK_DIR / "health.lua"


class HarnessError(tools.ToolError):
    """The harness could not be built or run."""


def harness() -> Path:
    """``$FTO_LUAHEALTH``, else the cached build of ``tools/luahealth/build.sh`` (building it once)."""
    return tools.locate("the Argo CD health-check harness", "FTO_LUAHEALTH", HARNESS / "build.sh",
                        error=HarnessError, timeout=900)


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
