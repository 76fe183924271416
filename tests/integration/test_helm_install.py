"""The chart installed with the pinned helm into the local cluster, running the operator.

One release is shared by the module (installing it once keeps ``make test`` short); the tests run
in file order against it: install and readiness through real probes, a job to Succeeded, the
metrics Service, the aggregated user roles, the optional ServiceMonitor/NetworkPolicy, an
upgrade that rolls the operator under a running job, leader failover, and uninstall last.

The operator runs from the chart's Deployment under the chart's ServiceAccount token (the pod
runner mounts it like a kubelet); the installer (helm) is the admin, as a platform team is.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from localcluster import helm as helm_tool
from localcluster.probes import HOST_PORTS_ANNOTATION
from localcluster.pytest_plugin import Kubectl
from localcluster.waiting import until
from operator_env import GROUP, PLURAL, VERSION, Jobs, assets, manifest, s3_client, unique  # noqa: F401 - fixtures

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "finetune-operator"
FIXTURES = Path(__file__).with_name("fixtures")
CRD_NAME = "finetunejobs.finetune.dev"
SLOW_TRAINER = "ghcr.io/finetune-operator/trainer:test-slow"  # 1 s per step: still running during an upgrade
SELECTOR = "app.kubernetes.io/name=finetune-operator,app.kubernetes.io/instance="


@dataclass
class Release:
    name: str
    namespace: str  # the release's (operator's) namespace
    jobs_namespace: str  # where the test's FineTuneJobs live (the operator watches only this one)
    helm: Path
    kubeconfig: Path
    api: client.ApiClient
    values: dict[str, Any]
    install_output: str = ""
    timings: dict[str, float] = field(default_factory=dict)

    def run(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "HELM_CACHE_HOME": "/tmp/fto-helm/cache",
               "HELM_CONFIG_HOME": "/tmp/fto-helm/config", "HELM_DATA_HOME": "/tmp/fto-helm/data"}
        proc = subprocess.run([str(self.helm), *args], env=env, text=True, capture_output=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
        return proc

    def values_file(self, values: dict[str, Any], tag: str) -> Path:
        path = Path(f"/tmp/fto-helm/{self.name}-{tag}.yaml")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(values))
        return path

    def pods(self) -> list[client.V1Pod]:
        pods = client.CoreV1Api(self.api).list_namespaced_pod(self.namespace, label_selector=SELECTOR + self.name).items
        return [p for p in pods if not p.metadata.deletion_timestamp]

    def deployment(self) -> client.V1Deployment:
        return client.AppsV1Api(self.api).read_namespaced_deployment(self.name, self.namespace)

    def leader(self) -> str | None:
        lease = client.CoordinationV1Api(self.api).read_namespaced_lease(self.values["config"]["leaseName"], self.namespace)
        return lease.spec.holder_identity


def _adopt_crd(api: client.ApiClient, release: str, namespace: str) -> None:
    """A CRD applied before the chart (as the other tests do) is adopted by the release, the way
    helm documents: its ownership label and annotations."""
    ext = client.ApiextensionsV1Api(api)
    try:
        ext.read_custom_resource_definition(CRD_NAME)
    except ApiException as exc:
        if exc.status == 404:
            return
        raise
    ext.patch_custom_resource_definition(CRD_NAME, {"metadata": {
        "labels": {"app.kubernetes.io/managed-by": "Helm"},
        "annotations": {"meta.helm.sh/release-name": release, "meta.helm.sh/release-namespace": namespace}}})


def _ready(deployment: client.V1Deployment, replicas: int) -> bool:
    st = deployment.status
    return bool(st.observed_generation == deployment.metadata.generation and st.updated_replicas == replicas
                and st.ready_replicas == replicas and st.available_replicas == replicas and (st.replicas or 0) == replicas)


@pytest.fixture(scope="module")
def release(k8s_api: client.ApiClient, kubeconfig: Path, s3: Any, assets: dict[str, str], helm: Path) -> Iterator[Release]:
    core = client.CoreV1Api(k8s_api)
    suffix = uuid.uuid4().hex[:5]
    name, ns, jobs_ns = f"fto-{suffix}", f"fto-system-{suffix}", f"fto-jobs-{suffix}"
    for n in (ns, jobs_ns):
        core.create_namespace({"metadata": {"name": n}})
    core.create_namespaced_secret(jobs_ns, {"metadata": {"name": "s3-creds"}, "stringData": {
        "AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key}})
    values = {"replicaCount": 2, "config": {
        "trainerImage": SLOW_TRAINER, "namespaces": [jobs_ns], "s3": {"endpoint": s3.endpoint, "region": "us-east-1"},
        "leaseName": f"{name}-leader", "leaseDurationSeconds": 6, "terminationGracePeriodSeconds": 30, "resyncSeconds": 5}}
    rel = Release(name, ns, jobs_ns, helm, kubeconfig, k8s_api, values)
    _adopt_crd(k8s_api, name, ns)
    t0 = time.monotonic()
    rel.install_output = rel.run("install", name, str(CHART), "--namespace", ns, "--values",
                                 str(rel.values_file(values, "install")), "--wait", "--timeout", "4m", timeout=300).stdout
    rel.timings["install"] = time.monotonic() - t0
    try:
        yield rel
    finally:
        print(f"helm timings (s): {json.dumps({k: round(v, 1) for k, v in rel.timings.items()})}")
        for pod in client.CoreV1Api(k8s_api).list_namespaced_pod(ns).items:
            logs = subprocess.run([str(Path(sys.executable).parent / "kubectl"), "--kubeconfig", str(kubeconfig), "logs",
                                   "-n", ns, pod.metadata.name, "--tail", "30"], capture_output=True, text=True).stdout
            print(f"--- {pod.metadata.name} ---\n{logs}")
        rel.run("uninstall", name, "--namespace", ns, "--wait", check=False)
        for n in (ns, jobs_ns):
            try:
                core.delete_namespace(n)
            except ApiException as exc:
                if exc.status != 404:
                    raise


@pytest.fixture(scope="module")
def jobs(release: Release) -> Jobs:
    return Jobs(release.api, release.jobs_namespace)


def _host_port(pod: client.V1Pod, container_port: int) -> int:
    ports = json.loads((pod.metadata.annotations or {}).get(HOST_PORTS_ANNOTATION) or "{}")
    return int(ports.get(str(container_port), container_port))


def test_install_runs_the_operator_from_the_chart_under_its_service_account(release: Release) -> None:
    dep = release.deployment()
    assert _ready(dep, 2), dep.status  # helm --wait returned: both replicas passed their readiness probes
    pods = release.pods()
    assert len(pods) == 2
    for pod in pods:
        assert pod.spec.service_account_name == release.name
        (container,) = pod.spec.containers
        assert container.readiness_probe.http_get.path == "/healthz" and container.liveness_probe is not None
        assert not any(e.name == "KUBECONFIG" for e in container.env or [])
        assert {c.type: c.status for c in pod.status.conditions}["Ready"] == "True"
        assert pod.status.container_statuses[0].ready is True
        ports = json.loads(pod.metadata.annotations[HOST_PORTS_ANNOTATION])
        assert set(ports) == {"8080", "9090"}
    # The two replicas share the host's network: each got its own ports.
    assert len({p.metadata.annotations[HOST_PORTS_ANNOTATION] for p in pods}) == 2
    leader = until(release.leader, timeout=60, what="a leader")
    assert leader in {p.metadata.name for p in pods}
    notes = release.install_output.split("NOTES:", 1)[1]
    for needle in (f"rollout status deployment/{release.name}", "AWS_ACCESS_KEY_ID", "get ftj -w",
                   "status.adapter.uri", "resource.customizations.health.finetune.dev_FineTuneJob"):
        assert needle in notes, needle


def test_metrics_service_is_scraped(release: Release) -> None:
    """Every replica behind the metrics Service answers /metrics; the leader's has the job,
    reconcile, state and work-queue metrics. The Service is resolved as kube-proxy would, from its selector
    and targetPort to the Ready pods' ports: the local pods' address is 127.0.0.1, which
    EndpointSlices refuse (no loopback endpoints), so the controller cannot publish them here."""
    svc = client.CoreV1Api(release.api).read_namespaced_service(f"{release.name}-metrics", release.namespace)
    (port,) = svc.spec.ports
    selector = ",".join(f"{k}={v}" for k, v in svc.spec.selector.items())

    def backends() -> list[tuple[str, str, int]]:
        pods = client.CoreV1Api(release.api).list_namespaced_pod(release.namespace, label_selector=selector).items
        out = []
        for pod in pods:
            ready = {c.type: c.status for c in pod.status.conditions or []}.get("Ready") == "True"
            if not ready or pod.metadata.deletion_timestamp:
                continue
            (container,) = pod.spec.containers
            number = next(p.container_port for p in container.ports if p.name == port.target_port)
            out.append((pod.status.pod_ip, pod.metadata.name, _host_port(pod, number)))
        return out

    ready = until(lambda: len(backends()) == 2 and backends(), timeout=60, what="both replicas behind the metrics Service")
    texts = {}
    for address, pod_name, host_port in ready:
        with urllib.request.urlopen(f"http://{address}:{host_port}/metrics", timeout=10) as resp:
            texts[pod_name] = resp.read().decode()
    leader_text = texts[release.leader()]
    assert "finetune_reconcile_duration_seconds_count" in leader_text
    assert "# TYPE finetune_state_transitions_total counter" in leader_text
    assert 'finetune_jobs{state="Running"}' in leader_text
    assert "finetune_workqueue_depth " in leader_text and "finetune_workqueue_adds_total " in leader_text


def test_edit_and_view_users_get_finetunejobs_through_the_standard_roles(release: Release) -> None:
    rbac = client.RbacAuthorizationV1Api(release.api)
    authz = client.AuthorizationV1Api(release.api)
    ns = release.jobs_namespace
    for user, role in (("alice", "edit"), ("bob", "view")):
        rbac.create_namespaced_role_binding(ns, {"metadata": {"name": f"{user}-{role}"}, "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]})

    def allowed(user: str, verb: str, subresource: str = "", namespace: str = ns) -> bool:
        review = authz.create_subject_access_review({"spec": {"user": user, "groups": ["system:authenticated"],
            "resourceAttributes": {"group": GROUP, "resource": PLURAL, "verb": verb, "namespace": namespace,
                                   "subresource": subresource}}})
        return bool(review.status.allowed)

    # The controller-manager's aggregation controller folds the chart's roles in asynchronously.
    until(lambda: allowed("alice", "create") and allowed("bob", "list"), timeout=60, what="aggregated FineTuneJob rights")
    assert all(allowed("alice", v) for v in ("get", "list", "watch", "patch", "delete"))
    assert not allowed("alice", "patch", "status")  # status is the operator's
    assert allowed("bob", "get") and allowed("bob", "watch")
    assert not any(allowed("bob", v) for v in ("create", "patch", "delete"))
    assert not allowed("alice", "create", namespace=release.namespace)  # only where the role is bound


def test_service_monitor_and_network_policy_are_accepted(release: Release, kubectl: Kubectl, tmp_path: Path) -> None:
    """Rendered with the release's values and applied for real; the ServiceMonitor against a
    minimal copy of the prometheus-operator CRD. No CNI enforces the NetworkPolicy here."""
    kubectl("apply", "--server-side", "-f", str(FIXTURES / "servicemonitors.monitoring.coreos.com.yaml"))
    kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/servicemonitors.monitoring.coreos.com")
    values = {**release.values, "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}},
              "networkPolicy": {"enabled": True, "metricsFrom": [{"namespaceSelector": {"matchLabels": {
                  "kubernetes.io/metadata.name": "monitoring"}}}]}}
    out = release.run("template", release.name, str(CHART), "--namespace", release.namespace,
                      "--kube-version", helm_tool.KUBE_VERSION, "--values", str(release.values_file(values, "optional")),
                      "--show-only", "templates/servicemonitor.yaml", "--show-only", "templates/networkpolicy.yaml").stdout
    path = tmp_path / "optional.yaml"
    path.write_text(out)
    try:
        applied = kubectl("apply", "--server-side", "--validate=strict", "-f", str(path), "-o", "json").stdout
        items = json.loads(applied)
        kinds = {o["kind"] for o in items.get("items", [items])}
        assert kinds == {"ServiceMonitor", "NetworkPolicy"}
        monitor = json.loads(kubectl("get", "servicemonitor", release.name, "-n", release.namespace, "-o", "json").stdout)
        assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    finally:
        kubectl("delete", "--ignore-not-found", "-f", str(path))


def test_examples_show_no_drift_after_the_operator_reconciled_them(release: Release, kubectl: Kubectl) -> None:
    """What Argo CD would diff: every example applied server-side, reconciled to a final state by
    the operator, then ``kubectl diff --server-side`` of the same files shows nothing."""
    ns = release.jobs_namespace
    core = client.CoreV1Api(release.api)
    examples = sorted((REPO / "examples").glob("*.yaml"))
    secrets: dict[str, set[str]] = {"s3-credentials": {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}}
    for path in examples:
        spec = yaml.safe_load(path.read_text())["spec"]
        if (spec.get("baseModel") or {}).get("credentialsSecret"):
            ref = spec["baseModel"]["credentialsSecret"]
            secrets.setdefault(ref["name"], set()).add(ref.get("key", "HF_TOKEN"))
        wandb = ((spec.get("tracking") or {}).get("wandb") or {}).get("apiKeySecret")
        if wandb:
            secrets.setdefault(wandb["name"], set()).add(wandb["key"])
    for name, keys in secrets.items():
        if name != "s3-creds":
            core.create_namespaced_secret(ns, {"metadata": {"name": name}, "stringData": {k: "not-a-real-key" for k in keys}})
    files = [arg for path in examples for arg in ("-f", str(path))]
    kubectl("apply", "--server-side", "-n", ns, *files)
    names = [yaml.safe_load(p.read_text())["metadata"]["name"] for p in examples]
    custom = client.CustomObjectsApi(release.api)

    def states() -> dict[str, Any]:
        return {n: (custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, n).get("status") or {}).get("state")
                for n in names}

    until(lambda: all(s in ("Succeeded", "Failed", "Suspended") for s in states().values()), timeout=420, interval=2,
          what="every example to reach a final state")
    diff = kubectl("diff", "--server-side", "-n", ns, *files, check=False)
    assert diff.returncode == 0 and diff.stdout == "", f"drift after reconcile (exit {diff.returncode}):\n{diff.stdout}{diff.stderr}"
    for n in names:
        custom.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, n)


def test_a_job_succeeds_and_an_upgrade_rolls_the_operator_leaving_it_alone(release: Release, jobs: Jobs) -> None:
    name = unique("upgrade")
    jobs.create(manifest(name, training={"maxSteps": 40, "microBatchSize": 2, "gradientAccumulation": 1,
                                         "checkpoint": {"everySteps": 10, "keep": 2}}))
    running = jobs.wait(name, lambda b: ((b.get("status") or {}).get("progress") or {}).get("step") is not None,
                        300, "training progress")
    training_pod = running["status"]["placement"]["pod"]
    pod_uid = client.CoreV1Api(release.api).read_namespaced_pod(training_pod, release.jobs_namespace).metadata.uid
    before = {p.metadata.name for p in release.pods()}
    generation = release.deployment().metadata.generation
    values = {**release.values, "config": {**release.values["config"], "resyncSeconds": 3}}
    t0 = time.monotonic()
    release.run("upgrade", release.name, str(CHART), "--namespace", release.namespace, "--values",
                str(release.values_file(values, "upgrade")), "--wait", "--timeout", "4m", timeout=300)
    release.timings["upgrade"] = time.monotonic() - t0
    release.values = values
    dep = release.deployment()
    assert dep.metadata.generation > generation and _ready(dep, 2)
    after = {p.metadata.name for p in release.pods()}
    assert after.isdisjoint(before), (before, after)  # every replica was replaced
    # The training pod is the same one, and the job carries on to the end under the new replicas.
    pod = client.CoreV1Api(release.api).read_namespaced_pod(training_pod, release.jobs_namespace)
    assert pod.metadata.uid == pod_uid
    status = jobs.wait_state(name, "Succeeded", timeout=600)["status"]
    assert status["attempts"] == 1 and status["placement"]["pod"] == training_pod
    # A job succeeds through the installed operator: its adapter is in S3, and the operator's pods
    # (under the chart's ServiceAccount) wrote the status.
    assert status["adapter"]["uri"].startswith("s3://finetune/adapters/")
    managers = {m["manager"] for m in jobs.get(name)["metadata"]["managedFields"] if m.get("subresource") == "status"}
    assert managers
    assert release.leader() in {p.metadata.name for p in release.pods()}


def test_the_standby_takes_over_when_the_leaders_pod_is_deleted(release: Release) -> None:
    leader = until(release.leader, timeout=60, what="a leader")
    standby = next(p.metadata.name for p in release.pods() if p.metadata.name != leader)
    t0 = time.monotonic()
    client.CoreV1Api(release.api).delete_namespaced_pod(leader, release.namespace)
    until(lambda: release.leader() == standby, timeout=60, what=f"{standby} to take the Lease from {leader}")
    release.timings["failover"] = time.monotonic() - t0
    until(lambda: _ready(release.deployment(), 2), timeout=120, what="the Deployment to be whole again")


def test_uninstall_keeps_the_crd_and_jobs_and_leaves_nothing_of_the_operator(release: Release, jobs: Jobs) -> None:
    kept = unique("kept")
    jobs.create(manifest(kept, runPolicy={"suspend": True}))
    release.run("uninstall", release.name, "--namespace", release.namespace, "--wait", "--timeout", "2m")
    api = release.api
    client.ApiextensionsV1Api(api).read_custom_resource_definition(CRD_NAME)  # kept
    assert kept in {o["metadata"]["name"] for o in jobs.custom.list_namespaced_custom_object(
        GROUP, VERSION, release.jobs_namespace, PLURAL)["items"]}
    selector = f"app.kubernetes.io/instance={release.name}"
    core, apps, rbac = client.CoreV1Api(api), client.AppsV1Api(api), client.RbacAuthorizationV1Api(api)
    until(lambda: not release.pods(), timeout=60, what="the operator's pods to go")
    left = {
        "deployments": apps.list_namespaced_deployment(release.namespace).items,
        "configmaps": [c for c in core.list_namespaced_config_map(release.namespace).items if c.metadata.name != "kube-root-ca.crt"],
        "services": core.list_namespaced_service(release.namespace).items,
        "serviceaccounts": [s for s in core.list_namespaced_service_account(release.namespace).items if s.metadata.name != "default"],
        "leases": client.CoordinationV1Api(api).list_namespaced_lease(release.namespace).items,
        "clusterroles": rbac.list_cluster_role(label_selector=selector).items,
        "clusterrolebindings": rbac.list_cluster_role_binding(label_selector=selector).items,
    }
    assert {k: [o.metadata.name for o in v] for k, v in left.items() if v} == {}
