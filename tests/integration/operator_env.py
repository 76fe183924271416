"""Fixtures for the operator's integration tests: the CRD, model and data in S3, and operators
running as subprocesses under their own ServiceAccount and ClusterRole (never admin)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from localcluster.operator_runner import CLUSTER_ROLE_FILE, OperatorProcess, install_crd
from localcluster.pytest_plugin import create_service_account_kubeconfig

BUCKET = "finetune"
TINY_MODEL = f"s3://{BUCKET}/models/tiny-llama/"
SHAPE_70B = f"s3://{BUCKET}/models/llama-70b-shape/"
CHAT_DATA = f"s3://{BUCKET}/data/chat.jsonl"
BAD_DATA = f"s3://{BUCKET}/data/bad.jsonl"
OUTPUT = f"s3://{BUCKET}/adapters/"
GROUP, VERSION, PLURAL = "finetune.dev", "v1alpha1", "finetunejobs"
CRD_NAME = f"{PLURAL}.{GROUP}"

# Llama-3.1-70B's config.json (public facts); inspection reads only this and the tokenizer.
LLAMA_70B_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 8192,
    "intermediate_size": 28672, "num_attention_heads": 64, "num_hidden_layers": 80,
    "num_key_value_heads": 8, "vocab_size": 128256, "tie_word_embeddings": False,
    "max_position_embeddings": 131072, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
    "hidden_act": "silu", "torch_dtype": "bfloat16", "head_dim": 128,
}


@pytest.fixture(scope="session")
def crd(kubeconfig: Path) -> str:
    """The generated CRD, applied once per session and Established; its name."""
    install_crd(kubeconfig)
    return CRD_NAME


@pytest.fixture(scope="session")
def s3_client(s3: Any) -> Any:
    return s3.boto3_client()


@pytest.fixture(scope="session")
def assets(s3: Any, s3_client: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A tiny Llama-style model, a 70B-shaped config, and good and bad chat data in S3."""
    from finetune_trainer import testing

    work = tmp_path_factory.mktemp("assets")
    model = work / "tiny"
    testing.build_tiny_model(str(model))
    for path in sorted(model.rglob("*")):
        if path.is_file():
            s3_client.upload_file(str(path), BUCKET, "models/tiny-llama/" + str(path.relative_to(model)))
    # The 70B shape: its config.json and the tiny tokenizer (inspection never reads weights).
    for path in sorted(model.iterdir()):
        if path.is_file() and ("token" in path.name or path.name.endswith(".jinja")):
            s3_client.upload_file(str(path), BUCKET, "models/llama-70b-shape/" + path.name)
    s3_client.put_object(Bucket=BUCKET, Key="models/llama-70b-shape/config.json",
                         Body=json.dumps(LLAMA_70B_CONFIG).encode())
    good = work / "chat.jsonl"
    testing.write_jsonl(str(good), testing.chat_records(60))
    s3_client.upload_file(str(good), BUCKET, "data/chat.jsonl")
    bad_lines = [json.dumps(r) for r in testing.chat_records(30)]
    bad_lines[2] = "{not json"
    bad_lines[6] = json.dumps({"messages": [{"role": "wizard", "content": "hi"}]})
    s3_client.put_object(Bucket=BUCKET, Key="data/bad.jsonl", Body=("\n".join(bad_lines) + "\n").encode())
    return {"model": TINY_MODEL, "data": CHAT_DATA}


