"""The Helm chart, rendered by a pinned helm: lint, defaults, every values key, RBAC, config, CRD, schema.

Pure apart from the helm binary: ``$FTO_HELM``, else the cached build of ``charts/build-helm.sh``,
else that script is run once (it caches by version). No helm means these tests fail with the
reason; they never skip.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from localcluster import helm as helm_tool

CHART = helm_tool.CHART
KUBE_VERSION = helm_tool.KUBE_VERSION
RELEASE, NAMESPACE = "fto", "platform"


def run_helm(helm: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    # A private HOME-like state so a developer's helm repositories and plugins never leak in.
    env = {**os.environ, "HELM_CACHE_HOME": "/tmp/fto-helm/cache", "HELM_CONFIG_HOME": "/tmp/fto-helm/config",
           "HELM_DATA_HOME": "/tmp/fto-helm/data"}
    proc = subprocess.run([str(helm), *args], env=env, text=True, capture_output=True, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def render(helm: Path, tmp_path: Path, values: dict[str, Any] | None = None, *extra: str) -> list[dict[str, Any]]:
    """``helm template`` → the list of rendered objects."""
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--kube-version", KUBE_VERSION, *extra]
    if values is not None:
        path = tmp_path / "values.yaml"
        path.write_text(yaml.safe_dump(values))
        args += ["--values", str(path)]
    out = run_helm(helm, *args).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def by_kind(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """One object per kind; the aggregated ClusterRoles (``-edit``/``-view``) are keyed by their label."""
    kinds: dict[str, dict[str, Any]] = {}
    for obj in objects:
        key = obj["kind"]
        labels = obj["metadata"].get("labels") or {}
        for role in ("edit", "view"):
            if key == "ClusterRole" and labels.get(f"rbac.authorization.k8s.io/aggregate-to-{role}") == "true":
                key = f"ClusterRole/{role}"
        assert key not in kinds, f"two {key} objects rendered"
        kinds[key] = obj
    return kinds


def load_config(tmp_path: Path, configmap: dict[str, Any]) -> Any:
    from finetune_operator import config

    path = tmp_path / "config.yaml"
    path.write_text(configmap["data"]["config.yaml"])
    return config.load({"FINETUNE_OPERATOR_CONFIG": str(path), "POD_NAME": "fto-0"})


# Every key of values.schema.json with a value different from its default
# (test_full_values_set_every_schema_key keeps it complete).
FULL: dict[str, Any] = helm_tool.full_values()


def _schema() -> dict[str, Any]:
    return json.loads((CHART / "values.schema.json").read_text())  # type: ignore[no-any-return]


def _leaves(schema: dict[str, Any], prefix: str = "") -> Iterator[str]:
    for key, sub in schema.get("properties", {}).items():
        if sub.get("properties"):
            yield from _leaves(sub, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def _get(values: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        values = values[part]
    return values


def test_full_values_set_every_schema_key() -> None:
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    for key in _leaves(_schema()):
        # FULL keeps the CRD and the ServiceAccount to see their other keys; false is covered by
        # test_crds_disabled and test_existing_service_account.
        if key in ("crds.enabled", "serviceAccount.create", "metrics.service.enabled", "rbac.aggregateToDefaultRoles"):
            continue
        assert _get(FULL, key) != _get(defaults, key), f"{key}: FULL must set it to a non-default value"


def test_every_operator_config_key_is_settable_through_the_chart() -> None:
    """Everything a platform team configures has a chart value (identity comes from POD_NAME)."""
    from finetune_operator.config import OperatorConfig

    template = (CHART / "templates" / "configmap.yaml").read_text()
    for field in OperatorConfig.model_fields:
        if field != "identity":
            assert f"\n    {field}:" in template, f"{field} has no chart value"


def test_node_pool_schema_is_the_operators_model() -> None:
    """The schema catches a misspelt pool key at install time instead of at the operator's start."""
    from finetune_operator.gpus import NodePool

    pool = _schema()["properties"]["config"]["properties"]["nodePools"]["items"]
    aliases = {f.alias or name for name, f in NodePool.model_fields.items()}
    assert set(pool["properties"]) == aliases
    assert set(pool["required"]) == {f.alias or n for n, f in NodePool.model_fields.items() if f.is_required()}
    for entry in FULL["config"]["nodePools"]:
        NodePool.model_validate(entry).to_node()


