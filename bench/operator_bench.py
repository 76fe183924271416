"""Operator latency on the local cluster: create N FineTuneJobs and time their first states.

    .venv/bin/python bench/operator_bench.py [--jobs 20] [--state-dir DIR] [--reuse KUBECONFIG] [--timeout 180]

Starts a local cluster with ``bench/fleet-fake.yaml`` (fake nodes: pods complete without running
anything), installs the CRD, runs the operator as a subprocess under its own ClusterRole
(``localcluster.operator_runner.OperatorProcess``), creates N jobs at once and watches them.
Reported: create → first Validating / Inspecting / Queued / any state (p50, p95, max) and the
operator's ``finetune_reconcile_duration_seconds`` histogram from ``/metrics``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
STATES = ("Validating", "Inspecting", "Queued")


def spec(i: int) -> dict[str, Any]:
    return {
        "baseModel": {"uri": "hf://meta-llama/Llama-3.2-1B-Instruct"},
        "dataset": {"trainUri": f"s3://bench/train-{i}.jsonl", "maxSeqLength": 1024},
        "method": "qlora", "lora": {"r": 16},
        "training": {"maxSteps": 10, "microBatchSize": 1},
        "output": {"uri": "s3://bench/out/", "region": "us-east-1", "credentialsSecret": {"name": "s3-creds"}},
    }


def percentiles(values: list[float]) -> str:
    if not values:
        return "none"
    v = sorted(values)
    pick = lambda q: v[min(len(v) - 1, int(q * len(v)))]  # noqa: E731
    return f"n={len(v)} p50 {pick(0.5):.3f}s  p95 {pick(0.95):.3f}s  max {v[-1]:.3f}s  mean {statistics.mean(v):.3f}s"


def histogram(text: str, name: str) -> dict[str, Any]:
    buckets: list[tuple[float, float]] = []
    total = count = 0.0
    for line in text.splitlines():
        if line.startswith(f"{name}_bucket"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float("inf") if le == "+Inf" else float(le), float(line.rsplit(" ", 1)[1])))
        elif line.startswith(f"{name}_sum"):
            total += float(line.rsplit(" ", 1)[1])
        elif line.startswith(f"{name}_count"):
            count += float(line.rsplit(" ", 1)[1])
    merged: dict[float, float] = {}
    for le, c in buckets:  # summed over label sets
        merged[le] = merged.get(le, 0) + c
    def quantile(q: float) -> float | None:
        for le, c in sorted(merged.items()):
            if count and c >= q * count:
                return le
        return None
    return {"count": int(count), "mean": total / count if count else None, "p50_le": quantile(0.5), "p99_le": quantile(0.99)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=20)
    p.add_argument("--state-dir", default=None)
    p.add_argument("--reuse", default=None, help="admin kubeconfig of a running cluster (nothing is started or stopped)")
    p.add_argument("--timeout", type=float, default=180)
    args = p.parse_args()

    from kubernetes import client, watch

    from localcluster.cluster import down, up
    from localcluster.operator_runner import CLUSTER_ROLE_FILE, OperatorProcess, install_crd
    from localcluster.pytest_plugin import create_service_account_kubeconfig
    from localcluster.supervisor import api_client

    work = Path(tempfile.mkdtemp(prefix="fto-operator-bench-"))
    state = Path(args.state_dir) if args.state_dir else work / "cluster"
    started = time.perf_counter()
    if args.reuse:
        kubeconfig = Path(args.reuse)
    else:
        info = up(state, REPO / "bench" / "fleet-fake.yaml")
        kubeconfig = info.kubeconfig
        print(f"cluster up in {time.perf_counter() - started:.1f}s ({state})")
    operator = None
    crbs: list[str] = []
    api = api_client(kubeconfig, pool=8)
    try:
        install_crd(kubeconfig)
        core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
        ns = f"bench-{uuid.uuid4().hex[:6]}"
        core.create_namespace({"metadata": {"name": ns}})
        sa_kubeconfig, crbs = create_service_account_kubeconfig(api, CLUSTER_ROLE_FILE, ns, work)
        operator = OperatorProcess(sa_kubeconfig, work, {"namespaces": [ns], "lease_namespace": ns}).start()
        operator.wait_leader(120)

        created: dict[str, float] = {}
        first: dict[str, dict[str, float]] = {}
        done = threading.Event()

        def watcher() -> None:
            w = watch.Watch()
            try:
                for ev in w.stream(custom.list_namespaced_custom_object, "finetune.dev", "v1alpha1", ns, "finetunejobs",
                                   timeout_seconds=int(args.timeout) + 30):
                    now = time.perf_counter()
                    obj = ev["object"]
                    st = (obj.get("status") or {}).get("state")
                    if st:
                        first.setdefault(obj["metadata"]["name"], {}).setdefault(st, now)
                    if done.is_set():
                        w.stop()
            except Exception:  # noqa: BLE001 - the stream ends when the cluster stops
                if not done.is_set():
                    raise

        t = threading.Thread(target=watcher, daemon=True)
        t.start()
        time.sleep(1)  # the watch is open before the first create
        for i in range(args.jobs):
            name = f"job-{i:04d}"
            created[name] = time.perf_counter()
            custom.create_namespaced_custom_object("finetune.dev", "v1alpha1", ns, "finetunejobs",
                                                   {"apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneJob",
                                                    "metadata": {"name": name}, "spec": spec(i)})
        create_s = time.perf_counter() - created["job-0000"]
        deadline = time.perf_counter() + args.timeout
        settled = {"Queued", "Running", "Failed", "Succeeded"}  # past inspection
        while time.perf_counter() < deadline and not all(set(first.get(n, {})) & settled for n in created):
            time.sleep(0.2)
        done.set()
        print(f"{args.jobs} jobs created in {create_s:.2f}s")
        any_state = [min(first[n].values()) - created[n] for n in created if first.get(n)]
        print(f"create → first state:  {percentiles(any_state)}")
        for st in STATES:
            print(f"create → {st + ':':11s} {percentiles([first[n][st] - created[n] for n in created if st in first.get(n, {})])}")
        seen: dict[str, int] = {}
        for n in created:
            for st in first.get(n, {}):
                seen[st] = seen.get(st, 0) + 1
        print(f"states seen (jobs per state): {seen}")
        reasons: dict[str, int] = {}
        for n in created:
            obj = custom.get_namespaced_custom_object("finetune.dev", "v1alpha1", ns, "finetunejobs", n)
            conds = [c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("status") == "True"]
            key = "; ".join(f"{c['type']}={c.get('reason')}: {str(c.get('message'))[:160]}" for c in conds) or "-"
            reasons[key] = reasons.get(key, 0) + 1
        for key, k in sorted(reasons.items(), key=lambda kv: -kv[1])[:5]:
            print(f"  {k:3d} jobs: {key}")
        print(f"finetune_reconcile_duration_seconds: {histogram(operator.metrics(), 'finetune_reconcile_duration_seconds')}")
    finally:
        if operator is not None:
            operator.stop()
        if crbs:
            rbac = client.RbacAuthorizationV1Api(api)
            for crb in crbs:
                rbac.delete_cluster_role_binding(crb)
        api.close()
        if not args.reuse:
            left = down(state)
            if left:
                print(f"localcluster down left processes: {left}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
