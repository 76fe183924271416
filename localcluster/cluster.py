"""``up``, ``down`` and ``status`` of one local cluster (one state directory).

State directory (``$FTO_STATE_DIR``, default ``~/.cache/finetune-operator/cluster``):
    admin.kubeconfig   admin credentials (system:masters) for the local API server
    env                ``export`` lines: KUBECONFIG, PATH with kubectl, S3 endpoint and keys
    cluster.json       ports; s3.json: S3 endpoint and keys; timings.json: how long ``up`` took
    pki/               CA, serving and client certificates, service-account key pair
    pids/*.pid         every background process ``up`` started (``down`` stops them)
    logs/*.log         their output
    pods/<ns>_<name>_<uid>/<container>.log   container stdout/stderr
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from kubernetes import client
from kubernetes.client.rest import ApiException

from localcluster.controlplane import ControlPlane, ControlPlaneError, Endpoints, locate_binaries
from localcluster.fleet import DEFAULT_FLEET, load_fleet
from localcluster.images import DEFAULT_IMAGES, ImageTable
from localcluster.procs import ProcessTable, adopt, terminate

DEFAULT_BUCKETS = ("finetune",)
S3_ACCESS_KEY = "localcluster"
S3_SECRET_KEY = "localcluster-secret"
_DETACHED: list[object] = []
STOP_ORDER = ("supervisor", "kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd", "s3")


def default_state_dir() -> Path:
    """``$FTO_STATE_DIR`` or ``~/.cache/finetune-operator/cluster``."""
    env = os.environ.get("FTO_STATE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "finetune-operator" / "cluster"


def venv_bin() -> Path:
    """The environment's bin directory (kubectl, weed, console scripts live there)."""
    return Path(sys.executable).parent


@dataclass
class ClusterInfo:
    """What ``up`` started and where to find it."""

    state_dir: Path
    kubeconfig: Path
    server: str
    api_port: int
    s3_endpoint: str | None = None
    s3_access_key: str | None = None
    s3_secret_key: str | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        """Environment variables that point clients at this cluster."""
        out = {
            "FTO_STATE_DIR": str(self.state_dir),
            "KUBECONFIG": str(self.kubeconfig),
            "PATH": f"{venv_bin()}:{os.environ.get('PATH', '')}",
        }
        if self.s3_endpoint:
            out.update(
                {
                    "FTO_S3_ENDPOINT": self.s3_endpoint,
                    "AWS_ENDPOINT_URL_S3": self.s3_endpoint,
                    "AWS_ACCESS_KEY_ID": self.s3_access_key or "",
                    "AWS_SECRET_ACCESS_KEY": self.s3_secret_key or "",
                    "AWS_DEFAULT_REGION": "us-east-1",
                }
            )
        return out


def _write_env(info: ClusterInfo) -> None:
    lines = [f"export {k}={json.dumps(v)}" for k, v in info.env().items() if k != "PATH"]
    lines.append(f'export PATH="{venv_bin()}:$PATH"')
    (info.state_dir / "env").write_text("\n".join(lines) + "\n")


def _wait_nodes_ready(api: client.ApiClient, names: list[str], timeout: float) -> None:
    core = client.CoreV1Api(api)
    deadline = time.monotonic() + timeout
    not_ready = names
    while time.monotonic() < deadline:
        nodes = {n.metadata.name: n for n in core.list_node().items}
        not_ready = []
        for name in names:
            n = nodes.get(name)
            ready = n is not None and any(
                c.type == "Ready" and c.status == "True" for c in (n.status.conditions or [])
            )
            tainted = n is not None and any(
                t.key.startswith("node.kubernetes.io/") for t in (n.spec.taints or [])
            )
            if not ready or tainted:
                not_ready.append(name)
        if not not_ready:
            return
        time.sleep(0.5)
    raise ControlPlaneError(f"nodes not Ready (or still tainted) after {timeout:.0f}s: {not_ready}")


def _wait_default_serviceaccount(api: client.ApiClient, timeout: float) -> None:
    # Pods cannot be created before the serviceaccount controller made "default".
    core = client.CoreV1Api(api)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            core.read_namespaced_service_account("default", "default")
            return
        except ApiException as e:
            if e.status != 404:
                raise
        time.sleep(0.3)
    raise ControlPlaneError("the default ServiceAccount never appeared: is kube-controller-manager running?")


def is_up(state_dir: Path) -> bool:
    """True if any process recorded in ``state_dir`` is still running."""
    return bool(ProcessTable(state_dir).running())


