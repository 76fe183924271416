"""The Go tools the tests and benches run (helm, kwok, the Argo CD health-check harness).

Each comes from an explicit path in an environment variable, else from its build script: the
script builds the pinned tool once into ``~/.cache/finetune-operator`` (``tools/build-go-tool.sh``)
and afterwards only prints the cached binary's path, as its last line.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


class ToolError(RuntimeError):
    """A tool could not be found or built; the message says why and what to do."""


def locate(name: str, env_var: str, script: Path, *, error: type[ToolError] = ToolError,
           env: dict[str, str] | None = None, timeout: float = 1800) -> Path:
    """``$env_var`` if set, else the path ``script`` prints once the tool is built (building it now)."""
    rel = script.relative_to(REPO) if script.is_relative_to(REPO) else script
    explicit = os.environ.get(env_var)
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise error(f"{env_var}={explicit} is not an executable file; unset it to build {name} with {rel}")
        return Path(explicit)
    try:
        proc = subprocess.run(["bash", str(script)], env={**os.environ, **(env or {})}, text=True,
                              capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise error(f"{rel} did not build {name} within {timeout / 60:.0f} minutes") from exc
    if proc.returncode != 0 or not proc.stdout.strip():
        raise error(f"{name} is not built and {rel} failed (exit {proc.returncode}); it builds with the Go "
                    f"toolchain through the Go module proxy:\n{proc.stderr[-3000:]}")
    built = Path(proc.stdout.strip().splitlines()[-1])
    if not os.access(built, os.X_OK):
        raise error(f"{rel} printed {built}, which is not an executable; run `bash {rel}` to see why")
    return built
