"""The operator at platform scale: kwok GPU nodes, bursts of FineTuneJobs, simulated trainers.

    .venv/bin/python bench/scale_bench.py [--nodes 500] [--jobs 100,300,1000] [--train-seconds 600]
        [--operator-src DIR] [--chaos] [--out DIR] [--state-dir DIR]

One local control plane (no pod-runner nodes), ``--nodes`` kwok GPU nodes (T4/A10G/A100/H100 mix,
``nvidia.com/gpu:NoSchedule``-tainted, real lease heartbeats) plus CPU nodes for inspection
pods; the operator (``finetune-operator run`` with ``--operator-src`` first on its PYTHONPATH, so
another design's tree runs unchanged) under its own ServiceAccount and ClusterRole, watching the
whole cluster; ``bench/scale_sim.py`` plays every trainer. For each job count: a fresh namespace
and a fresh operator, jobs created in bursts, every job run to its end, then:
- create → inspection pod created, inspection finished → training Job created, Job finished →
  terminal status (p50/p99/max, as seen by this process's watches);
- progress write (acknowledged by the API server) → first status showing that step or a later
  one (p50/p99), writes never shown exactly, and jobs whose last write never showed (lost);
- the operator's requests by verb and resource (its own FlowSchemas, ``scale_flow.py``), per
  second over the steady state (every job training) and over the whole run;
- operator RSS (max), CPU seconds per 1,000 events (watch events of the jobs' Pods, Jobs and
  ConfigMaps, plus the FineTuneJob creations: a workload count the same for any design);
- work-queue depth over time when the operator exports a metric matching ``--queue-metric``;
- the lifecycle checks of the chaos run (always): no duplicate Job or inspection pod, no state
  going backwards, one attempt per job, no JobDeleted, every job Succeeded with its adapter.
``--chaos``: a standby replica runs next to the leader; the leader is SIGKILLed at random
moments and replaced by a new standby; takeover time = kill → the standby reports leadership.
Results: ``OUT/scale-results.json`` and ``OUT/scale.png`` (``bench/scale_plot.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

from scale_kube import Kube, KubeError, Obj  # noqa: E402

GROUP, VERSION, PLURAL = "finetune.dev", "v1alpha1", "finetunejobs"
STATE_RANK = {"Validating": 0, "Inspecting": 1, "Queued": 2, "Running": 3, "Succeeded": 4, "Failed": 4}
SA_NAMESPACE = "fto-bench-operator"
SA_NAME = "finetune-operator"


def spec(i: int) -> dict[str, Any]:
    return {
        "baseModel": {"uri": "hf://meta-llama/Llama-3.2-1B-Instruct"},
        "dataset": {"trainUri": f"s3://bench/data/train-{i}.jsonl", "maxSeqLength": 1024},
        "method": "qlora", "lora": {"r": 16},
        "training": {"maxSteps": 100, "microBatchSize": 1},
        "resources": {"gpus": 1, "memory": "24Gi"},
        "output": {"uri": "s3://bench/out/", "region": "us-east-1", "credentialsSecret": {"name": "s3-creds"}},
    }


def stats(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    v = sorted(values)
    pick = lambda q: v[min(len(v) - 1, int(q * len(v)))]  # noqa: E731
    return {"n": len(v), "p50": round(pick(0.5), 3), "p99": round(pick(0.99), 3), "max": round(v[-1], 3)}


def owner(obj: Obj, kind: str) -> str | None:
    for ref in obj["metadata"].get("ownerReferences") or []:
        if ref.get("kind") == kind:
            return str(ref["name"])
    return None


@dataclass
class JobTrace:
    created: float = 0.0
    insp_pod: float | None = None
    insp_pods: set[str] = field(default_factory=set)
    insp_done: float | None = None
    job: float | None = None
    jobs: set[str] = field(default_factory=set)
    train_pods: set[str] = field(default_factory=set)
    job_done: float | None = None
    terminal: float | None = None
    running: float | None = None
    states: list[str] = field(default_factory=list)
    steps: dict[int, float] = field(default_factory=dict)
    max_step: int = 0
    status: Obj = field(default_factory=dict)


class Observer:
    """Watches the level's namespace and timestamps every step of every job."""

    def __init__(self, kube: Kube, ns: str) -> None:
        self.kube = kube
        self.ns = ns
        self.jobs: dict[str, JobTrace] = {}
        self.job_owner: dict[str, str] = {}
        self.events = {"Pod": 0, "Job": 0, "ConfigMap": 0, "FineTuneJob": 0}
        self.stop = asyncio.Event()

    def trace(self, name: str) -> JobTrace:
        return self.jobs.setdefault(name, JobTrace())

    def on_ftj(self, type_: str, obj: Obj) -> None:
        self.events["FineTuneJob"] += 1
        if type_ == "DELETED":
            return
        now = time.time()
        t = self.trace(obj["metadata"]["name"])
        st = obj.get("status") or {}
        t.status = st
        state = st.get("state")
        if state and (not t.states or t.states[-1] != state):
            t.states.append(state)
        if state == "Running" and t.running is None:
            t.running = now
        if state in ("Succeeded", "Failed") and t.terminal is None:
            t.terminal = now
        step = (st.get("progress") or {}).get("step")
        if isinstance(step, int):
            t.steps.setdefault(step, now)
            t.max_step = max(t.max_step, step)

    def on_pod(self, type_: str, obj: Obj) -> None:
        self.events["Pod"] += 1
        if type_ == "DELETED":
            return
        now = time.time()
        labels = obj["metadata"].get("labels") or {}
        component = labels.get("app.kubernetes.io/component")
        if component == "inspection":
            name = owner(obj, "FineTuneJob")
            if name:
                t = self.trace(name)
                t.insp_pods.add(obj["metadata"]["uid"])
                if t.insp_pod is None:
                    t.insp_pod = now
                if (obj.get("status") or {}).get("phase") in ("Succeeded", "Failed") and t.insp_done is None:
                    t.insp_done = now
        elif component == "training":
            job = owner(obj, "Job")
            name = self.job_owner.get(job or "")
            if name:
                self.trace(name).train_pods.add(obj["metadata"]["uid"])

    def on_job(self, type_: str, obj: Obj) -> None:
        self.events["Job"] += 1
        if type_ == "DELETED":
            return
        now = time.time()
        name = owner(obj, "FineTuneJob")
        if not name:
            return
        self.job_owner[obj["metadata"]["name"]] = name
        t = self.trace(name)
        t.jobs.add(obj["metadata"]["uid"])
        if t.job is None:
            t.job = now
        conds = (obj.get("status") or {}).get("conditions") or []
        if t.job_done is None and any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
                                      for c in conds):
            t.job_done = now

    def on_cm(self, type_: str, obj: Obj) -> None:
        self.events["ConfigMap"] += 1

    def start(self) -> list[asyncio.Task[None]]:
        ns = self.ns
        sel = "app.kubernetes.io/managed-by=finetune-operator"
        return [
            asyncio.create_task(self.kube.watch(f"/apis/{GROUP}/{VERSION}/namespaces/{ns}/{PLURAL}", self.on_ftj,
                                                stop=self.stop)),
            asyncio.create_task(self.kube.watch(f"/apis/batch/v1/namespaces/{ns}/jobs", self.on_job, stop=self.stop)),
            asyncio.create_task(self.kube.watch(f"/api/v1/namespaces/{ns}/pods", self.on_pod, sel, stop=self.stop)),
            asyncio.create_task(self.kube.watch(f"/api/v1/namespaces/{ns}/configmaps", self.on_cm, sel,
                                                stop=self.stop)),
        ]


