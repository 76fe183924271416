"""Hundreds of simulated GPU nodes through kwok, next to (never instead of) the local pod runner.

kwok (``sigs.k8s.io/kwok``, the simulator Kubernetes' own scalability tests use) keeps Node
objects Ready with real Lease renewals and status heartbeats, and moves pods on those nodes
through *stages*. It manages only nodes carrying the annotation ``kwok.x-k8s.io/node: fake``;
the local pod runner only runs pods bound to the fleet file's nodes, so the two never touch the
same node.

Stages used here: a node becomes Ready (``node-initialize``) and posts status heartbeats
(``node-heartbeat-with-lease``, leases every ≈ 10 s by kwok itself); a pod bound to a kwok node
becomes Running with Ready conditions and a running container (``pod-ready``) and is removed
once deleted (``pod-delete``). Nothing here ends a running pod: whoever plays the container
(``bench/scale_sim.py``) writes its terminated state, exit code and termination message.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from localcluster import tools
from localcluster.fleet import Gpu, NodeSpec
from localcluster.procs import ProcessTable, _stat_fields

BUILD_SCRIPT = Path(__file__).with_name("build-kwok.sh")
ANNOTATION = "kwok.x-k8s.io/node"
ANNOTATION_VALUE = "fake"
SELECTOR = f"{ANNOTATION}={ANNOTATION_VALUE}"
LABEL = "localcluster.finetune.dev/kwok"
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}

# GPU Feature Discovery strings of the default fleet (fleet.yaml), with the GPU counts of the
# usual instance shapes (g4dn.12xlarge, g5.12xlarge, p4d, p5): the mix repeats in this order.
GPU_MIX: tuple[tuple[str, Gpu, str, str], ...] = (
    ("t4", Gpu("Tesla-T4", 15360, 4, 7, 5, "turing"), "48", "192Gi"),
    ("a10g", Gpu("NVIDIA-A10G", 23028, 4, 8, 6, "ampere"), "48", "192Gi"),
    ("a100-40gb", Gpu("NVIDIA-A100-SXM4-40GB", 40960, 8, 8, 0, "ampere"), "96", "1152Gi"),
    ("h100-80gb", Gpu("NVIDIA-H100-80GB-HBM3", 81559, 8, 9, 0, "hopper"), "192", "2048Gi"),
)

# The node conditions kwok posts: the same when a node becomes Ready and on each heartbeat.
_NODE_CONDITIONS = r"""
      {{ $now := Now }}
      {{ $lastTransitionTime := or .metadata.creationTimestamp $now }}
      conditions:
      {{ range NodeConditions }}
      - lastHeartbeatTime: {{ $now | Quote }}
        lastTransitionTime: {{ $lastTransitionTime | Quote }}
        message: {{ .message | Quote }}
        reason: {{ .reason | Quote }}
        status: {{ .status | Quote }}
        type: {{ .type | Quote }}
      {{ end }}