def up(
    state_dir: Path | None = None,
    fleet_file: Path | None = None,
    images_file: Path | None = None,
    with_s3: bool = False,
    buckets: tuple[str, ...] | list[str] = DEFAULT_BUCKETS,
    api_port: int | None = None,
    timeout: float = 120.0,
) -> ClusterInfo:
    """Start control plane, simulated nodes, pod runner and optionally S3; wait until usable."""
    from localcluster.supervisor import api_client

    state_dir = (state_dir or default_state_dir()).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    if is_up(state_dir):
        raise ControlPlaneError(f"a cluster is already running in {state_dir}; run `localcluster down` first")
    t0 = time.monotonic()
    timings: dict[str, float] = {}
    # Validate inputs before starting anything.
    fleet = load_fleet(fleet_file or DEFAULT_FLEET)
    ImageTable(images_file or Path(os.environ.get("FTO_IMAGES") or DEFAULT_IMAGES))
    shutil.copyfile(fleet_file or DEFAULT_FLEET, state_dir / "fleet.yaml")
    shutil.copyfile(images_file or Path(os.environ.get("FTO_IMAGES") or DEFAULT_IMAGES), state_dir / "images.yaml")
    for stale in ("supervisor.ready",):
        (state_dir / stale).unlink(missing_ok=True)
    shutil.rmtree(state_dir / "logs", ignore_errors=True)
    bin_dir, cached = locate_binaries()
    timings["binaries"] = time.monotonic() - t0
    try:
        cp = ControlPlane(state_dir, bin_dir)
        ep = Endpoints.allocate(api_port)
        cp.start(ep, timeout=timeout)
        timings["control_plane_ready"] = time.monotonic() - t0
        procs = ProcessTable(state_dir)
        procs.start(
            "supervisor",
            [sys.executable, "-m", "localcluster", "supervise", "--state-dir", str(state_dir)],
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        api = api_client(cp.admin_kubeconfig, pool=4)
        _wait_default_serviceaccount(api, timeout)
        _wait_nodes_ready(api, [n.name for n in fleet], timeout)
        timings["nodes_ready"] = time.monotonic() - t0
        info = ClusterInfo(state_dir, cp.admin_kubeconfig, ep.server, ep.apiserver)
        if with_s3:
            from localcluster.s3 import SeaweedS3

            s3_dir = state_dir / "s3"
            shutil.rmtree(s3_dir, ignore_errors=True)
            s3 = SeaweedS3(s3_dir, access_key=S3_ACCESS_KEY, secret_key=S3_SECRET_KEY, buckets=list(buckets))
            s3.start()
            assert s3.process is not None
            # Hand the server over to the pid table: it outlives this process, `down` stops it.
            procs.record("s3", s3.process.pid)
            adopt(s3.process)
            _DETACHED.append(s3)  # its log file stays open for the server's lifetime
            info.s3_endpoint, info.s3_access_key, info.s3_secret_key = s3.endpoint, S3_ACCESS_KEY, S3_SECRET_KEY
            (state_dir / "s3.json").write_text(json.dumps(
                {"endpoint": s3.endpoint, "accessKey": S3_ACCESS_KEY, "secretKey": S3_SECRET_KEY, "buckets": list(buckets)}))
            timings["s3_ready"] = time.monotonic() - t0
        timings["total"] = time.monotonic() - t0
        info.timings = timings
        (state_dir / "timings.json").write_text(json.dumps({**timings, "binaries_cached": cached}, indent=2))
        _write_env(info)
        return info
    except BaseException as e:
        leftovers = down(state_dir)
        if isinstance(e, ControlPlaneError):
            raise
        raise ControlPlaneError(f"cluster up failed: {e!r}" + (f"; still running: {leftovers}" if leftovers else "")) from e


def _kill_containers(state_dir: Path) -> list[int]:
    """Kill container processes the runner recorded (in case the supervisor died first)."""
    pidfile = state_dir / "pods" / "container-pids"
    left = []
    if pidfile.exists():
        for line in pidfile.read_text().splitlines():
            parts = line.split()
            if not parts:
                continue
            pid, started = int(parts[0]), (parts[1] if len(parts) > 1 else None)
            if not terminate(pid, started, 0.5):
                left.append(pid)
        if not left:
            pidfile.unlink()
    for mnt in (state_dir / "pods").glob("*/volumes/*"):
        if os.path.ismount(mnt):
            subprocess.run(["umount", "-l", str(mnt)], check=False)
    return left


def down(state_dir: Path | None = None, grace: float = 10.0) -> list[str]:
    """Stop everything ``up`` started; return what is still running (empty on success)."""
    state_dir = (state_dir or default_state_dir()).resolve()
    procs = ProcessTable(state_dir)
    left = procs.stop_all(order=STOP_ORDER, grace=grace)
    left += [f"container pid {p}" for p in _kill_containers(state_dir)]
    (state_dir / "supervisor.ready").unlink(missing_ok=True)
    return left


def dead_components(state_dir: Path) -> str:
    """'' while every recorded process runs; otherwise which died, with their log tails."""
    procs = ProcessTable(state_dir)
    running = procs.running()
    dead = [r.name for r in procs.recorded() if r not in running]
    out = []
    for name in dead:
        log = procs.logs / f"{name}.log"
        tail = log.read_text(errors="replace").splitlines()[-20:] if log.exists() else []
        out.append(f"{name} is not running; last lines of {log}:\n" + "\n".join(tail))
    return "\n".join(out)


def status(state_dir: Path | None = None) -> dict[str, object]:
    """Which recorded processes run, and where the kubeconfig is."""
    state_dir = (state_dir or default_state_dir()).resolve()
    procs = ProcessTable(state_dir)
    running = {r.name for r in procs.running()}
    return {
        "state_dir": str(state_dir),
        "kubeconfig": str(state_dir / "admin.kubeconfig"),
        "processes": {r.name: ("running" if r.name in running else "stopped") for r in procs.recorded()},
    }


__all__ = ["ClusterInfo", "ControlPlaneError", "default_state_dir", "down", "is_up", "status", "up"]
