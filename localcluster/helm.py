"""The pinned helm the chart tests render, lint and install the chart with, and the chart's
every-key values file (``ci/full-values.yaml``): one place for the unit and integration tiers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from localcluster import tools

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "finetune-operator"
FULL_VALUES = CHART / "ci" / "full-values.yaml"
BUILD_SCRIPT = REPO / "charts" / "build-helm.sh"
HELM_VERSION = "3.22.0"
# Render for the Kubernetes the local cluster runs. Explicit, because a helm built by plain
# `go install` lacks the ldflags that set its default (v1.20.0, below the chart's kubeVersion).
KUBE_VERSION = "1.36.3"


class HelmError(tools.ToolError):
    """helm could not be found or built."""


def locate() -> Path:
    """``$FTO_HELM``, else the pinned build of ``charts/build-helm.sh`` (building it once)."""
    return tools.locate("helm", "FTO_HELM", BUILD_SCRIPT, error=HelmError, env={"HELM_VERSION": HELM_VERSION})


def full_values() -> dict[str, Any]:
    """Every key of values.schema.json, each set to a value other than its default."""
    values: dict[str, Any] = yaml.safe_load(FULL_VALUES.read_text())
    return values
