"""The Helm chart's rendered objects on the real kube-apiserver.

``kubectl apply --server-side --dry-run=server --validate=strict`` sends every rendered object
through the API server's admission, OpenAPI validation and strict field validation without
persisting it. Server-side apply (with ``--force-conflicts``) is used because the
cluster-scoped CRD may already be installed by other tests in the session: a dry-run apply
over it is still fully validated and changes nothing. Cluster-scoped names are unique per test.

The helm binary is found as in the unit tier (``$FTO_HELM``, the cache, or ``charts/build-helm.sh``);
without it these tests fail with the reason.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from localcluster import helm as helm_tool
from localcluster.pytest_plugin import Kubectl
from localcluster.waiting import until

CHART = helm_tool.CHART


def render(helm: Path, release: str, namespace: str, tmp_path: Path, values: dict[str, Any] | None = None) -> Path:
    args = [str(helm), "template", release, str(CHART), "--namespace", namespace, "--kube-version", helm_tool.KUBE_VERSION]
    if values is not None:
        vpath = tmp_path / "values.yaml"
        vpath.write_text(yaml.safe_dump(values))
        args += ["--values", str(vpath)]
    proc = subprocess.run(args, text=True, capture_output=True, timeout=120)
    assert proc.returncode == 0, f"helm template failed: {proc.stderr}"
    out = tmp_path / f"{release}.yaml"
    out.write_text(proc.stdout)
    return out


def dry_run(kubectl: Kubectl, manifest: Path) -> list[str]:
    """Server-side dry-run apply of every object; returns the ``kind/name`` lines kubectl printed."""
    proc = kubectl("apply", "--server-side", "--dry-run=server", "--force-conflicts", "--validate=strict",
                   "--field-manager=fto-chart-test", "-f", str(manifest), check=False)
    assert proc.returncode == 0, f"the API server rejected the rendered chart:\n{proc.stderr}"
    return [line for line in proc.stdout.splitlines() if line.strip()]


def objects(manifest: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(manifest.read_text()) if doc]


@pytest.mark.parametrize("values", [None, "full"], ids=["defaults", "every-key"])
def test_rendered_chart_is_accepted_by_the_api_server(helm: Path, kubectl: Kubectl, namespace: str, tmp_path: Path,
                                                      values: str | None) -> None:
    release = f"fto-{namespace[-6:]}"
    manifest = render(helm, release, namespace, tmp_path, helm_tool.full_values() if values == "full" else None)
    rendered = objects(manifest)
    if any(o["kind"] == "ServiceMonitor" for o in rendered):
        # Every key includes the optional ServiceMonitor: its CRD comes with prometheus-operator.
        crd = Path(__file__).with_name("fixtures") / "servicemonitors.monitoring.coreos.com.yaml"
        kubectl("apply", "--server-side", "-f", str(crd))
        kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/servicemonitors.monitoring.coreos.com")
    assert {o["kind"] for o in rendered} >= {"CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding",
                                             "ServiceAccount", "ConfigMap", "Deployment"}
    lines = dry_run(kubectl, manifest)
    assert len(lines) == len(rendered), lines
    assert all("(server dry run)" in line for line in lines), lines
    # Nothing was persisted: dry-run means dry-run.
    for obj in rendered:
        if obj["kind"] in ("ClusterRole", "ClusterRoleBinding"):
            got = kubectl("get", obj["kind"].lower(), obj["metadata"]["name"], "--ignore-not-found", "-o", "name")
            assert got.stdout.strip() == "", f"{obj['kind']} {obj['metadata']['name']} was created by a dry run"


def test_api_server_rejects_a_broken_object(helm: Path, kubectl: Kubectl, namespace: str, tmp_path: Path) -> None:
    """The dry run really validates: an unknown field in the rendered Deployment is refused (strict)."""
    manifest = render(helm, f"fto-{namespace[-6:]}", namespace, tmp_path)
    docs = objects(manifest)
    for doc in docs:
        if doc["kind"] == "Deployment":
            doc["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = {}
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump_all(docs))
    proc = kubectl("apply", "--server-side", "--dry-run=server", "--force-conflicts", "--validate=strict",
                   "--field-manager=fto-chart-test", "-f", str(broken), check=False)
    assert proc.returncode != 0 and "livenessProbes" in proc.stderr, proc.stderr


def test_chart_rbac_grants_the_operator_its_rights_and_no_secrets(helm: Path, kubectl: Kubectl, namespace: str,
                                                                  tmp_path: Path) -> None:
    """The rendered ServiceAccount, ClusterRole and binding, applied for real, authorise what they should."""
    release = f"fto-{namespace[-6:]}"
    rbac = [o for o in objects(render(helm, release, namespace, tmp_path))
            if o["kind"] in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding")]
    path = tmp_path / "rbac.yaml"
    path.write_text(yaml.safe_dump_all(rbac))
    try:
        kubectl("apply", "--server-side", "--field-manager=fto-chart-test", "-f", str(path))
        user = f"system:serviceaccount:{namespace}:{release}"
        groups = ["system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"]

        def can(verb: str, group: str, resource: str, ns: str = "other-ns", subresource: str = "") -> bool:
            # A SubjectAccessReview asks the authoriser directly: unlike `kubectl auth can-i` it
            # needs no discovery, so it answers for finetunejobs whether or not the CRD is installed.
            review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                      "spec": {"user": user, "groups": groups, "resourceAttributes": {
                          "verb": verb, "group": group, "resource": resource, "namespace": ns, "subresource": subresource}}}
            out = kubectl("create", "-f", "-", "-o", "json", input=json.dumps(review)).stdout
            return bool(json.loads(out)["status"].get("allowed"))

        # The RBAC authoriser reads roles from an informer cache: poll until the new ones are in it.
        until(lambda: can("watch", "finetune.dev", "finetunejobs"), 30, "the chart's ClusterRole to take effect", interval=0.3)
        assert can("patch", "finetune.dev", "finetunejobs", subresource="status")
        assert can("create", "batch", "jobs")
        assert can("update", "coordination.k8s.io", "leases", namespace)
        assert not can("get", "", "secrets")
        assert not can("list", "", "secrets", namespace)
        assert not can("delete", "finetune.dev", "finetunejobs")
        assert not can("patch", "finetune.dev", "finetunejobs")  # the spec is the user's; only status is ours
    finally:
        for obj in rbac:
            if obj["kind"] != "ServiceAccount":
                kubectl("delete", obj["kind"].lower(), obj["metadata"]["name"], "--ignore-not-found", "--wait=false")


def test_rendered_config_survives_the_api_server(helm: Path, kubectl: Kubectl, namespace: str, tmp_path: Path) -> None:
    """The ConfigMap as stored by the server (not just as rendered) is a valid operator configuration."""
    from finetune_operator import config

    release = f"fto-{namespace[-6:]}"
    full = helm_tool.full_values()
    cms = [o for o in objects(render(helm, release, namespace, tmp_path, full)) if o["kind"] == "ConfigMap"]
    path = tmp_path / "cm.yaml"
    path.write_text(yaml.safe_dump_all(cms))
    kubectl("apply", "--server-side", "--field-manager=fto-chart-test", "-n", namespace, "-f", str(path))
    stored = json.loads(kubectl("get", "configmap", cms[0]["metadata"]["name"], "-n", namespace, "-o", "json").stdout)
    cfg_file = tmp_path / "config.yaml"
    cfg_file.write_text(stored["data"]["config.yaml"])
    cfg = config.load({"FINETUNE_OPERATOR_CONFIG": str(cfg_file)})
    assert cfg.lease_namespace == namespace
    assert cfg.max_concurrent_jobs == full["config"]["maxConcurrentJobs"]
