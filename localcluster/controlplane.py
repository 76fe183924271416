"""etcd, kube-apiserver, kube-controller-manager and kube-scheduler as local processes.

Everything listens on 127.0.0.1 with TLS from :mod:`localcluster.pki`. The binaries come from
``build-control-plane.sh`` (built once with the Go toolchain, cached by version).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from localcluster.kubeconfig import write_kubeconfig
from localcluster.pki import Pki, ensure_pki
from localcluster.procs import ProcessTable

BUILD_SCRIPT = Path(__file__).with_name("build-control-plane.sh")
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
SERVICE_CIDR = "10.0.0.0/24"
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")


class ControlPlaneError(RuntimeError):
    """The control plane could not be built or started; the message says why."""


def locate_binaries() -> tuple[Path, bool]:
    """Directory with the four binaries and whether they were already cached.

    ``$FTO_CONTROL_PLANE_BIN`` wins; otherwise the build script, which is a silent no-op once
    the binaries are cached and on a cold machine compiles Kubernetes from Go modules.
    """
    override = os.environ.get("FTO_CONTROL_PLANE_BIN")
    cached = True
    if override:
        bin_dir = Path(override)
    else:
        proc = subprocess.run(
            ["bash", str(BUILD_SCRIPT)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        if proc.returncode != 0:
            raise ControlPlaneError(
                f"{BUILD_SCRIPT} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
            )
        bin_dir = Path(proc.stdout.strip().splitlines()[-1])
        # The script prints nothing on stderr when every binary is already in the cache.
        cached = not proc.stderr.strip()
    missing = [c for c in COMPONENTS if not os.access(bin_dir / c, os.X_OK)]
    if missing:
        raise ControlPlaneError(f"missing control-plane binaries in {bin_dir}: {', '.join(missing)}")
    return bin_dir, cached


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Endpoints:
    """Ports of one running control plane, saved to ``<state>/cluster.json``."""

    etcd_client: int
    etcd_peer: int
    apiserver: int
    controller_manager: int
    scheduler: int

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.apiserver}"

    @classmethod
    def allocate(cls, apiserver_port: int | None = None) -> "Endpoints":
        return cls(free_port(), free_port(), apiserver_port or free_port(), free_port(), free_port())


class ControlPlane:
    """Start, wait for and stop the four control-plane processes of one state directory."""

    def __init__(self, state_dir: Path, bin_dir: Path) -> None:
        self.state_dir = state_dir
        self.bin_dir = bin_dir
        self.pki: Pki = ensure_pki(state_dir / "pki")
        self.procs = ProcessTable(state_dir)
        self.admin_kubeconfig = state_dir / "admin.kubeconfig"

    def _kubeconfigs(self, ep: Endpoints) -> None:
        for stem, user in (
            ("admin", "admin"),
            ("controller-manager", "system:kube-controller-manager"),
            ("scheduler", "system:kube-scheduler"),
        ):
            path = self.admin_kubeconfig if stem == "admin" else self.state_dir / f"{stem}.kubeconfig"
            write_kubeconfig(
                path,
                server=ep.server,
                ca_crt=self.pki.ca_crt,
                user=user,
                client_crt=self.pki.path(f"{stem}.crt"),
                client_key=self.pki.path(f"{stem}.key"),
            )

    def start(self, ep: Endpoints, timeout: float = 90.0, components: tuple[str, ...] = COMPONENTS) -> None:
        """Start the components with fresh etcd data and wait until each reports healthy."""
        # Fresh data on every up: no pods or nodes left over from an earlier session.
        shutil.rmtree(self.state_dir / "etcd-data", ignore_errors=True)
        self._kubeconfigs(ep)
        (self.state_dir / "cluster.json").write_text(json.dumps(asdict(ep), indent=2))
        deadline = time.monotonic() + timeout
        # The controller-manager and scheduler read RBAC-protected config at start-up, so
        # they start only once the API server is ready (its bootstrap roles exist).
        first = tuple(c for c in components if c in ("etcd", "kube-apiserver"))
        rest = tuple(c for c in components if c not in first)
        for group in (first, rest):
            for name in group:
                self.procs.start(name, self.argv(name, ep))
            self.wait_ready(ep, max(1.0, deadline - time.monotonic()), group)

    def argv(self, component: str, ep: Endpoints) -> list[str]:
        """Command line of one component."""
        p = self.pki
        b = self.bin_dir
        data = self.state_dir / "etcd-data"
        return {
            "etcd": [
                str(b / "etcd"),
                "--name=localcluster",
                f"--data-dir={data}",
                f"--listen-client-urls=https://127.0.0.1:{ep.etcd_client}",
                f"--advertise-client-urls=https://127.0.0.1:{ep.etcd_client}",
                f"--listen-peer-urls=http://127.0.0.1:{ep.etcd_peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{ep.etcd_peer}",
                f"--initial-cluster=localcluster=http://127.0.0.1:{ep.etcd_peer}",
                f"--cert-file={p.path('etcd-server.crt')}",
                f"--key-file={p.path('etcd-server.key')}",
                f"--trusted-ca-file={p.ca_crt}",
                "--client-cert-auth=true",
                # Test data is disposable; fsync on every write only slows the suite down.
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
            "kube-apiserver": [
                str(b / "kube-apiserver"),
                f"--etcd-servers=https://127.0.0.1:{ep.etcd_client}",
                f"--etcd-cafile={p.ca_crt}",
                f"--etcd-certfile={p.path('apiserver-etcd-client.crt')}",
                f"--etcd-keyfile={p.path('apiserver-etcd-client.key')}",
                "--bind-address=127.0.0.1",
                # In-cluster clients get KUBERNETES_SERVICE_HOST=127.0.0.1 and the real port.
                "--advertise-address=127.0.0.1",
                f"--secure-port={ep.apiserver}",
                f"--tls-cert-file={p.path('apiserver.crt')}",
                f"--tls-private-key-file={p.path('apiserver.key')}",
                f"--client-ca-file={p.ca_crt}",
                f"--kubelet-client-certificate={p.path('apiserver-kubelet-client.crt')}",
                f"--kubelet-client-key={p.path('apiserver-kubelet-client.key')}",
                # Simulated nodes' hostnames do not resolve; their InternalIP is 127.0.0.1.
                "--kubelet-preferred-address-types=InternalIP",
                f"--proxy-client-cert-file={p.path('front-proxy-client.crt')}",
                f"--proxy-client-key-file={p.path('front-proxy-client.key')}",
                f"--requestheader-client-ca-file={p.ca_crt}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-account-key-file={p.sa_pub}",
                f"--service-account-signing-key-file={p.sa_key}",
                "--authorization-mode=Node,RBAC",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--enable-admission-plugins=NodeRestriction",
                "--enable-priority-and-fairness=true",
                "--allow-privileged=true",
                "--profiling=false",
                "--v=1",
            ],
            "kube-controller-manager": [
                str(b / "kube-controller-manager"),
                f"--kubeconfig={self.state_dir / 'controller-manager.kubeconfig'}",
                f"--authentication-kubeconfig={self.state_dir / 'controller-manager.kubeconfig'}",
                f"--authorization-kubeconfig={self.state_dir / 'controller-manager.kubeconfig'}",
                "--bind-address=127.0.0.1",
                f"--secure-port={ep.controller_manager}",
                "--leader-elect=false",
                "--use-service-account-credentials=true",
                f"--root-ca-file={p.ca_crt}",
                f"--service-account-private-key-file={p.sa_key}",
                f"--cluster-signing-cert-file={p.ca_crt}",
                f"--cluster-signing-key-file={p.ca_key}",
                # Cloud controllers are not compiled into 1.36's controller-manager; '*' is
                # every in-tree controller (GC, Job, namespace, serviceaccount-token, ...).
                "--controllers=*",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--allocate-node-cidrs=false",
                "--profiling=false",
                "--v=1",
            ],
            "kube-scheduler": [
                str(b / "kube-scheduler"),
                f"--kubeconfig={self.state_dir / 'scheduler.kubeconfig'}",
                f"--authentication-kubeconfig={self.state_dir / 'scheduler.kubeconfig'}",
                f"--authorization-kubeconfig={self.state_dir / 'scheduler.kubeconfig'}",
                "--bind-address=127.0.0.1",
                f"--secure-port={ep.scheduler}",
                "--leader-elect=false",
                "--profiling=false",
                "--v=1",
            ],
        }[component]

    def _ssl_context(self, client: bool) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki.ca_crt))
        if client:
            ctx.load_cert_chain(str(self.pki.path("admin.crt")), str(self.pki.path("admin.key")))
        else:
            # kube-controller-manager and kube-scheduler serve self-signed certificates.
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    def _healthy(self, url: str, ctx: ssl.SSLContext) -> tuple[bool, str]:
        try:
            with urllib.request.urlopen(url, context=ctx, timeout=5) as r:
                return r.status == 200, r.read(2000).decode(errors="replace")
        except urllib.error.HTTPError as e:
            return False, e.read(4000).decode(errors="replace")
        except OSError as e:
            return False, str(e)

    def wait_ready(self, ep: Endpoints, timeout: float, components: tuple[str, ...] = COMPONENTS) -> None:
        """Wait for the API server's /readyz and the other components' /healthz."""
        checks = [
            ("kube-apiserver", f"{ep.server}/readyz", self._ssl_context(True)),
            ("kube-controller-manager", f"https://127.0.0.1:{ep.controller_manager}/healthz", self._ssl_context(False)),
            ("kube-scheduler", f"https://127.0.0.1:{ep.scheduler}/healthz", self._ssl_context(False)),
        ]
        deadline = time.monotonic() + timeout
        for name, url, ctx in checks:
            if name not in components:
                continue
            while True:
                ok, detail = self._healthy(url, ctx)
                if ok:
                    break
                dead = [r.name for r in self.procs.recorded() if r not in self.procs.running()]
                if dead or time.monotonic() > deadline:
                    why = f"exited: {', '.join(dead)}" if dead else f"not ready after {timeout:.0f}s"
                    raise ControlPlaneError(
                        f"control plane {why}; {name} at {url} said: {detail[-1500:]}\n"
                        + self.log_tails(dead or [name])
                    )
                time.sleep(0.3)

    def log_tails(self, names: list[str], lines: int = 25) -> str:
        """The last lines of each component's log, for error messages."""
        out = []
        for n in names:
            log = self.procs.logs / f"{n}.log"
            if log.exists():
                tail = log.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"--- {log} ---\n" + "\n".join(tail))
        return "\n".join(out)


def load_endpoints(state_dir: Path) -> Endpoints:
    """Ports of the control plane last started in ``state_dir``."""
    return Endpoints(**json.loads((state_dir / "cluster.json").read_text()))


def restart_component(state_dir: Path, name: str = "kube-apiserver", timeout: float = 90.0) -> float:
    """Stop one running component and start it again with the same flags and data (an upgrade or
    a crash-restart of the API server keeps etcd); returns the seconds until it was ready again."""
    bin_dir, _ = locate_binaries()
    cp = ControlPlane(state_dir, bin_dir)
    ep = load_endpoints(state_dir)
    started = time.monotonic()
    if not cp.procs.stop(name):
        raise ControlPlaneError(f"{name} did not stop")
    cp.procs.start(name, cp.argv(name, ep))
    cp.wait_ready(ep, timeout, (name,))
    return time.monotonic() - started
