"""The pod runner runs probes as a kubelet does: readiness gates the Ready condition, a failing
liveness probe restarts the container, and ports a stand-in image can be told about get their
own host port (pods share the host network here)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

from kubernetes import client

from localcluster.probes import HOST_PORTS_ANNOTATION, free_port
from localcluster.waiting import container_status, wait_for_pod

# Serves /ready (503 for the first 2 s) and /live (500 on the container's first run, 200 after).
SERVER = textwrap.dedent("""
    import http.server, os, sys, time
    port, state = int(sys.argv[1]), sys.argv[2]
    first = not os.path.exists(state)
    open(state, "a").close()
    t0 = time.monotonic()
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/ready":
                code = 200 if time.monotonic() - t0 > 2 else 503
            else:
                code = 500 if first else 200
            self.send_response(code); self.end_headers()
        def log_message(self, *a): pass
    http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
""")


def _ready(pod: dict[str, Any]) -> bool:
    conds = {c["type"]: c["status"] for c in (pod.get("status") or {}).get("conditions") or []}
    return conds.get("Ready") == "True"


def test_readiness_gates_ready_and_liveness_restarts(k8s_api: client.ApiClient, namespace: str, tmp_path: Path) -> None:
    port = free_port()
    probe = {"periodSeconds": 1, "failureThreshold": 2, "timeoutSeconds": 1}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "probed"}, "spec": {
        "terminationGracePeriodSeconds": 2,
        "volumes": [{"name": "state", "hostPath": {"path": str(tmp_path)}}],
        "containers": [{
            "name": "main", "image": "localcluster/python", "command": ["python", "-c", SERVER, str(port), "/state/ran"],
            "ports": [{"name": "http", "containerPort": port}],
            "volumeMounts": [{"name": "state", "mountPath": "/state"}],
            "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}, **probe},
            "livenessProbe": {"httpGet": {"path": "/live", "port": port}, "initialDelaySeconds": 1, **probe}}]}}
    core = client.CoreV1Api(k8s_api)
    core.create_namespaced_pod(namespace, pod)
    running = wait_for_pod(k8s_api, namespace, "probed", lambda p: "running" in container_status(p).get("state", {}))
    assert not _ready(running) and container_status(running)["ready"] is False
    # The first run fails liveness and is restarted; the second becomes Ready once /ready says so.
    ready = wait_for_pod(k8s_api, namespace, "probed", _ready, timeout=60)
    status = container_status(ready)
    assert status["restartCount"] == 1 and status["ready"] is True
    assert status["lastState"]["terminated"] is not None
    # The port the program was given is its own (no image portEnv here: the declared number).
    assert json.loads(ready["metadata"]["annotations"][HOST_PORTS_ANNOTATION]) == {str(port): port}