""".lstrip("\n")

# kwok's defaults renew 4 leases at a time: with hundreds of nodes on a loaded API server
# renewals fall behind the 40 s lease and the node lifecycle controller marks nodes NotReady.
_STAGES = r"""
apiVersion: config.kwok.x-k8s.io/v1alpha1
kind: KwokConfiguration
options:
  nodeLeaseParallelism: 64
  nodePlayStageParallelism: 16
  podPlayStageParallelism: 16
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata: {name: node-initialize}
spec:
  resourceRef: {apiGroup: v1, kind: Node}
  selector:
    matchExpressions:
    - key: '.status.conditions.[] | select( .type == "Ready" ) | .status'
      operator: 'NotIn'
      values: ['True']
  next:
    statusTemplate: |
      @node-conditions@
      addresses:
      - address: {{ NodeIP | Quote }}
        type: InternalIP
      - address: {{ NodeName | Quote }}
        type: Hostname
      allocatable:
      {{ YAML .status.allocatable 1 }}
      capacity:
      {{ YAML .status.capacity 1 }}
      nodeInfo:
        architecture: amd64
        containerRuntimeVersion: {{ printf "kwok-%s" Version }}
        kernelVersion: {{ printf "kwok-%s" Version }}
        kubeProxyVersion: {{ printf "kwok-%s" Version }}
        kubeletVersion: {{ printf "kwok-%s" Version }}
        operatingSystem: linux
      phase: Running
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata: {name: node-heartbeat-with-lease}
spec:
  resourceRef: {apiGroup: v1, kind: Node}
  selector:
    matchExpressions:
    - key: '.status.phase'
      operator: 'In'
      values: ['Running']
    - key: '.status.conditions.[] | select( .type == "Ready" ) | .status'
      operator: 'In'
      values: ['True']
  # The kubelet posts an unchanged status every 5 minutes (nodeStatusReportFrequency); the
  # lease, renewed by kwok every ~10 s, is what keeps the node alive.
  delay: {durationMilliseconds: 300000, jitterDurationMilliseconds: 330000}
  next:
    statusTemplate: |
      @node-conditions@
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata: {name: pod-ready}
spec:
  resourceRef: {apiGroup: v1, kind: Pod}
  selector:
    matchExpressions:
    - key: '.metadata.deletionTimestamp'
      operator: 'DoesNotExist'
    - key: '.status.phase'
      operator: 'In'
      values: ['Pending']
    - key: '.status.conditions.[] | select( .type == "Ready" ) | .status'
      operator: 'NotIn'
      values: ['True']
  next:
    statusTemplate: |
      {{ $now := Now }}
      conditions:
      - {lastTransitionTime: {{ $now | Quote }}, status: "True", type: Initialized}
      - {lastTransitionTime: {{ $now | Quote }}, status: "True", type: Ready}
      - {lastTransitionTime: {{ $now | Quote }}, status: "True", type: ContainersReady}
      containerStatuses:
      {{ range .spec.containers }}
      - image: {{ .image | Quote }}
        name: {{ .name | Quote }}
        ready: true
        started: true
        restartCount: 0
        state:
          running:
            startedAt: {{ $now | Quote }}
      {{ end }}
      hostIP: {{ NodeIPWith .spec.nodeName | Quote }}
      podIP: {{ PodIPWith .spec.nodeName ( or .spec.hostNetwork false ) ( or .metadata.uid "" ) ( or .metadata.name "" ) ( or .metadata.namespace "" ) | Quote }}
      phase: Running
      startTime: {{ $now | Quote }}
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata: {name: pod-delete}
spec:
  resourceRef: {apiGroup: v1, kind: Pod}
  selector:
    matchExpressions:
    - key: '.metadata.deletionTimestamp'
      operator: 'Exists'
  next:
    delete: true