@pytest.fixture
def job_namespace(namespace: str, k8s_api: client.ApiClient, s3: Any, crd: str, assets: dict[str, str]) -> str:
    """The test's namespace with the S3 credentials Secret the jobs reference."""
    client.CoreV1Api(k8s_api).create_namespaced_secret(namespace, {
        "metadata": {"name": "s3-creds"},
        "stringData": {"AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key}})
    return namespace


@pytest.fixture
def start_operator(
    job_namespace: str, service_account_kubeconfig: Callable[..., Path], s3: Any, tmp_path: Path
) -> Iterator[Callable[..., OperatorProcess]]:
    """Factory for operators watching the test's namespace, each under the operator ClusterRole."""
    started: list[OperatorProcess] = []
    kubeconfig = service_account_kubeconfig(CLUSTER_ROLE_FILE)

    def start(identity: str = "operator-0", wait: bool = True, via: Callable[[Path], Path] | None = None,
              **overrides: Any) -> OperatorProcess:
        """`via` rewrites the operator's kubeconfig (e.g. to reach the API server through a relay)."""
        config = {"s3": {"endpoint": s3.endpoint, "region": "us-east-1"}, "namespaces": [job_namespace],
                  "lease_namespace": job_namespace, "lease_duration_seconds": 6,
                  "termination_grace_period_seconds": 30, **overrides}
        op = OperatorProcess(via(kubeconfig) if via else kubeconfig, tmp_path / "operators", config,
                             identity=identity).start()
        started.append(op)
        if wait:
            op.wait_leader()
        return op

    yield start
    for op in started:
        op.stop()
    for op in started:
        print(f"--- {op.identity} log tail ---\n{op.tail(60)}")


def manifest(name: str, **changes: Any) -> dict[str, Any]:
    """A FineTuneJob for the tiny model; `changes` replace top-level spec sections."""
    spec: dict[str, Any] = {
        "baseModel": {"uri": TINY_MODEL},
        "dataset": {"trainUri": CHAT_DATA, "format": "messages", "maxSeqLength": 128},
        "method": "qlora",
        "lora": {"r": 8, "targetModules": ["q_proj", "v_proj"]},
        "training": {"maxSteps": 6, "microBatchSize": 2, "gradientAccumulation": 1, "learningRate": "1e-3",
                     "checkpoint": {"everySteps": 2, "keep": 2}},
        "resources": {"gpus": 1, "memory": "6Gi"},
        "output": {"uri": OUTPUT, "credentialsSecret": {"name": "s3-creds"}},
        "runPolicy": {"backoffLimit": 2},
    }
    spec.update(changes)
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "FineTuneJob", "metadata": {"name": name}, "spec": spec}


class Jobs:
    """FineTuneJobs in one namespace through the admin client (the user's side)."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self.batch = client.BatchV1Api(api)
        self.namespace = namespace

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        return dict(self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, body))

    def get(self, name: str) -> dict[str, Any]:
        return dict(self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name))

    def patch(self, name: str, patch: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name, patch)

    def delete(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)

    def wait(self, name: str, predicate: Callable[[dict[str, Any]], bool], timeout: float, what: str,
             on_poll: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        body: dict[str, Any] = {}
        while time.monotonic() < deadline:
            body = self.get(name)
            if on_poll:
                on_poll(body)
            if predicate(body):
                return body
            state = (body.get("status") or {}).get("state")
            if state in ("Succeeded", "Failed") and what not in ("Succeeded", "Failed", "finished"):
                raise AssertionError(f"{name} ended {state} while waiting for {what}: {body.get('status')}")
            time.sleep(0.5)
        raise AssertionError(f"{name}: {what} not reached within {timeout}s; status: "
                             f"{json.dumps(body.get('status'), indent=1)[:3000]}")

    def wait_state(self, name: str, state: str, timeout: float = 300, **kw: Any) -> dict[str, Any]:
        return self.wait(name, lambda b: (b.get("status") or {}).get("state") == state, timeout, state, **kw)

    def training_jobs(self) -> list[Any]:
        return list(self.batch.list_namespaced_job(
            self.namespace, label_selector="app.kubernetes.io/component=training").items)

    def pods(self, selector: str) -> list[Any]:
        return list(self.core.list_namespaced_pod(self.namespace, label_selector=selector).items)

    def events(self, name: str) -> list[Any]:
        return [e for e in self.core.list_namespaced_event(self.namespace).items
                if e.involved_object.name == name and e.involved_object.kind == "FineTuneJob"]


@pytest.fixture
def jobs(k8s_api: client.ApiClient, job_namespace: str) -> Jobs:
    return Jobs(k8s_api, job_namespace)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:5]}"


def s3_keys(s3_client: Any, prefix: str) -> list[str]:
    keys: list[str] = []
    for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return keys


def ignore_404(fn: Callable[[], Any]) -> None:
    try:
        fn()
    except ApiException as exc:
        if exc.status != 404:
            raise
