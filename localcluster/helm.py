"""The pinned helm the chart tests render, lint and install the chart with, and the chart's
every-key values file (``ci/full-values.yaml``): one place for the unit and integration tiers."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "finetune-operator"
FULL_VALUES = CHART / "ci" / "full-values.yaml"
BUILD_SCRIPT = REPO / "charts" / "build-helm.sh"
HELM_VERSION = "3.22.0"
# Render for the Kubernetes the local cluster runs. Explicit, because a helm built by plain
# `go install` lacks the ldflags that set its default (v1.20.0, below the chart's kubeVersion).
KUBE_VERSION = "1.36.3"


class HelmError(RuntimeError):
    """helm could not be found or built."""


def locate() -> Path:
    """``$FTO_HELM``, else the cached pinned build, else build it with ``charts/build-helm.sh``."""
    explicit = os.environ.get("FTO_HELM")
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise HelmError(f"FTO_HELM={explicit} is not an executable file")
        return Path(explicit)
    cache = Path(os.environ.get("FTO_CACHE", Path.home() / ".cache" / "finetune-operator"))
    cached = cache / "tools" / f"helm-v{HELM_VERSION}" / "helm"
    if os.access(cached, os.X_OK):
        return cached
    try:
        proc = subprocess.run(["bash", str(BUILD_SCRIPT)], env={**os.environ, "HELM_VERSION": HELM_VERSION},
                              text=True, capture_output=True, timeout=1800)
    except subprocess.TimeoutExpired as exc:
        raise HelmError("charts/build-helm.sh did not finish within 30 minutes") from exc
    if proc.returncode != 0 or not proc.stdout.strip():
        raise HelmError(f"helm is not installed and charts/build-helm.sh failed ({proc.returncode}): {proc.stderr[-3000:]}")
    built = Path(proc.stdout.strip().splitlines()[-1])
    if not os.access(built, os.X_OK):
        raise HelmError(f"charts/build-helm.sh printed {built}, which is not an executable")
    return built


def full_values() -> dict[str, Any]:
    """Every key of values.schema.json, each set to a value other than its default."""
    values: dict[str, Any] = yaml.safe_load(FULL_VALUES.read_text())
    return values
