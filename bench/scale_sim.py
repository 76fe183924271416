"""Plays every trainer of the scale bench: inspection and training pods on kwok nodes.

    .venv/bin/python bench/scale_sim.py --kubeconfig K --namespace NS --out DIR [--train-seconds 600]

kwok makes a pod Running; this process plays its container as the real image would, through
the contract (docs/contract.md) and nothing else:
- it reads the pod's configuration (``train.yaml`` or ``inspect.yaml``: job name and uid, output
  URI, progress ConfigMap) from the pod's annotation, the one the real container reads as a file
  through its downward-API volume (or the ConfigMap an older operator mounted);
- an inspection pod ends after ``--inspect-seconds`` with exit 0 and the inspection summary
  (architecture of Llama-3.2-1B and data statistics) as its termination message;
- a training pod merge-patches ``progress.json`` into its progress ConfigMap every
  ``--interval`` seconds for ``--train-seconds``, then ends with exit 0 and the trainer's
  success message (adapter URI, size, sha256, losses).
Every progress write is logged to ``DIR/progress-writes.jsonl`` (job, step, wall time when the
API server acknowledged it) for the bench to match against ``status.progress``. SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale_kube import Kube, KubeError, Obj, now_rfc3339  # noqa: E402

# The pod annotation holding the trainer's configuration file (docs/contract.md).
CONFIG_ANNOTATION = "finetune.dev/trainer-config"

# Llama-3.2-1B's config.json fields the estimate needs (public facts), as inspection reports them.
ARCHITECTURE = {
    "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 2048, "num_hidden_layers": 16,
    "num_attention_heads": 32, "num_key_value_heads": 8, "intermediate_size": 8192, "vocab_size": 128256,
    "tie_word_embeddings": True, "head_dim": 64,
    "module_names": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}
DATA = {"examples": 2000, "train": 1900, "validation": 100, "tokens": {"p50": 310, "p95": 880, "max": 1024},
        "truncatedFraction": "0.01", "warnings": []}


def run_prefix(cfg: dict[str, Any]) -> str:
    return f"{cfg.get('output_uri', 's3://bench/out/')}{cfg.get('job_name')}-{cfg.get('job_uid')}/"


def inspection_message(cfg: dict[str, Any]) -> str:
    msg = {"class": "Succeeded", "message": "model and data checked",
           "reportUri": run_prefix(cfg) + "reports/inspection.json", "architecture": ARCHITECTURE, "data": DATA}
    return json.dumps(msg, separators=(",", ":"))


def training_message(cfg: dict[str, Any]) -> str:
    run = run_prefix(cfg)
    msg = {"class": "Succeeded", "message": "training finished",
           "adapter": {"uri": run + "adapter/", "sizeBytes": 27262976,
                       "sha256": hashlib.sha256(run.encode()).hexdigest(), "manifestUri": run + "adapter/manifest.json"},
           "baselineEvalLoss": "2.31", "finalEvalLoss": "1.02", "trainLoss": "0.98"}
    return json.dumps(msg, separators=(",", ":"))


def terminated_status(pod: Obj, message: str, exit_code: int = 0) -> Obj:
    """The status a kubelet writes when the only container exits."""
    now = now_rfc3339()
    started = ((((pod.get("status") or {}).get("containerStatuses") or [{}])[0].get("state") or {})
               .get("running") or {}).get("startedAt") or now
    c = pod["spec"]["containers"][0]
    reason = "Completed" if exit_code == 0 else "Error"
    return {"status": {
        "phase": "Succeeded" if exit_code == 0 else "Failed",
        "conditions": [
            {"type": "PodReadyToStartContainers", "status": "False", "lastTransitionTime": now},
            {"type": "Initialized", "status": "True", "lastTransitionTime": started},
            {"type": "Ready", "status": "False", "reason": "PodCompleted", "lastTransitionTime": now},
            {"type": "ContainersReady", "status": "False", "reason": "PodCompleted", "lastTransitionTime": now},
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": started},
        ],
        "containerStatuses": [{
            "name": c["name"], "image": c["image"], "imageID": f"kwok://{c['image']}", "ready": False,
            "started": False, "restartCount": 0,
            "state": {"terminated": {"exitCode": exit_code, "reason": reason, "message": message,
                                     "startedAt": started, "finishedAt": now}},
        }],
    }}


class Simulator:
    def __init__(self, kube: Kube, namespace: str, out: Path, args: argparse.Namespace) -> None:
        self.kube = kube
        self.ns = namespace
        self.args = args
        self.started: set[str] = set()
        self.writes = open(out / "progress-writes.jsonl", "a", buffering=1)  # noqa: SIM115 - closed in run()
        self.stop = asyncio.Event()
        self.counts = {"inspections": 0, "trainings": 0, "progress_writes": 0, "write_errors": 0, "finished": 0}
        self.tasks: set[asyncio.Task[None]] = set()

    def on_pod(self, type_: str, pod: Obj) -> None:
        meta = pod["metadata"]
        if type_ == "DELETED" or meta.get("deletionTimestamp") or meta["uid"] in self.started:
            return
        if (pod.get("status") or {}).get("phase") != "Running":
            return
        component = (meta.get("labels") or {}).get("app.kubernetes.io/component")
        if component not in ("inspection", "training"):
            return
        self.started.add(meta["uid"])
        task = asyncio.create_task(self.play(pod, component))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def config_of(self, pod: Obj) -> dict[str, Any]:
        """The file the pod's volume holds: the operator's configuration annotation (its downward-API
        volume), or, from an operator older than 2026-12-08, the ConfigMap it mounts (read as the
        kubelet would, one GET; so before/after runs of the bench each cost what they cost)."""
        text = (pod["metadata"].get("annotations") or {}).get(CONFIG_ANNOTATION)
        if text is None:
            volume = next(v for v in pod["spec"]["volumes"] if v.get("name") == "trainer-config")
            name = volume["configMap"]["name"]
            cm = await self.kube.request("GET", f"/api/v1/namespaces/{self.ns}/configmaps/{name}")
            text = next(iter((cm.get("data") or {}).values()), "{}")
        return dict(yaml.safe_load(text) or {})

    async def play(self, pod: Obj, component: str) -> None:
        try:
            cfg = await self.config_of(pod)
            if component == "inspection":
                self.counts["inspections"] += 1
                await asyncio.sleep(self.args.inspect_seconds)
                message = inspection_message(cfg)
            else:
                self.counts["trainings"] += 1
                await self.train(cfg)
                message = training_message(cfg)
            await self.finish(pod, message)
        except Exception as exc:  # noqa: BLE001 - one pod's failure is reported, the rest keep running
            print(f"pod {pod['metadata']['name']}: {exc!r}", file=sys.stderr, flush=True)

    async def train(self, cfg: dict[str, Any]) -> None:
        cm = cfg.get("progress_configmap") or f"{cfg['job_name']}-progress"
        interval = self.args.interval
        total = max(1, int(self.args.train_seconds // interval))
        path = f"/api/v1/namespaces/{self.ns}/configmaps/{cm}"
        t0 = time.monotonic()
        for step in range(1, total + 1):
            # Steps on a fixed grid: a slow write does not push the later ones back.
            delay = t0 + step * interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            phase = "done" if step == total else "training"
            doc = {"phase": phase, "step": step, "totalSteps": total, "epoch": f"{step / total:.4f}",
                   "trainLoss": f"{2.3 - 1.3 * step / total:.4f}", "tokensPerSecond": "812.5",
                   "etaSeconds": int((total - step) * interval), "updatedAt": now_rfc3339()}
            sent = time.time()
            try:
                await self.kube.merge_patch(path, {"data": {"progress.json": json.dumps(doc)}})
            except KubeError as exc:
                self.counts["write_errors"] += 1
                print(f"progress {cm} step {step}: {exc}", file=sys.stderr, flush=True)
                continue
            self.counts["progress_writes"] += 1
            self.writes.write(json.dumps({"job": cfg["job_name"], "step": step, "sent": sent, "acked": time.time()}) + "\n")

    async def finish(self, pod: Obj, message: str) -> None:
        name = pod["metadata"]["name"]
        await self.kube.merge_patch(f"/api/v1/namespaces/{self.ns}/pods/{name}/status", terminated_status(pod, message))
        self.counts["finished"] += 1

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stop.set)
        loop.add_signal_handler(signal.SIGINT, self.stop.set)
        watch = asyncio.create_task(self.kube.watch(
            f"/api/v1/namespaces/{self.ns}/pods", self.on_pod,
            label_selector="app.kubernetes.io/managed-by=finetune-operator", stop=self.stop))
        await self.stop.wait()
        watch.cancel()
        for t in list(self.tasks):
            t.cancel()
        self.writes.close()


async def amain(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    async with Kube(Path(args.kubeconfig), connections=args.connections) as kube:
        sim = Simulator(kube, args.namespace, out, args)
        (out / "simulator.ready").write_text("ready\n")
        await sim.run()
        (out / "simulator-counts.json").write_text(json.dumps({**sim.counts, "requests": kube.requests}))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--namespace", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--train-seconds", type=float, default=600)
    p.add_argument("--interval", type=float, default=5)
    p.add_argument("--inspect-seconds", type=float, default=3)
    p.add_argument("--connections", type=int, default=16)
    asyncio.run(amain(p.parse_args()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
