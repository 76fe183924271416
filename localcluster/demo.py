"""`make demo`: the whole product on this machine, from nothing to a trained adapter in S3.

Starts the local cluster (real kube-apiserver, etcd, scheduler, controller-manager, simulated
GPU nodes and the pod runner) and S3, installs the CRD, runs the operator under its own RBAC,
uploads a tiny locally built model and a small chat dataset, applies examples/demo.yaml, shows
live progress and ends with the job Succeeded and the adapter's S3 URI.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

from localcluster import cluster
from localcluster.operator_runner import REPO, CLUSTER_ROLE_FILE, OperatorProcess, install_crd, kubectl_binary

DEMO_FILE = REPO / "examples" / "demo.yaml"
OPERATOR_NAMESPACE = "finetune-system"
DEMO_NAMESPACE = "demo"


def _kubectl(kubeconfig: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    return subprocess.run([kubectl_binary(), *args], env=env, check=check, capture_output=True, text=True)


def _split(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    return parsed.netloc, parsed.path.lstrip("/")


def upload_assets(manifest: dict[str, Any], s3_client: Any, workdir: Path) -> None:
    """Build the tiny model and the chat dataset and put them where the manifest points."""
    from finetune_trainer import testing

    spec = manifest["spec"]
    model_dir = workdir / "tiny-llama"
    testing.build_tiny_model(str(model_dir))
    bucket, prefix = _split(spec["baseModel"]["uri"])
    for path in sorted(model_dir.rglob("*")):
        if path.is_file():
            s3_client.upload_file(str(path), bucket, prefix + str(path.relative_to(model_dir)))
    data = workdir / "chat.jsonl"
    testing.write_jsonl(str(data), testing.chat_records(120))
    bucket, key = _split(spec["dataset"]["trainUri"])
    s3_client.upload_file(str(data), bucket, key)


def _summary(status: dict[str, Any]) -> str:
    progress = status.get("progress") or {}
    parts = [f"state={status.get('state', '-')}"]
    if progress.get("totalSteps"):
        parts.append(f"step {progress.get('step', 0)}/{progress['totalSteps']}")
    if progress.get("trainLoss"):
        parts.append(f"loss {progress['trainLoss']}")
    if progress.get("tokensPerSecond"):
        parts.append(f"{progress['tokensPerSecond']} tok/s")
    if progress.get("phase"):
        parts.append(f"phase {progress['phase']}")
    conds = sorted(status.get("conditions") or [], key=lambda c: c.get("lastTransitionTime", ""))
    if conds:
        parts.append(f"— {conds[-1]['type']}: {conds[-1]['message'][:120]}")
    return "  ".join(parts)


def watch(kubeconfig: Path, namespace: str, name: str, timeout: float) -> dict[str, Any]:
    """Print every change of the job's state and progress until it finishes."""
    deadline = time.monotonic() + timeout
    last = ""
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        proc = _kubectl(kubeconfig, "get", "ftj", name, "-n", namespace, "-o", "json", check=False)
        if proc.returncode == 0:
            status = json.loads(proc.stdout).get("status") or {}
            line = _summary(status)
            if line != last:
                print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)
                last = line
            if status.get("state") in ("Succeeded", "Failed"):
                return status
        time.sleep(1)
    raise TimeoutError(f"{namespace}/{name} did not finish within {timeout:.0f}s (last: {last})")


def run(info: cluster.ClusterInfo, workdir: Path, timeout: float) -> int:
    import boto3
    from botocore.config import Config
    from kubernetes import client

    from localcluster.pytest_plugin import create_service_account_kubeconfig
    from localcluster.supervisor import api_client

    manifest = yaml.safe_load(DEMO_FILE.read_text())
    namespace = manifest["metadata"].get("namespace") or DEMO_NAMESPACE
    name = manifest["metadata"]["name"]
    admin = info.kubeconfig
    print(f"cluster: {info.server}  kubeconfig: {admin}\nS3: {info.s3_endpoint}", flush=True)

    install_crd(admin)
    api = api_client(admin, pool=4)
    core = client.CoreV1Api(api)
    for ns in (OPERATOR_NAMESPACE, namespace):
        if ns != "default":
            _kubectl(admin, "create", "namespace", ns, check=False)
    secret = ((manifest["spec"].get("output") or {}).get("credentialsSecret") or {}).get("name")
    if secret:
        core.create_namespaced_secret(namespace, {"metadata": {"name": secret}, "stringData": {
            "AWS_ACCESS_KEY_ID": info.s3_access_key or "", "AWS_SECRET_ACCESS_KEY": info.s3_secret_key or ""}})
    operator_kubeconfig, _ = create_service_account_kubeconfig(api, CLUSTER_ROLE_FILE, OPERATOR_NAMESPACE, workdir)

    s3 = boto3.client("s3", endpoint_url=info.s3_endpoint, aws_access_key_id=info.s3_access_key,
                      aws_secret_access_key=info.s3_secret_key, region_name="us-east-1",
                      config=Config(request_checksum_calculation="when_required",
                                    response_checksum_validation="when_required",
                                    s3={"addressing_style": "path"}))
    print("building a tiny Llama-style model and a chat dataset, uploading them to S3 …", flush=True)
    upload_assets(manifest, s3, workdir)

    operator = OperatorProcess(operator_kubeconfig, workdir / "operator", {
        "s3": {"endpoint": info.s3_endpoint, "region": "us-east-1"},
        "lease_namespace": OPERATOR_NAMESPACE,
        "termination_grace_period_seconds": 30,
    }).start()
    try:
        operator.wait_leader()
        print(f"operator running under ServiceAccount {OPERATOR_NAMESPACE}/finetune-operator "
              f"(log: {operator.log_path})", flush=True)
        print(_kubectl(admin, "apply", "-n", namespace, "-f", str(DEMO_FILE)).stdout.strip(), flush=True)
        status = watch(admin, namespace, name, timeout)
        print(_kubectl(admin, "get", "ftj", "-n", namespace).stdout, flush=True)
        if status.get("state") != "Succeeded":
            failure = status.get("failure") or {}
            print(f"the demo job failed: {failure.get('reason')}: {failure.get('message')}", file=sys.stderr)
            print(f"operator log (tail):\n{operator.tail()}", file=sys.stderr)
            print(f"pod logs: {info.state_dir / 'pods'}", file=sys.stderr)
            return 1
        adapter = status.get("adapter") or {}
        bucket, key = _split(adapter.get("manifestUri", ""))
        manifest_json = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        print(f"adapter: {adapter.get('uri')}\nmanifest: {adapter.get('manifestUri')} "
              f"({len(manifest_json.get('files', {}))} files, sha256 {str(adapter.get('sha256'))[:16]}…)")
        print(f"eval loss: baseline {status.get('baselineEvalLoss')} → final {status.get('finalEvalLoss')}")
        return 0
    finally:
        operator.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make demo", description=__doc__)
    parser.add_argument("--keep", action="store_true", help="leave the cluster and S3 running afterwards")
    parser.add_argument("--state-dir", type=Path, default=None, help="cluster state directory")
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for the job")
    args = parser.parse_args(argv)
    state = args.state_dir or (cluster.default_state_dir() if args.keep else Path(tempfile.mkdtemp(prefix="fto-demo-")))
    info = cluster.up(state, with_s3=True)
    try:
        return run(info, state, args.timeout)
    finally:
        if args.keep:
            print(f"left running; stop with `make cluster-down` (state: {state}); "
                  f"export KUBECONFIG={info.kubeconfig}")
        else:
            left = cluster.down(state)
            if left:
                print(f"still running after down: {left}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
