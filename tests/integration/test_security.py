"""Security guarantees shown on a real run: Pod Security `restricted`, least privilege, no leaked secret.

One job runs end to end in a namespace that enforces the `restricted` Pod Security Standard, with
S3 keys, a Hugging Face token and a W&B key in Secrets. Afterwards every place a value could leak
to is read back and searched for those values and for any service-account token.
"""

from __future__ import annotations

import json
import re
import secrets
from typing import Any

from kubernetes import client

from operator_env import (  # noqa: F401 - fixtures
    BUCKET, Jobs, assets, crd, job_namespace, jobs, manifest, s3_client, s3_keys, start_operator, unique,
)

WANDB_OFFLINE_IMAGE = "ghcr.io/finetune-operator/trainer:test-wandb-offline"
# A JSON Web Token (every service-account token is one): three base64url parts, the first '{"'.
JWT = re.compile(r"eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}")


def _sar(api: client.ApiClient, user: str, namespace: str, verb: str, resource: str, name: str = "",
         group: str = "", subresource: str = "") -> bool:
    review = client.AuthorizationV1Api(api).create_subject_access_review({
        "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {"user": user, "groups": ["system:serviceaccounts", f"system:serviceaccounts:{namespace}",
                                          "system:authenticated"],
                 "resourceAttributes": {"namespace": namespace, "verb": verb, "group": group,
                                        "resource": resource, "name": name, "subresource": subresource}}})
    return bool(review.status.allowed)


def test_restricted_namespace_least_privilege_and_no_secret_in_sight(
    jobs: Jobs, start_operator: Any, s3: Any, s3_client: Any, kubectl: Any, k8s_api: client.ApiClient,
) -> None:
    ns = jobs.namespace
    jobs.core.patch_namespace(ns, {"metadata": {"labels": {
        "pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/enforce-version": "latest"}}})
    hf_token, wandb_key = "hf_" + secrets.token_hex(16), secrets.token_hex(20)
    for secret, key, value in (("hf-token", "HF_TOKEN", hf_token), ("wandb", "WANDB_API_KEY", wandb_key)):
        jobs.core.create_namespaced_secret(ns, {"metadata": {"name": secret}, "stringData": {key: value}})

    op = start_operator(trainer_image=WANDB_OFFLINE_IMAGE)
    name = unique("secure")
    body = manifest(name)
    body["spec"]["baseModel"]["credentialsSecret"] = {"name": "hf-token"}
    body["spec"]["tracking"] = {"wandb": {"project": "secure", "apiKeySecret": {"name": "wandb", "key": "WANDB_API_KEY"}}}
    jobs.create(body)
    done = jobs.wait_state(name, "Succeeded", timeout=600)
    uid = done["metadata"]["uid"]

    # The per-job ServiceAccount may touch its own progress ConfigMap and nothing else.
    sa = f"system:serviceaccount:{ns}:{name}-trainer"
    assert _sar(k8s_api, sa, ns, "patch", "configmaps", f"{name}-progress")
    assert _sar(k8s_api, sa, ns, "get", "configmaps", f"{name}-progress")
    denied = [
        ("patch", "configmaps", "other-job-progress", ""), ("get", "configmaps", "other-job-progress", ""),
        ("list", "configmaps", "", ""), ("create", "configmaps", "", ""), ("delete", "configmaps", f"{name}-progress", ""),
        ("get", "secrets", "s3-creds", ""), ("list", "secrets", "", ""), ("create", "pods", "", ""),
        ("get", "pods", "", ""), ("patch", "finetunejobs", name, "finetune.dev"), ("create", "jobs", "", "batch"),
        ("create", "serviceaccounts", "", ""),
    ]
    allowed = [(verb, res, obj) for verb, res, obj, group in denied if _sar(k8s_api, sa, ns, verb, res, obj, group)]
    assert not allowed, f"the trainer's ServiceAccount may do more than patch its progress: {allowed}"
    assert not _sar(k8s_api, sa, ns, "patch", "finetunejobs", name, "finetune.dev", "status")

    # Pod specs name credentials only by reference.
    pods = jobs.core.list_namespaced_pod(ns).items
    assert {p.metadata.labels.get("app.kubernetes.io/component") for p in pods} >= {"inspection", "training"}
    for pod in pods:
        for c in (pod.spec.containers or []) + (pod.spec.init_containers or []):
            for env in c.env or []:
                if env.name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "HF_TOKEN", "WANDB_API_KEY"):
                    assert env.value is None and env.value_from.secret_key_ref is not None, (pod.metadata.name, env.name)

    # Everywhere a value could end up: status, Events, ConfigMaps, pod specs, logs, S3 reports and manifest.
    places: dict[str, str] = {"FineTuneJob": json.dumps(jobs.get(name))}
    places["Events"] = json.dumps([e.to_dict() for e in jobs.core.list_namespaced_event(ns).items], default=str)
    places["ConfigMaps"] = json.dumps([cm.to_dict() for cm in jobs.core.list_namespaced_config_map(ns).items], default=str)
    places["Pods"] = json.dumps([p.to_dict() for p in pods], default=str)
    for pod in pods:
        places[f"log of {pod.metadata.name}"] = kubectl("logs", "-n", ns, pod.metadata.name, "--all-containers").stdout
    places["operator log"] = op.log_path.read_text(errors="replace")
    for key in s3_keys(s3_client, f"adapters/{name}-{uid}/"):
        if key.endswith((".json", ".jsonl", ".txt", ".jinja")):
            places[f"s3://{BUCKET}/{key}"] = s3_client.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode()
    assert any(k.endswith("adapter/manifest.json") for k in places)
    trainer_pods = [p.metadata.name for p in pods if p.metadata.labels.get("app.kubernetes.io/component") == "training"]
    assert all(places[f"log of {p}"].strip() for p in trainer_pods) and places["operator log"].strip()
    values = {"S3 access key": s3.access_key, "S3 secret key": s3.secret_key, "HF token": hf_token,
              "W&B key": wandb_key}
    leaks = [(what, where) for what, value in values.items() for where, text in places.items() if value in text]
    leaks += [("a service-account token", where) for where, text in places.items() if JWT.search(text)]
    assert not leaks, f"credential values found: {leaks}"