def test_lint_strict(helm: Path, tmp_path: Path) -> None:
    run_helm(helm, "lint", "--strict", "--kube-version", KUBE_VERSION, str(CHART))
    path = tmp_path / "full.yaml"
    path.write_text(yaml.safe_dump(FULL))
    run_helm(helm, "lint", "--strict", "--kube-version", KUBE_VERSION, str(CHART), "--values", str(path))


def test_defaults_render(helm: Path, tmp_path: Path) -> None:
    objects = by_kind(render(helm, tmp_path))
    assert set(objects) == {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "Deployment",
                            "CustomResourceDefinition", "Service", "ClusterRole/edit", "ClusterRole/view", "Lease"}
    for obj in objects.values():
        if obj["kind"] not in ("ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"):
            assert obj["metadata"]["namespace"] == NAMESPACE, obj["kind"]
    dep = objects["Deployment"]
    assert dep["spec"]["replicas"] == 2
    pod = dep["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == RELEASE == objects["ServiceAccount"]["metadata"]["name"]
    (container,) = pod["containers"]
    assert container["image"] == "ghcr.io/finetune-operator/operator:0.1.0"
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"health": 8080, "metrics": 9090}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    binding = objects["ClusterRoleBinding"]
    assert binding["roleRef"]["name"] == objects["ClusterRole"]["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": RELEASE, "namespace": NAMESPACE}]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["config"]["configMap"]["name"] == objects["ConfigMap"]["metadata"]["name"]


def test_default_config_validates_and_matches_operator_defaults(helm: Path, tmp_path: Path) -> None:
    from finetune_operator.config import OperatorConfig

    cfg = load_config(tmp_path, by_kind(render(helm, tmp_path))["ConfigMap"])
    defaults = OperatorConfig()
    # The chart's defaults are the operator's, except where a release decides (its namespace).
    mine = {"lease_namespace", "identity"}  # identity comes from POD_NAME
    assert cfg.model_dump(exclude=mine) == defaults.model_dump(exclude=mine)
    assert cfg.lease_namespace == NAMESPACE


def test_every_value_reaches_the_rendered_objects(helm: Path, tmp_path: Path) -> None:
    objects = by_kind(render(helm, tmp_path, FULL))
    cfg = load_config(tmp_path, objects["ConfigMap"])
    c = FULL["config"]
    assert cfg.trainer_image == c["trainerImage"]
    assert cfg.allowed_trainer_images == c["allowedTrainerImages"]
    assert cfg.image_pull_secrets == c["imagePullSecrets"]
    assert cfg.runtime_class_name == c["runtimeClassName"]
    assert cfg.gpu_catalog == c["gpuCatalog"]
    assert cfg.node_pools == c["nodePools"]
    assert {k: str(v) for k, v in cfg.gpu_prices.items()} == c["gpuPrices"]
    assert cfg.s3.model_dump() == {"endpoint": c["s3"]["endpoint"], "region": c["s3"]["region"], "path_style": False,
                                   "ca_bundle_configmap": "s3-ca", "ca_bundle_key": "bundle.pem",
                                   "allowed_endpoints": c["s3"]["allowedEndpoints"]}
    assert cfg.allow_trust_remote_code is True
    assert cfg.vram_headroom == "0.05"
    assert cfg.namespaces == c["namespaces"]  # only those listed: the Lease is watched apart, in its own namespace
    assert cfg.max_concurrent_jobs == 1000000  # not 1e+06: numbers from values files are floats in Go templates
    assert cfg.termination_grace_period_seconds == 300
    assert (cfg.node_lost_toleration_seconds, cfg.node_lost_force_delete_seconds) == (45, 75)
    assert cfg.workload_identity_annotations == c["workloadIdentityAnnotations"]
    assert cfg.model_cache_pvc == "models"
    assert cfg.gpu_tolerations == c["gpuTolerations"]
    assert (cfg.shm_size, cfg.inspection_cpu, cfg.inspection_memory) == ("16Gi", "500m", "2Gi")
    assert (cfg.lease_name, cfg.lease_namespace, cfg.lease_duration_seconds) == ("fto-leader", NAMESPACE, 30)
    assert cfg.resync_seconds == 2.5
    assert cfg.network.model_dump() == {"hf_endpoint": "https://hf-mirror.example", "allowed_link_local_hosts": ["169.254.10.0/24"]}
    assert cfg.s3_retries.model_dump() == {"mode": "adaptive", "max_attempts": 4, "connect_timeout_seconds": 3.0,
                                           "read_timeout_seconds": 30.5}
    assert (cfg.health_port, cfg.metrics_port) == (8181, 9191)

    dep = objects["Deployment"]
    assert dep["spec"]["replicas"] == 3
    pod = dep["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "registry.example/fto/operator:9.9.9"
    assert container["imagePullPolicy"] == "Always"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert container["resources"] == FULL["resources"]
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"health": 8181, "metrics": 9191}
    assert pod["serviceAccountName"] == "fto-sa"
    sa = objects["ServiceAccount"]
    assert sa["metadata"]["name"] == "fto-sa"
    assert sa["metadata"]["annotations"] == FULL["serviceAccount"]["annotations"]
    assert objects["ClusterRoleBinding"]["subjects"][0]["name"] == "fto-sa"
    assert "annotations" not in objects["CustomResourceDefinition"]["metadata"]  # crds.keep: false


