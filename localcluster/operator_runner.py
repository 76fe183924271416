"""Run the finetune operator against the local cluster, as a platform team would: under its own
ServiceAccount and ClusterRole (never admin), with the CRD installed and S3 configured.

Used by the operator's integration tests, the e2e tier and `make demo`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from localcluster.waiting import until

REPO = Path(__file__).resolve().parent.parent
CRD_FILE = REPO / "crds" / "finetunejobs.finetune.dev.yaml"
CLUSTER_ROLE_FILE = REPO / "charts" / "finetune-operator" / "files" / "clusterrole.yaml"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def kubectl_binary() -> str:
    return str(Path(sys.executable).parent / "kubectl")


def install_crd(kubeconfig: Path, timeout: float = 60, crd_file: Path = CRD_FILE) -> None:
    """Apply the generated CRD (or another tree's, `crd_file`) and wait until the API server serves it."""
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}

    def kubectl(*args: str) -> str:
        proc = subprocess.run([kubectl_binary(), *args], env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc.stdout

    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd_file))
    # Read as JSON and looked at here: until the API server's establishing controller has run, the
    # CRD's status.conditions is null, and both `kubectl wait --for=condition=Established`
    # (".status.conditions accessor error") and a jsonpath filter on the conditions ("<nil> is not
    # array or slice") fail outright instead of saying "not yet" (seen on a loaded machine).
    until(lambda: crd_established(json.loads(kubectl("get", "crd/finetunejobs.finetune.dev", "-o", "json"))),
          timeout, "the FineTuneJob CRD to be Established", interval=0.5)


def crd_established(crd: dict[str, Any]) -> bool:
    """Does the API server serve this CRD? False (not an error) while it has no conditions yet."""
    conditions = (crd.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions)


class OperatorProcess:
    """`finetune-operator run` as a child process with its own kubeconfig and configuration."""

    def __init__(self, kubeconfig: Path, workdir: Path, config: dict[str, Any], identity: str = "operator-0",
                 extra_env: dict[str, str] | None = None) -> None:
        self.kubeconfig = kubeconfig
        self.workdir = workdir
        self.identity = identity
        self.health_port = free_port()
        self.metrics_port = free_port()
        self.config = {**config, "health_port": self.health_port, "metrics_port": self.metrics_port,
                       "identity": identity}
        self.extra_env = extra_env or {}
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / f"{identity}.log"

    def start(self) -> OperatorProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        cfg_path = self.workdir / f"{self.identity}-config.json"
        cfg_path.write_text(json.dumps(self.config))
        env = {**os.environ, **self.extra_env, "KUBECONFIG": str(self.kubeconfig),
               "FINETUNE_OPERATOR_CONFIG": str(cfg_path), "PYTHONUNBUFFERED": "1"}
        for key in list(env):
            if key.startswith("FINETUNE_OPERATOR_") and key != "FINETUNE_OPERATOR_CONFIG":
                env.pop(key)
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        self.process = subprocess.Popen(
            [str(Path(sys.executable).parent / "finetune-operator"), "run"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        return self

    def health(self) -> tuple[int, dict[str, Any]]:
        """(HTTP status, probe results) of the liveness endpoint; (0, {}) when not answering."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=5) as resp:
                return resp.status, json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            return exc.code, {}
        except (urllib.error.URLError, OSError, json.JSONDecodeError):
            return 0, {}

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as resp:
            return str(resp.read().decode())

    def wait_leader(self, timeout: float = 60) -> None:
        """Wait until the operator answers its health endpoint as the leader."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"the operator exited with {self.process.returncode}:\n{self.tail()}")
            status, probes = self.health()
            if status == 200 and probes.get("leader") is True:
                return
            time.sleep(0.5)
        raise TimeoutError(f"the operator did not become leader within {timeout}s:\n{self.tail()}")

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL: the operator dies mid-whatever, as on a node failure."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self, timeout: float = 15) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