def proc_cpu(pid: int) -> float:
    from localcluster.kwok import process_cpu_seconds

    return process_cpu_seconds(pid)


def proc_rss(pid: int) -> int:
    from localcluster.kwok import process_rss_bytes

    return process_rss_bytes(pid)


def queue_depth(text: str, pattern: re.Pattern[str]) -> float | None:
    total = None
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if pattern.search(name):
            try:
                total = (total or 0.0) + float(line.rsplit(" ", 1)[1])
            except ValueError:
                continue
    return total


# Where a reconcile's time goes, from the operator's own metrics (absent on the old design):
# waiting for a worker, for the client-side limiter, and for the API server's answers.
SPLIT_FAMILIES = ("finetune_workqueue_queue_duration_seconds", "finetune_api_request_duration_seconds",
                  "finetune_reconcile_duration_seconds", "finetune_api_rate_limited_seconds")


def latency_split(texts: list[str]) -> dict[str, Any]:
    """Sum the operator replicas' histograms and the limiter's seconds into count, total and mean."""
    from prometheus_client.parser import text_string_to_metric_families

    acc: dict[str, dict[str, float]] = {}
    buckets: dict[str, dict[float, float]] = {}  # key -> upper bound -> cumulative count
    for text in texts:
        for family in text_string_to_metric_families(text):
            if family.name not in SPLIT_FAMILIES:
                continue
            for sample in family.samples:
                method = sample.labels.get("method")
                key = family.name + (f"{{{method}}}" if method else "")
                v = acc.setdefault(key, {})
                if sample.name.endswith("_sum") or sample.name.endswith("_total"):
                    v["total_s"] = v.get("total_s", 0.0) + sample.value
                elif sample.name.endswith("_count"):
                    v["count"] = v.get("count", 0.0) + sample.value
                elif sample.name.endswith("_bucket"):
                    le = float(sample.labels["le"])
                    b = buckets.setdefault(key, {})
                    b[le] = b.get(le, 0.0) + sample.value
    out: dict[str, Any] = {}
    for key, v in sorted(acc.items()):
        entry: dict[str, Any] = {"total_s": round(v.get("total_s", 0.0), 2)}
        n = v.get("count")
        if n is not None:
            entry["count"] = int(n)
            entry["mean_s"] = round(v.get("total_s", 0.0) / n, 4) if n else None
            for q in (0.5, 0.99):  # the bucket bound the quantile falls under (an upper bound)
                bound = next((le for le, c in sorted(buckets.get(key, {}).items()) if n and c >= q * n), None)
                entry[f"p{round(q * 100)}_at_most_s"] = bound
        out[key] = entry
    return out