def test_config_change_rolls_the_deployment(helm: Path, tmp_path: Path) -> None:
    before = by_kind(render(helm, tmp_path))["Deployment"]
    changed = {"config": {**yaml.safe_load((CHART / "values.yaml").read_text())["config"], "maxConcurrentJobs": 4}}
    after = by_kind(render(helm, tmp_path, changed))["Deployment"]
    key = "checksum/config"
    assert before["spec"]["template"]["metadata"]["annotations"][key] != after["spec"]["template"]["metadata"]["annotations"][key]


def test_existing_service_account(helm: Path, tmp_path: Path) -> None:
    objects = by_kind(render(helm, tmp_path, {"serviceAccount": {"create": False, "name": "byo"}}))
    assert "ServiceAccount" not in objects
    assert objects["Deployment"]["spec"]["template"]["spec"]["serviceAccountName"] == "byo"
    assert objects["ClusterRoleBinding"]["subjects"][0]["name"] == "byo"


def test_cluster_role_is_the_operators_rbac_file(helm: Path, tmp_path: Path) -> None:
    role = by_kind(render(helm, tmp_path))["ClusterRole"]
    source = yaml.safe_load((CHART / "files" / "clusterrole.yaml").read_text())
    assert role["rules"] == source["rules"]
    assert role["metadata"]["name"] == RELEASE
    assert role["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE


def test_crd_is_the_generated_one_and_kept(helm: Path, tmp_path: Path) -> None:
    crd = by_kind(render(helm, tmp_path))["CustomResourceDefinition"]
    text = (CHART / "files" / "finetunejobs.finetune.dev.yaml").read_text()
    source = yaml.safe_load(text)
    assert "annotations" not in source["metadata"], "the template adds the annotations block itself"
    assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    kept = copy.deepcopy(crd)
    del kept["metadata"]["annotations"]
    assert kept == source


def test_crd_text_is_emitted_unchanged(helm: Path) -> None:
    """Byte for byte: a YAML round trip in the template would turn `default: 2e-4` into 0.0002."""
    text = (CHART / "files" / "finetunejobs.finetune.dev.yaml").read_text()
    for keep, extra in ((False, ""), (True, "  annotations:\n    helm.sh/resource-policy: keep\n")):
        out = run_helm(helm, "template", RELEASE, str(CHART), "--kube-version", KUBE_VERSION, "--show-only",
                       "templates/crd.yaml", "--set", f"crds.keep={str(keep).lower()}").stdout
        body = out.split("# Source: finetune-operator/templates/crd.yaml\n", 1)[1]
        assert body.strip() == text.replace("\nmetadata:\n", f"\nmetadata:\n{extra}", 1).strip()


def test_crds_disabled(helm: Path, tmp_path: Path) -> None:
    kinds = {o["kind"] for o in render(helm, tmp_path, {"crds": {"enabled": False, "keep": True}})}
    assert "CustomResourceDefinition" not in kinds


@pytest.mark.parametrize("values, expected", [
    ({"bogus": 1}, "bogus"),
    ({"config": {"trainerImage": "x", "trainer_image": "y"}}, "trainer_image"),  # snake_case is the file's, not the chart's
    ({"config": {"s3": {"endpont": "http://x"}}}, "endpont"),
    ({"config": {"vramHeadroom": "1.5"}}, "vramHeadroom"),
    ({"config": {"terminationGracePeriodSeconds": 5}}, "terminationGracePeriodSeconds"),
    ({"config": {"shmSize": "lots"}}, "shmSize"),
    ({"metrics": {"port": 70000}}, "port"),
    ({"config": {"nodePools": [{"name": "p", "gpuProduct": "NVIDIA-L4", "gpus": 2}]}}, "gpus"),
], ids=["unknown-top-level", "unknown-config-key", "unknown-s3-key", "headroom", "grace", "quantity", "port", "pool-key"])
def test_schema_rejects(helm: Path, tmp_path: Path, values: dict[str, Any], expected: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(values))
    proc = run_helm(helm, "template", RELEASE, str(CHART), "--kube-version", KUBE_VERSION, "--values", str(path), check=False)
    assert proc.returncode != 0, f"{values} rendered"
    assert "values don't meet the specifications of the schema" in proc.stderr and expected in proc.stderr, proc.stderr


def test_kube_version_floor(helm: Path) -> None:
    proc = run_helm(helm, "template", RELEASE, str(CHART), "--kube-version", "1.30.0", check=False)
    assert proc.returncode != 0 and "kubeVersion" in proc.stderr, proc.stderr


def test_metrics_service_selects_the_operator_pods(helm: Path, tmp_path: Path) -> None:
    objects = by_kind(render(helm, tmp_path))
    svc, dep = objects["Service"], objects["Deployment"]
    assert svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    assert svc["spec"]["ports"] == [{"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"}]


def test_optional_service_monitor_and_network_policy(helm: Path, tmp_path: Path) -> None:
    objects = by_kind(render(helm, tmp_path, FULL))
    monitor, svc = objects["ServiceMonitor"], objects["Service"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "15s"}]
    assert monitor["metadata"]["labels"]["release"] == "prom"
    policy = objects["NetworkPolicy"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= \
        objects["Deployment"]["spec"]["template"]["metadata"]["labels"].items()
    assert policy["spec"]["ingress"][0]["from"] == FULL["networkPolicy"]["metricsFrom"]
    defaults = by_kind(render(helm, tmp_path))
    assert "ServiceMonitor" not in defaults and "NetworkPolicy" not in defaults


def test_service_monitor_without_the_service_fails_with_the_reason(helm: Path, tmp_path: Path) -> None:
    path = tmp_path / "v.yaml"
    path.write_text(yaml.safe_dump({"metrics": {"service": {"enabled": False}, "serviceMonitor": {"enabled": True}}}))
    proc = run_helm(helm, "template", RELEASE, str(CHART), "--kube-version", KUBE_VERSION, "--values", str(path), check=False)
    assert proc.returncode != 0 and "needs metrics.service.enabled" in proc.stderr, proc.stderr


def test_aggregated_roles_give_edit_write_and_view_read(helm: Path, tmp_path: Path) -> None:
    objects = by_kind(render(helm, tmp_path))
    edit, view = objects["ClusterRole/edit"], objects["ClusterRole/view"]
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-admin"] == "true"
    assert {"create", "delete", "patch"} <= set(edit["rules"][0]["verbs"]) and edit["rules"][0]["resources"] == ["finetunejobs"]
    assert all(set(r["verbs"]) == {"get", "list", "watch"} for r in view["rules"])
    assert not any("finetunejobs/status" in r["resources"] and "patch" in r["verbs"] for r in edit["rules"])
    off = by_kind(render(helm, tmp_path, {"rbac": {"aggregateToDefaultRoles": False}}))
    assert "ClusterRole/edit" not in off and "ClusterRole/view" not in off

