"""Container probes as the kubelet runs them (startup, liveness, readiness), for the pod runner.

httpGet and tcpSocket probes are run against the pod's address with the kubelet's defaults
(initialDelaySeconds 0, periodSeconds 10, timeoutSeconds 1, successThreshold 1,
failureThreshold 3). exec and grpc probes are not run here: they count as failing, with the
reason in the runner's log, so a pod that relies on one never looks Ready by accident.

Pods share the host's network in the local cluster, so two pods declaring the same
``containerPort`` would collide: :func:`allocate_ports` gives every declared port a free host
port, which the image learns through the variable its ``portEnv`` entry in ``images.yaml``
names; probes, and anyone reading the pod's ``localcluster.dev/host-ports`` annotation, use
the allocated port.
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

Obj = dict[str, Any]
HOST_PORTS_ANNOTATION = "localcluster.dev/host-ports"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def allocate_ports(container: Obj, port_env: dict[str, str]) -> dict[int, int]:
    """containerPort → host port. Ports the image can be told about (``port_env``, by port name)
    get a free port; the others keep their number (the program binds it as declared)."""
    mapping: dict[int, int] = {}
    for p in container.get("ports") or []:
        number = int(p["containerPort"])
        mapping[number] = free_port() if p.get("name") in port_env else number
    return mapping


def port_env_values(container: Obj, port_env: dict[str, str], mapping: dict[int, int]) -> dict[str, str]:
    """The variables that tell the program which host ports it was given."""
    out: dict[str, str] = {}
    for p in container.get("ports") or []:
        var = port_env.get(p.get("name") or "")
        if var:
            out[var] = str(mapping[int(p["containerPort"])])
    return out


@dataclass
class Probe:
    """One probe of one container run, with the kubelet's counters."""

    kind: str  # startup, liveness, readiness
    spec: Obj
    started: float
    successes: int = 0
    failures: int = 0
    passed: bool = False  # the current result (threshold applied)
    next_at: float = 0.0
    last_message: str = field(default="")

    def __post_init__(self) -> None:
        self.next_at = self.started + float(self.spec.get("initialDelaySeconds") or 0)

    @property
    def period(self) -> float:
        return float(self.spec.get("periodSeconds") or 10)

    @property
    def timeout(self) -> float:
        return float(self.spec.get("timeoutSeconds") or 1)

    def due(self, now: float) -> bool:
        return now >= self.next_at

    def record(self, ok: bool, message: str, now: float) -> None:
        self.next_at = now + self.period
        self.last_message = message
        if ok:
            self.successes += 1
            self.failures = 0
            needed = 1 if self.kind in ("startup", "liveness") else int(self.spec.get("successThreshold") or 1)
            if self.successes >= needed:
                self.passed = True
        else:
            self.failures += 1
            self.successes = 0
            if self.failures >= int(self.spec.get("failureThreshold") or 3):
                self.passed = False

    def failed_out(self) -> bool:
        """Liveness or startup failed ``failureThreshold`` times in a row: the container is killed."""
        return self.kind in ("liveness", "startup") and self.failures >= int(self.spec.get("failureThreshold") or 3)


def run_probe(spec: Obj, container: Obj, host: str, mapping: dict[int, int], timeout: float) -> tuple[bool, str]:
    """(success, message) of one probe attempt."""
    if "httpGet" in spec:
        get = spec["httpGet"]
        port = _port(get.get("port"), container, mapping)
        scheme = str(get.get("scheme") or "HTTP").lower()
        path = str(get.get("path") or "/")
        url = f"{scheme}://{get.get('host') or host}:{port}{path if path.startswith('/') else '/' + path}"
        request = urllib.request.Request(url, headers={
            "User-Agent": "kube-probe/1.36", **{h["name"]: h["value"] for h in get.get("httpHeaders") or []}})
        context = ssl._create_unverified_context() if scheme == "https" else None  # noqa: S323 - as the kubelet
        try:
            with urllib.request.urlopen(request, timeout=timeout, context=context) as resp:
                return 200 <= resp.status < 400, f"HTTP probe returned {resp.status}"
        except urllib.error.HTTPError as exc:
            return 200 <= exc.code < 400, f"HTTP probe failed with statuscode: {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            return False, f'Get "{url}": {exc}'
    if "tcpSocket" in spec:
        sock = spec["tcpSocket"]
        port = _port(sock.get("port"), container, mapping)
        try:
            with socket.create_connection((sock.get("host") or host, port), timeout=timeout):
                return True, ""
        except OSError as exc:
            return False, f"dial tcp {host}:{port}: {exc}"
    kind = next(iter(k for k in ("exec", "grpc") if k in spec), "unknown")
    return False, f"{kind} probes are not run by the localcluster pod runner"


def _port(value: Any, container: Obj, mapping: dict[int, int]) -> int:
    if isinstance(value, str) and not value.isdigit():
        for p in container.get("ports") or []:
            if p.get("name") == value:
                value = p["containerPort"]
                break
        else:
            raise ValueError(f"probe port {value!r} is not a named port of container {container['name']}")
    number = int(value)
    return mapping.get(number, number)


class ContainerProbes:
    """The probes of one container run and what they mean for readiness and restarts."""

    def __init__(self, container: Obj, mapping: dict[int, int], started: float | None = None) -> None:
        self.container = container
        self.mapping = mapping
        t0 = time.monotonic() if started is None else started
        self.probes = {kind: Probe(kind, container[f"{kind}Probe"], t0)
                       for kind in ("startup", "liveness", "readiness") if container.get(f"{kind}Probe")}

    def started(self) -> bool:
        startup = self.probes.get("startup")
        return startup is None or startup.passed

    def ready(self) -> bool:
        if not self.started():
            return False
        readiness = self.probes.get("readiness")
        return readiness is None or readiness.passed

    def tick(self, host: str, now: float | None = None) -> tuple[bool, str | None]:
        """Run the probes that are due; (readiness changed, reason to kill the container or None)."""
        t = time.monotonic() if now is None else now
        before = self.ready()
        kinds = ["startup"] if not self.started() else ["liveness", "readiness"]
        for kind in kinds:
            probe = self.probes.get(kind)
            if probe is None or not probe.due(t):
                continue
            try:
                ok, message = run_probe(probe.spec, self.container, host, self.mapping, probe.timeout)
            except ValueError as exc:
                ok, message = False, str(exc)
            probe.record(ok, message, time.monotonic() if now is None else t)
            if not ok:
                log.info("%s probe of %s failed: %s", kind, self.container["name"], message)
            if probe.failed_out():
                return self.ready() != before, f"{kind} probe failed: {message}"
        return self.ready() != before, None