class Level:
    """One job count: namespace, operator(s), simulator, observer, sampler, creation, teardown."""

    def __init__(self, bench: Bench, n_jobs: int) -> None:
        self.b = bench
        self.n = n_jobs
        self.ns = f"scale-{n_jobs}-{uuid.uuid4().hex[:5]}"
        self.work = bench.out / f"level-{n_jobs}"
        self.operators: list[Any] = []
        self.samples: list[dict[str, Any]] = []
        self.takeovers: list[dict[str, Any]] = []
        self.op_cpu_done = 0.0  # CPU of replicas already killed
        self.replica = 0
        self.sim: subprocess.Popen[bytes] | None = None
        self.t0 = 0.0
        self.split: dict[str, Any] = {}  # latency_split when every job first had its training Job, and at the end

    def start_operator(self, wait: bool) -> Any:
        from localcluster.operator_runner import OperatorProcess

        b = self.b
        config = {"namespaces": [], "lease_namespace": SA_NAMESPACE, "lease_name": f"fto-bench-{self.ns}",
                  "lease_duration_seconds": b.args.lease_seconds, **b.operator_config}
        env = {"PYTHONPATH": os.pathsep.join([str(b.operator_src), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
        op = OperatorProcess(b.sa_kubeconfig, self.work, config, identity=f"operator-{self.replica}",
                             extra_env=env).start()
        self.replica += 1
        self.operators.append(op)
        if wait:
            op.wait_leader(120)
        return op

    def alive(self) -> list[Any]:
        return [op for op in self.operators if op.process and op.process.poll() is None]

    def sample(self, t0: float) -> dict[str, Any]:
        b = self.b
        s: dict[str, Any] = {"t": round(time.time() - t0, 2)}
        ops = self.alive()
        s["operator_cpu"] = self.op_cpu_done + sum(proc_cpu(op.process.pid) for op in ops)
        s["operator_rss"] = max([proc_rss(op.process.pid) for op in ops] or [0])
        s["sim_cpu"] = proc_cpu(self.sim.pid) if self.sim else 0.0
        s["kwok_cpu"] = b.kwok.cpu_seconds()
        for name, pid in b.cp_pids.items():
            s[f"{name}_cpu"] = proc_cpu(pid)
        depth = None
        for op in ops:
            try:
                d = queue_depth(op.metrics(), b.queue_pattern)
            except OSError:
                d = None
            if d is not None:
                depth = (depth or 0.0) + d
        s["queue_depth"] = depth
        return s

    async def sampler(self, t0: float, stop: asyncio.Event) -> None:
        last_flow = 0.0
        while not stop.is_set():
            s = await asyncio.to_thread(self.sample, t0)
            if time.monotonic() - last_flow >= self.b.args.flow_seconds:
                last_flow = time.monotonic()
                s["flow"], s["rejected"] = await asyncio.to_thread(self.b.metrics.operator_counts)
            s["states"] = self.state_counts()
            self.samples.append(s)
            if "all_jobs_created" not in self.split and self.n and len(self.obs.jobs) == self.n \
                    and all(t.job for t in self.obs.jobs.values()):
                self.split["all_jobs_created"] = {"t": s["t"], **await asyncio.to_thread(self.scrape_split)}
            try:
                await asyncio.wait_for(stop.wait(), self.b.args.sample_seconds)
            except asyncio.TimeoutError:
                pass

    def scrape_split(self) -> dict[str, Any]:
        texts = []
        for op in self.alive():
            try:
                texts.append(op.metrics())
            except OSError:
                continue
        return latency_split(texts)

    def state_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.obs.jobs.values():
            st = t.states[-1] if t.states else "-"
            out[st] = out.get(st, 0) + 1
        return out

    async def chaos(self, stop: asyncio.Event) -> None:
        a, b = self.b.args.chaos_interval
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), random.uniform(a, b))
                return
            except asyncio.TimeoutError:
                pass
            if self.done():
                return  # every job has ended: a kill now tests nothing
            leaders = [op for op in self.alive() if (await asyncio.to_thread(op.health))[1].get("leader") is True]
            if not leaders:
                continue
            victim = leaders[0]
            cpu = proc_cpu(victim.process.pid)
            t_kill = time.time()
            victim.kill()
            self.op_cpu_done += cpu
            print(f"  chaos: SIGKILL {victim.identity} at +{t_kill - self.t0:.0f}s", flush=True)
            await asyncio.to_thread(self.start_operator, False)  # the next standby
            takeover = None
            while time.time() - t_kill < 10 * self.b.args.lease_seconds and not stop.is_set():
                for op in self.alive():
                    if (await asyncio.to_thread(op.health))[1].get("leader") is True:
                        takeover = time.time() - t_kill
                        break
                if takeover is not None:
                    break
                await asyncio.sleep(0.2)
            # The probe answer can be up to 10 s old (kopf caches probe results for 10 s): the
            # Lease's acquireTime, written by the standby as it takes over, is the exact figure.
            acquired = await self.lease_acquired()
            lease_takeover = None if acquired is None or acquired < t_kill else round(acquired - t_kill, 2)
            self.takeovers.append({"at": round(t_kill - self.t0, 1), "killed": victim.identity,
                                   "takeover_s": None if takeover is None else round(takeover, 2),
                                   "lease_takeover_s": lease_takeover})
            print(f"  chaos: takeover after {takeover}s (probe), {lease_takeover}s (Lease acquireTime)", flush=True)

    async def lease_acquired(self) -> float | None:
        """The leader Lease's acquireTime (epoch seconds), if it can be read."""
        path = f"/apis/coordination.k8s.io/v1/namespaces/{SA_NAMESPACE}/leases/fto-bench-{self.ns}"
        try:
            lease = await self.obs.kube.request("GET", path)
        except KubeError:
            return None
        stamp = str((lease.get("spec") or {}).get("acquireTime") or "")
        try:
            return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()
        except ValueError:
            return None

    async def create_jobs(self, kube: Kube) -> None:
        path = f"/apis/{GROUP}/{VERSION}/namespaces/{self.ns}/{PLURAL}"
        args = self.b.args

        async def one(i: int) -> None:
            name = f"job-{i:05d}"
            body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "FineTuneJob", "metadata": {"name": name},
                    "spec": spec(i)}
            sent = time.time()
            await kube.request("POST", path, body)
            t = self.obs.trace(name)
            t.created = sent
        for start in range(0, self.n, args.burst):
            t_burst = time.monotonic()
            await asyncio.gather(*(one(i) for i in range(start, min(self.n, start + args.burst))))
            if start + args.burst < self.n:
                await asyncio.sleep(max(0.0, args.burst_interval - (time.monotonic() - t_burst)))

    def done(self) -> bool:
        return len(self.obs.jobs) >= self.n and all(t.terminal for t in self.obs.jobs.values())

    async def run(self) -> dict[str, Any]:
        from kubernetes import client

        b = self.b
        self.work.mkdir(parents=True, exist_ok=True)
        core = client.CoreV1Api(b.api)
        core.create_namespace({"metadata": {"name": self.ns}})
        from localcluster.waiting import until

        until(lambda: bool(core.list_namespaced_service_account(self.ns, field_selector="metadata.name=default").items),
              60, f"default ServiceAccount in {self.ns}")
        self.start_operator(wait=True)
        if b.args.chaos:
            self.start_operator(wait=False)
        sim_out = self.work / "sim"
        sim_log = open(self.work / "simulator.log", "ab")  # noqa: SIM115 - the child owns it
        self.sim = subprocess.Popen(
            [sys.executable, str(HERE / "scale_sim.py"), "--kubeconfig", str(b.kubeconfig), "--namespace", self.ns,
             "--out", str(sim_out), "--train-seconds", str(b.args.train_seconds), "--interval",
             str(b.args.progress_interval), "--inspect-seconds", str(b.args.inspect_seconds)],
            stdout=sim_log, stderr=subprocess.STDOUT, start_new_session=True)
        sim_log.close()
        until(lambda: (sim_out / "simulator.ready").exists() or self.sim.poll() is not None, 60, "simulator")
        if self.sim.poll() is not None:
            raise RuntimeError(f"the simulator exited: {(self.work / 'simulator.log').read_text()[-2000:]}")
        async with Kube(b.kubeconfig, connections=16) as kube:
            self.obs = Observer(kube, self.ns)
            watches = self.obs.start()
            await asyncio.sleep(1.0)
            self.t0 = t0 = time.time()
            stop = asyncio.Event()
            sampler = asyncio.create_task(self.sampler(t0, stop))
            chaos = asyncio.create_task(self.chaos(stop)) if b.args.chaos else None
            await self.create_jobs(kube)
            created_s = time.time() - t0
            print(f"  {self.n} jobs created in {created_s:.1f}s", flush=True)
            deadline = time.monotonic() + b.args.train_seconds + b.args.timeout
            while time.monotonic() < deadline and not self.done():
                await asyncio.sleep(1.0)
            finished = self.done()
            wall = time.time() - t0
            await asyncio.sleep(b.args.sample_seconds)  # one last sample after the end
            stop.set()
            await sampler
            if chaos:
                await chaos
            self.obs.stop.set()
            for w in watches:
                w.cancel()
        self.split["end"] = {"t": round(time.time() - t0, 2), **self.scrape_split()}
        self.sim.terminate()
        try:
            self.sim.wait(20)
        except subprocess.TimeoutExpired:
            self.sim.kill()
        for op in self.operators:
            op.stop()
        result = self.analyse(wall, created_s, finished, sim_out)
        try:
            core.delete_namespace(self.ns)
        except Exception:  # noqa: BLE001 - teardown only
            pass
        return result

    def analyse(self, wall: float, created_s: float, finished: bool, sim_out: Path) -> dict[str, Any]:
        b = self.b
        jobs = self.obs.jobs
        created_insp = [t.insp_pod - t.created for t in jobs.values() if t.insp_pod and t.created]
        insp_job = [t.job - t.insp_done for t in jobs.values() if t.job and t.insp_done]
        # the whole way a user waits, the inspection pod's own run included
        created_job = [t.job - t.created for t in jobs.values() if t.job and t.created]
        done_terminal = [t.terminal - t.job_done for t in jobs.values() if t.terminal and t.job_done]
        # progress
        writes = []
        path = sim_out / "progress-writes.jsonl"
        if path.exists():
            writes = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        flows = [s for s in self.samples if "flow" in s]
        running_all = [t.running for t in jobs.values()]
        steady = None
        window = None  # (start, end) on the wall clock: every job Running, 5 s margins
        if running_all and all(running_all) and all(t.job_done for t in jobs.values()):
            lo = max(running_all) + 5
            hi = min(t.job_done for t in jobs.values() if t.job_done) - 5
            if hi > lo:
                window = (lo, hi)
                # the request rates over the same window, between the flow samples inside it
                inside = [s for s in flows if lo - self.t0 <= s["t"] <= hi - self.t0]
                if len(inside) >= 2 and inside[-1]["t"] - inside[0]["t"] >= 20:
                    steady = (inside[0], inside[-1])
        lag, lag_steady, exact_missing, lost = [], [], 0, 0
        last_write: dict[str, int] = {}
        for w in writes:
            t = jobs.get(w["job"])
            if t is None:
                continue
            last_write[w["job"]] = max(last_write.get(w["job"], 0), w["step"])
            if w["step"] not in t.steps:
                exact_missing += 1
            covered = [ts for s, ts in t.steps.items() if s >= w["step"]]
            if covered:
                lag.append(max(0.0, min(covered) - w["acked"]))
                if window and window[0] <= w["acked"] <= window[1]:
                    lag_steady.append(lag[-1])
        for job, step in last_write.items():
            if jobs[job].max_step < step:
                lost += 1
        # requests
        whole = (flows[0], flows[-1]) if len(flows) >= 2 else None

        def rates(pair: tuple[dict[str, Any], dict[str, Any]] | None) -> dict[str, Any]:
            if not pair:
                return {}
            a, z = pair
            span = z["t"] - a["t"]
            out = {}
            for fs, v in z["flow"].items():
                d = v - a["flow"].get(fs, 0.0)
                if d > 0:
                    out[b.flow_table.get(fs, "other")] = round(d / span, 3)
            total = round(sum(out.values()), 3)
            progress = out.get("patch finetunejobs/status", 0.0)
            return {"seconds": round(span, 1), "total_per_s": total,
                    "excluding_status_patches_per_s": round(total - progress, 3),
                    "by_verb_resource_per_s": dict(sorted(out.items(), key=lambda kv: -kv[1]))}

        first, last = self.samples[0], self.samples[-1]
        events = sum(self.obs.events[k] for k in ("Pod", "Job", "ConfigMap")) + self.n
        cpu = last["operator_cpu"] - first["operator_cpu"]
        rejected = sum((flows[-1].get("rejected") or {}).values()) if flows else 0
        checks = {
            "duplicate_jobs": sorted(n for n, t in jobs.items() if len(t.jobs) > 1),
            "duplicate_inspection_pods": sorted(n for n, t in jobs.items() if len(t.insp_pods) > 1),
            "state_went_backwards": {n: t.states for n, t in jobs.items()
                                     if any(STATE_RANK.get(b2, 0) < STATE_RANK.get(a2, 0)
                                            for a2, b2 in zip(t.states, t.states[1:]))},
            "attempts_not_one": {n: t.status.get("attempts") for n, t in jobs.items() if t.status.get("attempts") != 1},
            "job_deleted": sorted(n for n, t in jobs.items() if (t.status.get("failure") or {}).get("reason") == "JobDeleted"),
            "not_succeeded": {n: (t.status.get("state"), (t.status.get("failure") or {}).get("reason"))
                              for n, t in jobs.items() if t.status.get("state") != "Succeeded"
                              or not (t.status.get("adapter") or {}).get("uri")},
        }
        checks_ok = not any(checks.values()) and finished
        sim_counts = {}
        if (sim_out / "simulator-counts.json").exists():
            sim_counts = json.loads((sim_out / "simulator-counts.json").read_text())
        cp_cpu = {k[:-4]: round(last[k] - first[k], 1) for k in last if k.endswith("_cpu") and k[:-4] in b.cp_pids}
        return {
            "jobs": self.n, "nodes": b.args.nodes, "finished": finished, "wall_s": round(wall, 1),
            "create_s": round(created_s, 1),
            "latency_s": {"create_to_inspection_pod": stats(created_insp),
                          "inspection_done_to_training_job": stats(insp_job),
                          "create_to_training_job": stats(created_job),
                          "job_done_to_terminal_status": stats(done_terminal),
                          "progress_write_to_status": stats(lag),
                          # the same, over the writes acknowledged in the steady state only
                          "progress_write_to_status_steady": stats(lag_steady)},
            "progress": {"writes": len(writes), "never_shown_exactly": exact_missing,
                         "jobs_last_write_never_shown": lost},
            "requests": {"steady_state": rates(steady), "whole_run": rates(whole), "rejected": rejected},
            "operator": {"rss_max_mib": round(max(s["operator_rss"] for s in self.samples) / 2**20, 1),
                         "cpu_s": round(cpu, 1), "events": events, "events_by_kind": dict(self.obs.events),
                         "cpu_s_per_1000_events": round(1000 * cpu / events, 2) if events else None,
                         "replicas_started": self.replica},
            "latency_split": self.split,
            "queue_depth": [[s["t"], s["queue_depth"]] for s in self.samples if s.get("queue_depth") is not None],
            "simulator": {"cpu_s": round(last["sim_cpu"] - first["sim_cpu"], 1), **sim_counts},
            "kwok_cpu_s": round(last["kwok_cpu"] - first["kwok_cpu"], 1),
            "control_plane_cpu_s": cp_cpu,
            "checks": checks, "checks_ok": checks_ok,
            "takeovers": self.takeovers,
            "timeline": [{"t": s["t"], "states": s["states"], "operator_cpu": round(s["operator_cpu"], 1),
                          "rss_mib": round(s["operator_rss"] / 2**20, 1)} for s in self.samples],
        }


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Path(args.out).resolve()
        self.operator_src = Path(args.operator_src).resolve()
        tree = self.operator_src.parent
        self.clusterrole = Path(args.clusterrole or tree / "charts" / "finetune-operator" / "files" / "clusterrole.yaml")
        self.crd = Path(args.crd or tree / "crds" / "finetunejobs.finetune.dev.yaml")
        self.operator_config = json.loads(args.operator_config) if args.operator_config else {}
        self.queue_pattern = re.compile(args.queue_metric)

    def preflight(self) -> str:
        """Which finetune_operator the operator subprocess will import (it must be --operator-src's)."""
        env = {**os.environ, "PYTHONPATH": str(self.operator_src)}
        proc = subprocess.run([sys.executable, "-c", "import finetune_operator; print(finetune_operator.__file__)"],
                              env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"--operator-src {self.operator_src}: finetune_operator does not import: {proc.stderr[-1500:]}")
        where = Path(proc.stdout.strip()).resolve()
        if self.operator_src not in where.parents:
            raise SystemExit(f"--operator-src {self.operator_src}: the operator would import {where} instead")
        for f in (self.clusterrole, self.crd):
            if not f.exists():
                raise SystemExit(f"{f} does not exist: pass --clusterrole / --crd")
        return str(where)

    def run(self) -> dict[str, Any]:
        from kubernetes import client

        from localcluster.cluster import down, up
        from localcluster.kwok import Kwok, create_nodes, gpu_count, gpu_fleet, locate_kwok, wait_ready
        from localcluster.operator_runner import install_crd
        from localcluster.procs import ProcessTable
        from localcluster.pytest_plugin import create_service_account_kubeconfig
        from localcluster.supervisor import api_client

        import scale_flow

        args = self.args
        imported = self.preflight()
        kwok_bin = locate_kwok()  # fails with the reason before anything starts
        self.out.mkdir(parents=True, exist_ok=True)
        state = Path(args.state_dir or os.environ.get("FTO_STATE_DIR") or self.out / "cluster").resolve()
        fleet = self.out / "empty-fleet.yaml"
        fleet.write_text("# every node of the scale bench is a kwok node\nnodes: []\n")
        t = time.monotonic()
        info = up(state, fleet)
        print(f"cluster up in {time.monotonic() - t:.1f}s ({state})", flush=True)
        self.kubeconfig = info.kubeconfig
        self.api = api_client(info.kubeconfig, pool=8)
        self.cp_pids = {r.name: r.pid for r in ProcessTable(state).recorded() if r.name in ("kube-apiserver", "etcd")}
        result: dict[str, Any] = {}
        try:
            self.kwok = Kwok(state, info.kubeconfig, kwok_bin).start()
            specs = gpu_fleet(args.nodes, args.cpu_nodes)
            t = time.monotonic()
            create_nodes(self.api, specs)
            ready_s = wait_ready(self.api, [s.name for s in specs], 300)
            print(f"{len(specs)} kwok nodes Ready in {time.monotonic() - t:.1f}s ({ready_s:.1f}s after create)", flush=True)
            install_crd(info.kubeconfig, crd_file=self.crd)  # `kubectl wait` fails on a CRD without conditions yet
            core = client.CoreV1Api(self.api)
            core.create_namespace({"metadata": {"name": SA_NAMESPACE}})
            self.sa_kubeconfig, _ = create_service_account_kubeconfig(self.api, self.clusterrole, SA_NAMESPACE,
                                                                      self.out, SA_NAME)
            self.flow_table = scale_flow.install(self.api, SA_NAMESPACE, SA_NAME, self.clusterrole)
            self.metrics = scale_flow.ApiserverMetrics(self.api)
            result = {
                "design": args.label, "operator_imported_from": imported, "kwok": str(kwok_bin),
                "machine": {"cpus": os.cpu_count(), "loadavg_start": os.getloadavg(),
                            "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
                "parameters": {k: v for k, v in vars(args).items()},
                "gpus": gpu_count(specs), "runs": [],
            }
            for n in args.jobs:
                print(f"--- {n} jobs on {args.nodes} nodes{' (chaos)' if args.chaos else ''}", flush=True)
                level = Level(self, n)
                r = asyncio.run(level.run())
                r["loadavg_end"] = os.getloadavg()
                result["runs"].append(r)
                print(json.dumps({k: r[k] for k in ("jobs", "finished", "wall_s", "latency_s", "progress",
                                                    "checks_ok")}, indent=1), flush=True)
                print(json.dumps(r["requests"]["steady_state"] or r["requests"]["whole_run"], indent=1), flush=True)
                self.write(result)
                if n != args.jobs[-1]:
                    self.wait_namespace_gone(core, level.ns)
            result["machine"]["loadavg_end"] = os.getloadavg()
            self.write(result)
            return result
        finally:
            try:
                self.api.close()
            finally:
                if not args.keep:
                    left = down(state)
                    if left:
                        print(f"localcluster down left: {left}", flush=True)

    @staticmethod
    def wait_namespace_gone(core: Any, ns: str, timeout: float = 120) -> None:
        """The next level starts on a quieter API server: wait (bounded) for the last namespace to go."""
        t = time.monotonic()
        while time.monotonic() - t < timeout:
            if not core.list_namespace(field_selector=f"metadata.name={ns}").items:
                print(f"namespace {ns} deleted in {time.monotonic() - t:.0f}s", flush=True)
                return
            time.sleep(2)
        print(f"namespace {ns} still terminating after {timeout:.0f}s; going on", flush=True)

    def write(self, result: dict[str, Any]) -> None:
        path = self.out / "scale-results.json"
        path.write_text(json.dumps(result, indent=1, default=str))
        try:
            import scale_plot

            scale_plot.plot([path], self.out / "scale.png")
        except Exception as exc:  # noqa: BLE001 - the JSON is the result; the plot is a view of it
            print(f"plot failed: {exc!r}", flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, default=500, help="kwok GPU nodes (default 500)")
    p.add_argument("--cpu-nodes", type=int, default=2, help="kwok CPU-only nodes for inspection pods")
    p.add_argument("--jobs", type=lambda s: [int(x) for x in s.split(",")], default=[100, 300, 1000],
                   help="job counts, one run each (default 100,300,1000)")
    p.add_argument("--burst", type=int, default=100, help="FineTuneJobs created at once (default 100)")
    p.add_argument("--burst-interval", type=float, default=5.0, help="seconds between bursts (default 5)")
    p.add_argument("--train-seconds", type=float, default=600, help="each trainer's run (default 600: 10 min)")
    p.add_argument("--progress-interval", type=float, default=5.0)
    p.add_argument("--inspect-seconds", type=float, default=3.0)
    p.add_argument("--timeout", type=float, default=600, help="seconds allowed beyond --train-seconds")
    p.add_argument("--operator-src", default=str(REPO / "operator"),
                   help="directory holding the finetune_operator package to run (put first on PYTHONPATH)")
    p.add_argument("--clusterrole", default=None, help="default: <operator-src>/../charts/.../clusterrole.yaml")
    p.add_argument("--crd", default=None, help="default: <operator-src>/../crds/finetunejobs.finetune.dev.yaml")
    p.add_argument("--operator-config", default="", help="JSON merged into the operator configuration")
    p.add_argument("--label", default="current design", help="name of the design in the results")
    p.add_argument("--lease-seconds", type=int, default=15)
    p.add_argument("--chaos", action="store_true", help="SIGKILL the leader at random moments (a standby takes over)")
    p.add_argument("--chaos-interval", type=lambda s: tuple(float(x) for x in s.split(",")), default=(20.0, 60.0),
                   help="min,max seconds between kills (default 20,60)")
    p.add_argument("--queue-metric", default=r"(work_?queue|queue).*depth",
                   help="regex of the operator's work-queue depth metric names")
    p.add_argument("--sample-seconds", type=float, default=5.0)
    p.add_argument("--flow-seconds", type=float, default=10.0)
    p.add_argument("--out", default=str(Path(os.environ.get("TMPDIR", "/tmp")) / "fto-scale-bench"))
    p.add_argument("--state-dir", default=None, help="cluster state directory (default $FTO_STATE_DIR or OUT/cluster)")
    p.add_argument("--keep", action="store_true", help="leave the cluster running at the end")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("go") is None and not os.environ.get("FTO_KWOK"):
        print("note: no Go toolchain on PATH; kwok must already be cached", file=sys.stderr)
    result = Bench(args).run()
    ok = all(r["checks_ok"] for r in result["runs"])
    print(f"results: {Path(args.out) / 'scale-results.json'}; checks {'passed' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