"""
STAGES = _STAGES.replace("      @node-conditions@\n", _NODE_CONDITIONS)


class KwokError(tools.ToolError):
    """kwok could not be built or started; the message says why."""


def locate_kwok() -> Path:
    """The kwok binary: ``$FTO_KWOK`` or the cached build of ``build-kwok.sh`` (built on first use)."""
    return tools.locate("kwok", "FTO_KWOK", BUILD_SCRIPT, error=KwokError)


def gpu_fleet(gpu_nodes: int, cpu_nodes: int = 2, prefix: str = "kwok") -> list[NodeSpec]:
    """``gpu_nodes`` GPU-tainted nodes in the T4/A10G/A100/H100 mix, plus CPU-only nodes for inspection pods."""
    specs = []
    for i in range(gpu_nodes):
        short, gpu, cpu, memory = GPU_MIX[i % len(GPU_MIX)]
        specs.append(NodeSpec(name=f"{prefix}-{short}-{i:04d}", cpu=cpu, memory=memory, pods="110", gpu=gpu,
                              labels={LABEL: "true"}, taints=[dict(GPU_TAINT)]))
    for i in range(cpu_nodes):
        # Inspection pods ask for 1 CPU and 4 GiB each; a burst of hundreds must fit at once.
        specs.append(NodeSpec(name=f"{prefix}-cpu-{i:03d}", cpu="512", memory="4Ti", pods="1000",
                              labels={LABEL: "true"}))
    return specs


def gpu_count(specs: list[NodeSpec]) -> dict[str, int]:
    """GPUs per product in ``specs``."""
    out: dict[str, int] = {}
    for s in specs:
        if s.gpu:
            out[s.gpu.product] = out.get(s.gpu.product, 0) + s.gpu.count
    return out


def node_object(spec: NodeSpec) -> dict[str, Any]:
    """The Node kwok will manage: GFD labels, GPU taint, capacity in status (kwok keeps it)."""
    labels = spec.node_labels()
    labels.pop("localcluster.finetune.dev/simulated", None)  # that label belongs to the pod runner's nodes
    labels["type"] = "kwok"
    cap = spec.capacity()
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": spec.name, "labels": labels, "annotations": {ANNOTATION: ANNOTATION_VALUE}},
        "spec": {"taints": spec.taints} if spec.taints else {},
        "status": {"capacity": cap, "allocatable": cap},
    }


def create_nodes(api: client.ApiClient, specs: list[NodeSpec], parallel: int = 8) -> None:
    """Create the nodes (an existing one is left as it is)."""
    core = client.CoreV1Api(api)

    def one(spec: NodeSpec) -> None:
        try:
            core.create_node(node_object(spec))
        except ApiException as e:
            if e.status != 409:
                raise

    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(one, specs))


def delete_nodes(api: client.ApiClient) -> None:
    """Delete every node this module created."""
    client.CoreV1Api(api).delete_collection_node(label_selector=f"{LABEL}=true")


def wait_ready(api: client.ApiClient, names: list[str], timeout: float) -> float:
    """Wait until every named node is Ready and free of node-lifecycle taints; seconds it took."""
    core = client.CoreV1Api(api)
    t0 = time.monotonic()
    pending = set(names)
    while time.monotonic() - t0 < timeout:
        for n in core.list_node(label_selector=f"{LABEL}=true").items:
            ready = any(c.type == "Ready" and c.status == "True" for c in (n.status.conditions or []))
            tainted = any(t.key.startswith("node.kubernetes.io/") for t in (n.spec.taints or []))
            if ready and not tainted:
                pending.discard(n.metadata.name)
        if not pending:
            return time.monotonic() - t0
        time.sleep(1)
    raise KwokError(f"{len(pending)} kwok nodes not Ready after {timeout:.0f}s (e.g. {sorted(pending)[:3]}); "
                    "see logs/kwok.log in the cluster's state directory")


class Kwok:
    """The kwok controller as a background process of one local cluster (``down`` stops it too)."""

    NAME = "kwok"

    def __init__(self, state_dir: Path, kubeconfig: Path, binary: Path | None = None) -> None:
        self.state_dir = state_dir
        self.kubeconfig = kubeconfig
        self.binary = binary or locate_kwok()
        self.procs = ProcessTable(state_dir)
        self.pid: int | None = None

    def start(self) -> Kwok:
        config = self.state_dir / "kwok-stages.yaml"
        config.write_text(STAGES)
        # An empty HOME: kwok would otherwise also load ~/.kwok/kwok.yaml.
        home = self.state_dir / "kwok-home"
        home.mkdir(exist_ok=True)
        argv = [
            str(self.binary), f"--kubeconfig={self.kubeconfig}", f"--config={config}",
            f"--manage-nodes-with-annotation-selector={SELECTOR}",
            "--node-lease-duration-seconds=40", "--cidr=10.200.0.0/16", "--node-ip=127.0.0.1",
        ]
        self.pid = self.procs.start(self.NAME, argv, env={**os.environ, "HOME": str(home)})
        time.sleep(0.5)
        if not self.running():
            raise KwokError(f"kwok exited at start:\n{self.log_tail()}")
        return self

    def running(self) -> bool:
        return any(r.name == self.NAME for r in self.procs.running())

    def log_tail(self, lines: int = 30) -> str:
        log = self.procs.logs / f"{self.NAME}.log"
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else ""

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of the kwok process so far."""
        return process_cpu_seconds(self.pid) if self.pid else 0.0

    def stop(self) -> None:
        self.procs.stop(self.NAME, grace=5)


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (0 when it is gone)."""
    fields = _stat_fields(pid)
    if not fields:
        return 0.0
    # _stat_fields returns the fields after the command name: utime/stime are fields 14/15 of stat.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
