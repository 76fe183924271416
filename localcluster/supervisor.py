"""The background process that stands in for every kubelet of the fleet.

``python -m localcluster supervise --state-dir DIR`` registers the nodes, renews their
leases, runs the pod runner and serves container logs (for ``kubectl logs``) until SIGTERM,
then kills every container it started.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from types import FrameType

from kubernetes import client, config

from localcluster.controlplane import load_endpoints
from localcluster.fleet import load_fleet
from localcluster.images import ImageTable
from localcluster.logserver import LogServer
from localcluster.nodes import Heartbeater, register
from localcluster.pki import ensure_pki
from localcluster.podrunner import PodRunner


def api_client(kubeconfig: Path, pool: int = 32) -> client.ApiClient:
    """An ApiClient for ``kubeconfig`` with a connection pool big enough for the pod workers."""
    cfg = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
    cfg.connection_pool_maxsize = pool
    return client.ApiClient(cfg)


def supervise(state_dir: Path) -> None:
    """Run the heartbeater and the pod runner until SIGTERM/SIGINT."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s")
    ep = load_endpoints(state_dir)
    fleet = load_fleet(state_dir / "fleet.yaml")
    images_file = state_dir / "images.yaml"
    api = api_client(state_dir / "admin.kubeconfig")
    runner = PodRunner(api, fleet, state_dir, ep.apiserver, state_dir / "pki" / "ca.crt",
                       ImageTable(images_file if images_file.exists() else None))
    logs = LogServer(ensure_pki(state_dir / "pki"), state_dir / "pods", runner.container_running)
    logs.start()
    register(api, fleet, logs.port)
    beat = Heartbeater(api, fleet, logs.port, state_dir)
    beat.start()
    done = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    t = threading.Thread(target=runner.run, name="pod-watch", daemon=True)
    t.start()
    (state_dir / "supervisor.ready").write_text("ready\n")
    done.wait()
    beat.stop()
    runner.stop()
    logs.shutdown()
    logging.info("supervisor stopped")
