"""The fleet file: which simulated nodes exist, their GPUs and their capacity."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DEFAULT_FLEET = Path(__file__).with_name("fleet.yaml")


@dataclass(frozen=True)
class Gpu:
    """One node's GPUs as GPU Feature Discovery would describe them."""

    product: str
    memory_mib: int
    count: int
    compute_major: int
    compute_minor: int
    family: str
    driver_major: int | None = None
    """The CUDA driver's major version GFD reports (nvidia.com/cuda.driver-version.major); None: unlabelled."""


@dataclass(frozen=True)
class FakeMode:
    """Complete pods after ``delay_seconds`` with ``exit_code`` instead of running them."""

    delay_seconds: float = 1.0
    exit_code: int = 0


@dataclass(frozen=True)
class NodeSpec:
    """One simulated node."""

    name: str
    cpu: str = "8"
    memory: str = "32Gi"
    pods: str = "110"
    gpu: Gpu | None = None
    labels: dict[str, str] = field(default_factory=dict)
    taints: list[dict[str, str]] = field(default_factory=list)
    fake: FakeMode | None = None

    def node_labels(self) -> dict[str, str]:
        """Labels of the Node object: hostname, OS/arch, GFD labels, then the extra labels."""
        labels = {
            "kubernetes.io/hostname": self.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "localcluster.finetune.dev/simulated": "true",
        }
        if self.gpu:
            labels.update(
                {
                    "nvidia.com/gpu.present": "true",
                    "nvidia.com/gpu.product": self.gpu.product,
                    "nvidia.com/gpu.memory": str(self.gpu.memory_mib),
                    "nvidia.com/gpu.count": str(self.gpu.count),
                    "nvidia.com/gpu.compute.major": str(self.gpu.compute_major),
                    "nvidia.com/gpu.compute.minor": str(self.gpu.compute_minor),
                    "nvidia.com/gpu.family": self.gpu.family,
                }
            )
            if self.gpu.driver_major is not None:
                labels["nvidia.com/cuda.driver-version.major"] = str(self.gpu.driver_major)
        labels.update(self.labels)
        return labels

    def capacity(self) -> dict[str, str]:
        """Capacity (and allocatable) of the Node object."""
        cap = {"cpu": self.cpu, "memory": self.memory, "pods": self.pods, "ephemeral-storage": "100Gi"}
        if self.gpu:
            cap["nvidia.com/gpu"] = str(self.gpu.count)
        return cap

    def node_object(self) -> dict[str, Any]:
        """The Node object as the local cluster registers it (labels, capacity, taints)."""
        cap = self.capacity()
        node: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.name, "labels": self.node_labels()},
            "status": {"capacity": dict(cap), "allocatable": dict(cap)},
        }
        if self.taints:
            node["spec"] = {"taints": [dict(t) for t in self.taints]}
        return node


class FleetError(ValueError):
    """The fleet file is malformed; the message names the field."""


def _node(i: int, raw: dict[str, Any]) -> NodeSpec:
    where = f"nodes[{i}]"
    if not isinstance(raw, dict) or "name" not in raw:
        raise FleetError(f"{where}: each node needs at least a name")
    gpu = None
    if raw.get("gpu"):
        g = raw["gpu"]
        try:
            gpu = Gpu(
                product=str(g["product"]),
                memory_mib=int(g["memoryMiB"]),
                count=int(g.get("count", 1)),
                compute_major=int(g["computeMajor"]),
                compute_minor=int(g["computeMinor"]),
                family=str(g.get("family", "")),
                driver_major=int(g["driverMajor"]) if g.get("driverMajor") is not None else None,
            )
        except KeyError as e:
            raise FleetError(f"{where}.gpu.{e.args[0]}: required") from None
    fake = None
    if raw.get("fake") is not None:
        f = raw["fake"] or {}
        fake = FakeMode(float(f.get("delaySeconds", 1.0)), int(f.get("exitCode", 0)))
    return NodeSpec(
        name=str(raw["name"]),
        cpu=str(raw.get("cpu", "8")),
        memory=str(raw.get("memory", "32Gi")),
        pods=str(raw.get("pods", "110")),
        gpu=gpu,
        labels={str(k): str(v) for k, v in (raw.get("labels") or {}).items()},
        taints=list(raw.get("taints") or []),
        fake=fake,
    )


def parse_fleet(doc: Mapping[str, Any], where: str = "fleet") -> list[NodeSpec]:
    """The nodes of a fleet document ``{nodes: [{name, gpu: {...}}, ...]}``."""
    nodes = [_node(i, n) for i, n in enumerate(doc.get("nodes") or [])]
    names = [n.name for n in nodes]
    if len(set(names)) != len(names):
        raise FleetError(f"{where}: node names must be unique: {names}")
    return nodes


def load_fleet(path: Path | None = None) -> list[NodeSpec]:
    """Parse a fleet file (default: the packaged ``fleet.yaml``)."""
    path = path or DEFAULT_FLEET
    return parse_fleet(yaml.safe_load(path.read_text()) or {}, str(path))


def node_objects(fleet: Mapping[str, Any] | list[NodeSpec]) -> list[dict[str, Any]]:
    """The Node objects of a fleet (a document or parsed nodes), as ``kubectl get nodes`` would show them."""
    specs = fleet if isinstance(fleet, list) else parse_fleet(fleet)
    return [spec.node_object() for spec in specs]
