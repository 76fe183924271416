"""Simulated nodes: register the fleet's Node objects and keep them Ready.

A real kubelet renews its Lease in kube-node-lease every 10 s and posts node status when it
changes (or at least every few minutes); the node lifecycle controller taints a node whose
lease goes stale. The heartbeater does the same, so the real scheduler binds pods here.
"""

from __future__ import annotations

import datetime
import logging
import os
import threading
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from localcluster.fleet import NodeSpec

log = logging.getLogger(__name__)

LEASE_SECONDS = 40
LEASE_RENEW_SECONDS = 10.0
STATUS_SECONDS = 30.0
KUBELET_VERSION = "v1.36.3"
NODE_IP = "127.0.0.1"
LOST_NODES_FILE = "lost-nodes"


def lost_nodes(state_dir: Path | None) -> frozenset[str]:
    """Nodes whose simulated kubelet is stopped (`lose_node`): no lease, no status, no pod updates."""
    if state_dir is None:
        return frozenset()
    try:
        return frozenset(n for n in (state_dir / LOST_NODES_FILE).read_text().split() if n)
    except FileNotFoundError:
        return frozenset()


def _write_lost(state_dir: Path, names: frozenset[str]) -> None:
    tmp = state_dir / (LOST_NODES_FILE + ".tmp")
    tmp.write_text("".join(f"{n}\n" for n in sorted(names)))
    os.replace(tmp, state_dir / LOST_NODES_FILE)


def lose_node(state_dir: Path, name: str) -> None:
    """Stop one node's kubelet as a network partition would: its heartbeats and pod status stop,
    and its containers are frozen (they reach nothing) but not killed: zombies until the node
    comes back (`revive_node`), when they run again until the returning kubelet stops them."""
    _write_lost(state_dir, lost_nodes(state_dir) | {name})


def revive_node(state_dir: Path, name: str) -> None:
    """The node is back: it reports Ready again, its containers run on, and pods deleted meanwhile
    are stopped (SIGTERM, then SIGKILL after their grace period)."""
    _write_lost(state_dir, lost_nodes(state_dir) - {name})


def now_micro() -> str:
    """RFC 3339 with microseconds, as metav1.MicroTime wants."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def now_rfc3339() -> str:
    """RFC 3339 to the second, as metav1.Time is serialised."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def node_status(spec: NodeSpec, transition: str, kubelet_port: int) -> dict[str, Any]:
    """The status a healthy kubelet would report for ``spec``."""
    beat = now_rfc3339()

    def cond(type_: str, status: str, reason: str, message: str) -> dict[str, str]:
        return {
            "type": type_,
            "status": status,
            "reason": reason,
            "message": message,
            "lastHeartbeatTime": beat,
            "lastTransitionTime": transition,
        }

    cap = spec.capacity()
    return {
        "capacity": cap,
        "allocatable": cap,
        "conditions": [
            cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
            cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            cond("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
            cond("Ready", "True", "KubeletReady", "localcluster pod runner is posting ready status"),
        ],
        "addresses": [
            {"type": "InternalIP", "address": NODE_IP},
            {"type": "Hostname", "address": spec.name},
        ],
        # Where the API server proxies `kubectl logs` to (localcluster.logserver).
        "daemonEndpoints": {"kubeletEndpoint": {"Port": kubelet_port}},
        "nodeInfo": {
            "machineID": spec.name,
            "systemUUID": spec.name,
            "bootID": spec.name,
            "kernelVersion": "localcluster",
            "osImage": "localcluster simulated node",
            "containerRuntimeVersion": "localcluster://0.1.0",
            "kubeletVersion": KUBELET_VERSION,
            "kubeProxyVersion": "",
            "operatingSystem": "linux",
            "architecture": "amd64",
        },
    }


def register(api: client.ApiClient, specs: list[NodeSpec], kubelet_port: int) -> None:
    """Create (or update) one Node per spec and post a Ready status."""
    core = client.CoreV1Api(api)
    transition = now_rfc3339()
    for spec in specs:
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": spec.name, "labels": spec.node_labels()},
            "spec": {"taints": spec.taints} if spec.taints else {},
        }
        try:
            core.create_node(body)
        except ApiException as e:
            if e.status != 409:
                raise
            core.patch_node(spec.name, {"metadata": {"labels": spec.node_labels()}})
        core.patch_node_status(spec.name, {"status": node_status(spec, transition, kubelet_port)})


class Heartbeater:
    """Renews each node's Lease every 10 s and its status every 30 s, in a thread."""

    def __init__(self, api: client.ApiClient, specs: list[NodeSpec], kubelet_port: int,
                 state_dir: Path | None = None) -> None:
        self.kubelet_port = kubelet_port
        self.state_dir = state_dir
        self._was_lost: frozenset[str] = frozenset()
        self._transitions: dict[str, str] = {}
        self.core = client.CoreV1Api(api)
        self.coord = client.CoordinationV1Api(api)
        self.specs = specs
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, name="node-heartbeat", daemon=True)
        self._transition = now_rfc3339()

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=5)

    def _lease(self, spec: NodeSpec, uid: str | None) -> None:
        body: dict[str, Any] = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": spec.name, "namespace": "kube-node-lease"},
            "spec": {
                "holderIdentity": spec.name,
                "leaseDurationSeconds": LEASE_SECONDS,
                "renewTime": now_micro(),
            },
        }
        if uid:
            # As the kubelet does: the lease goes away with its node.
            body["metadata"]["ownerReferences"] = [
                {"apiVersion": "v1", "kind": "Node", "name": spec.name, "uid": uid}
            ]
        try:
            self.coord.patch_namespaced_lease(spec.name, "kube-node-lease", {"spec": body["spec"]})
        except ApiException as e:
            if e.status != 404:
                raise
            self.coord.create_namespaced_lease("kube-node-lease", body)

    def beat_once(self, with_status: bool) -> None:
        """Renew every lease; post status too when ``with_status``."""
        lost = lost_nodes(self.state_dir)
        revived = self._was_lost - lost
        self._was_lost = lost
        for name in revived:
            self._transitions[name] = now_rfc3339()  # Ready again from now on
        for spec in self.specs:
            if spec.name in lost:
                continue
            try:
                uid = None
                if with_status or spec.name in revived:
                    transition = self._transitions.get(spec.name, self._transition)
                    node = self.core.patch_node_status(
                        spec.name, {"status": node_status(spec, transition, self.kubelet_port)}
                    )
                    uid = node.metadata.uid
                self._lease(spec, uid)
            except ApiException as e:
                if e.status == 404:
                    log.warning("node %s is gone; registering it again", spec.name)
                    register(self.core.api_client, [spec], self.kubelet_port)
                else:
                    log.warning("heartbeat for %s failed: %s", spec.name, e.reason)
            except Exception as e:  # noqa: BLE001 - keep beating through API hiccups
                log.warning("heartbeat for %s failed: %s", spec.name, e)

    def _run(self) -> None:
        last_status = 0.0
        elapsed = 0.0
        while not self.stop_event.is_set():
            with_status = elapsed - last_status >= STATUS_SECONDS or elapsed == 0.0
            self.beat_once(with_status)
            if with_status:
                last_status = elapsed
            # A revived node reports within a second, as a restarted kubelet does.
            for _ in range(int(LEASE_RENEW_SECONDS)):
                if self.stop_event.wait(1.0) or self._was_lost - lost_nodes(self.state_dir):
                    break
            elapsed += LEASE_RENEW_SECONDS
