"""The API server goes away under a running job: restarted, or silent behind a stalled connection.

Real control plane, real operator process, real trainer pod (the pod runner). The operator's
liveness answer (/healthz) must fail only when its watch is really stale — connected, yet hearing
nothing — and never merely because the API server restarted: a restart breaks the watches, which
reconnect, and restarting the operator then would gain nothing.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from finetune_operator import naming
from localcluster.cluster import ClusterInfo
from localcluster.controlplane import restart_component
from localcluster.operator_runner import OperatorProcess
from localcluster.waiting import until
from operator_env import (  # noqa: F401 - fixtures
    Jobs, assets, crd, job_namespace, jobs, manifest, s3_client, start_operator, unique,
)

SLOW = "ghcr.io/finetune-operator/trainer:test-slow"
STALE = 8  # watch_stale_seconds for these tests: shorter than an API server restart here
# kube-controller-manager's --node-monitor-grace-period (its default; localcluster keeps it), and
# the simulated kubelets' Lease renewal period (localcluster.nodes).
NODE_GRACE, NODE_RENEW = 50, 10


class HealthLog:
    """Polls an operator's /healthz in a thread: (monotonic time, HTTP status, probes) per answer."""

    def __init__(self, op: OperatorProcess, interval: float = 0.5) -> None:
        self.op, self.interval = op, interval
        self.answers: list[tuple[float, int, dict[str, Any]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> HealthLog:
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _poll(self) -> None:
        while not self._stop.is_set():
            status, probes = self.op.health()
            self.answers.append((time.monotonic(), status, probes))
            self._stop.wait(self.interval)

    def failures(self) -> list[tuple[float, int, dict[str, Any]]]:
        return [a for a in self.answers if a[1] != 200]

    def first(self, status: int, after: float) -> float | None:
        return next((t for t, s, _ in self.answers if s == status and t >= after), None)


def _step(body: dict[str, Any]) -> int:
    return int(((body.get("status") or {}).get("progress") or {}).get("step") or 0)


def _reported_step(jobs: Jobs, name: str) -> int:
    """The step in the trainer's progress ConfigMap (ahead of the status, which the operator throttles)."""
    cm = jobs.core.read_namespaced_config_map(naming.progress(name), jobs.namespace)
    return int(json.loads((cm.data or {}).get("progress.json") or "{}").get("step") or 0)


def _ready_since(node: Any) -> datetime | None:
    ready = next((c for c in node.status.conditions or [] if c.type == "Ready"), None)
    return ready.last_transition_time if ready is not None and ready.status == "True" else None


def test_an_api_server_restart_is_ridden_out(
        jobs: Jobs, start_operator: Any, local_cluster: ClusterInfo, k8s_api: client.ApiClient) -> None:
    # Progress reaches the status every 2 s (not 10): the restart comes sooner, the test is shorter.
    op = start_operator(trainer_image=SLOW, watch_stale_seconds=STALE, progress_interval_seconds=2)
    name = unique("apiserver-restart")
    max_steps = 16
    jobs.create(manifest(name, training={"maxSteps": max_steps, "microBatchSize": 2, "gradientAccumulation": 1,
                                         "learningRate": "1e-3", "checkpoint": {"everySteps": 12, "keep": 1}},
                         runPolicy={"backoffLimit": 0}))
    jobs.wait(name, lambda b: (b.get("status") or {}).get("state") == "Running" and _step(b) >= 1,
              300, "Running with progress")
    with HealthLog(op) as health:
        # What the trainer had reported when the API server went away: every later step reached
        # its ConfigMap after the restart, and the status only through the operator's resumed
        # watch (it reads progress from its watch cache, never by a GET).
        reported_before = _reported_step(jobs, name)
        assert reported_before < max_steps, "the trainer finished before the restart: it would prove nothing"
        stopped_at = datetime.now(timezone.utc).replace(microsecond=0)
        restart_began = time.monotonic()
        outage = restart_component(local_cluster.state_dir, "kube-apiserver")
        step_when_back = _step(jobs.get(name))
        print(f"kube-apiserver restarted in {outage:.1f}s; trainer at step {reported_before} of {max_steps} "
              f"before, status at step {step_when_back} once the API server was ready")
        jobs.wait(name, lambda b: _step(b) > reported_before, 120, "a step reported after the restart in the status")
        final = jobs.wait_state(name, "Succeeded", timeout=300)["status"]
        # Liveness is judged again after the restart settles, not only during it.
        settled = time.monotonic()
        until(lambda: health.first(200, settled), 30, "a fresh health answer")
    print(f"largest watch age seen {max(p.get('watchAgeSeconds', 0) for _, _, p in health.answers)}s")
    answers = health.answers
    assert answers and answers[0][0] <= restart_began + 1, "the health poll started late"
    assert not health.failures(), (
        f"liveness failed although the watches only reconnected (outage {outage:.1f}s, stale limit {STALE}s): "
        f"{[(round(t - restart_began, 1), s, p) for t, s, p in health.failures()][:10]}")
    assert max(p["watchAgeSeconds"] for _, _, p in answers) <= STALE
    assert final["attempts"] == 1 and not final.get("disruptions"), final  # a restart is not a disruption
    assert final["progress"]["step"] == max_steps
    succeeded = next(c for c in final["conditions"] if c["type"] == "Succeeded")
    assert succeeded["status"] == "True"
    assert datetime.fromisoformat(succeeded["lastTransitionTime"].replace("Z", "+00:00")) >= stopped_at
    # A node goes NotReady once the node lifecycle controller has seen no Lease renewal for the
    # grace period; renewals come every NODE_RENEW s, so one may be missed on each side of the
    # outage. A restart shorter than that leaves every node Ready throughout (its Ready condition
    # has not moved since before); a longer one (a loaded machine) may flip nodes, which must
    # then be Ready again.
    core = client.CoreV1Api(k8s_api)
    nodes = until(lambda: all(_ready_since(n) for n in core.list_node().items) and core.list_node().items,
                  60, "every node Ready after the restart")
    flipped = {n.metadata.name: str(_ready_since(n)) for n in nodes if _ready_since(n) >= stopped_at}
    if outage < NODE_GRACE - 2 * NODE_RENEW:
        assert not flipped, f"nodes not Ready throughout a {outage:.1f}s restart: {flipped}"
    else:
        print(f"a {outage:.1f}s restart is too close to the {NODE_GRACE}s node grace period to require that "
              f"no node went NotReady; these did: {flipped or 'none'}")


class StallingRelay:
    """A TCP relay in front of the API server that can go silent: while stalled, every connection
    (old and new) stays open but no byte passes either way, as on a half-open path after a
    network partition; bytes held meanwhile pass once it flows again."""

    def __init__(self, port: int) -> None:
        self.upstream = port
        self.flowing = threading.Event()
        self.flowing.set()
        self.closed = False
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def kubeconfig(self, path: Path) -> Path:
        """`path` with its server replaced by this relay (the TLS name stays 127.0.0.1)."""
        config = yaml.safe_load(path.read_text())
        for cluster in config["clusters"]:
            cluster["cluster"]["server"] = f"https://127.0.0.1:{self.port}"
        out = path.with_name(f"relayed-{path.name}")
        out.write_text(yaml.safe_dump(config))
        return out

    def stall(self) -> None:
        self.flowing.clear()

    def flow(self) -> None:
        self.flowing.set()

    def close(self) -> None:
        with self.lock:
            self.closed = True
            self.flowing.set()
            for s in [self.listener, *self.sockets]:
                s.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return  # closed
            try:
                up = socket.create_connection(("127.0.0.1", self.upstream), timeout=10)
            except OSError:
                conn.close()
                continue
            up.settimeout(None)
            with self.lock:
                self.sockets += [conn, up]
                if self.closed:
                    conn.close()
                    up.close()
                    return
            for src, dst in ((conn, up), (up, conn)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                self.flowing.wait()
                chunk = src.recv(1 << 16)
                if not chunk:
                    break
                self.flowing.wait()  # read while flowing, held while stalled
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (src, dst):  # one side ended: end the other, as a TCP proxy does
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()


def test_a_silent_watch_fails_liveness_after_the_stale_limit_and_recovers(
        start_operator: Any, local_cluster: ClusterInfo) -> None:
    relay = StallingRelay(local_cluster.api_port)
    started: list[OperatorProcess] = []
    try:
        op = start_operator(via=relay.kubeconfig, watch_stale_seconds=STALE)
        started.append(op)
        renew_period = 6 / 3  # the fixture's 6 s Lease, renewed every third of it
        until(lambda: op.health()[1].get("watchAgeSeconds", 99) < renew_period + 1, 60,
              "Lease events through the relay")
        with HealthLog(op, interval=0.25) as health:
            relay.stall()
            stalled = time.monotonic()
            went_stale = until(lambda: health.first(500, stalled), STALE + 40, "liveness failing on a silent watch")
            relay.flow()
            flowing = time.monotonic()
            came_back = until(lambda: health.first(200, flowing), 60, "liveness passing once bytes flow again")
        to_500, to_200 = went_stale - stalled, came_back - flowing
        print(f"stale limit {STALE}s: liveness 500 after {to_500:.1f}s of silence, 200 again {to_200:.1f}s "
              f"after the relay flowed")
        # Not before the limit: the last Lease event came at most one renewal period before the
        # stall. Later by at most kopf's 10 s cache of a passing probe result, plus slack.
        early = [(round(t - stalled, 1), s) for t, s, _ in health.answers
                 if stalled <= t < stalled + STALE - renew_period - 0.5 and s != 200]
        assert not early, f"liveness failed before the stale limit of {STALE}s: {early}"
        assert STALE - renew_period - 0.5 <= to_500 <= STALE + 10 + 15
        assert op.process is not None and op.process.poll() is None  # liveness reports; kubelet restarts
        until(lambda: op.health()[1].get("leader") is True, 60, "the leader renewing its Lease again")
    finally:
        for running in started:
            running.stop()  # while the relay still flows: a graceful stop releases the Lease through it
        relay.close()
