"""The Argo CD health check (health.lua, in gopher-lua) on statuses the real operator writes.

One operator and one namespace drive a job through every state it persists and one job per
failure class; a watch captures every version of each object (so no status write is missed),
and the check must give each the health and message Argo CD should show.

``FTO_ARGOCD_CAPTURE_DIR=DIR`` also writes one captured object per (state, reason) there, to
refresh the check's ``testdata/`` from the real operator (its ``operator_*.yaml`` cases came from here).
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, watch

from localcluster import luahealth
from localcluster.waiting import until
from operator_env import (  # noqa: F401 - fixtures
    BAD_DATA, GROUP, PLURAL, SHAPE_70B, VERSION, Jobs, assets, crd, job_namespace, jobs, manifest, s3_client,
    start_operator, unique,
)

FINAL = ("Succeeded", "Failed", "Suspended")


class Recorder:
    """Every version of every FineTuneJob in a namespace, from a watch, in order."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.namespace = namespace
        self.versions: dict[str, list[dict[str, Any]]] = {}
        self.lock = threading.Lock()
        self.watch = watch.Watch()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "Recorder":
        self.thread.start()
        return self

    def _run(self) -> None:
        rv = self.custom.list_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL)["metadata"]["resourceVersion"]
        while not self.stopped.is_set():
            try:
                for event in self.watch.stream(self.custom.list_namespaced_custom_object, GROUP, VERSION,
                                               self.namespace, PLURAL, resource_version=rv, timeout_seconds=60):
                    obj = event["object"]
                    rv = obj["metadata"]["resourceVersion"]
                    with self.lock:
                        self.versions.setdefault(obj["metadata"]["name"], []).append(obj)
            except Exception:  # noqa: BLE001 - a dropped watch is reopened from the last version seen
                self.stopped.wait(0.5)

    def of(self, name: str) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.versions.get(name, []))

    def stop(self) -> None:
        self.stopped.set()
        self.watch.stop()


def _state(obj: dict[str, Any]) -> str | None:
    return (obj.get("status") or {}).get("state")


def _expected(obj: dict[str, Any]) -> tuple[str, str]:
    """(health, text the message must contain) for an object, from what the operator wrote."""
    status = obj.get("status") or {}
    state = status.get("state")
    if state is None:
        return "Progressing", "waiting for the operator"
    if (status.get("observedGeneration") or 0) < obj["metadata"]["generation"]:
        return "Progressing", "not yet observed generation"
    if state == "Succeeded":
        return "Healthy", status["adapter"]["uri"]
    if state == "Failed":
        return "Degraded", status["failure"]["reason"] + ": "
    if state == "Suspended":
        return "Suspended", "runPolicy.suspend"
    progress = status.get("progress") or {}
    if state == "Running" and progress.get("step") is not None and progress.get("totalSteps") is not None:
        return "Progressing", f"step {progress['step']}/{progress['totalSteps']}"
    return "Progressing", state


def test_health_of_every_status_the_operator_writes(
    jobs: Jobs, start_operator: Any, k8s_api: client.ApiClient, job_namespace: str, luahealth_harness: Path
) -> None:
    recorder = Recorder(k8s_api, job_namespace).start()
    try:
        until(lambda: recorder.thread.is_alive(), timeout=5, what="the watch to start")
        start_operator()
        happy, suspended = unique("happy"), unique("suspended")
        invalid, bad_data, unschedulable = unique("invalid"), unique("bad-data"), unique("unschedulable")
        jobs.create(manifest(happy))
        jobs.create(manifest(suspended, runPolicy={"suspend": True}))
        trust = manifest(invalid)
        trust["spec"]["baseModel"]["trustRemoteCode"] = True
        jobs.create(trust)
        jobs.create(manifest(bad_data, dataset={"trainUri": BAD_DATA, "format": "messages", "maxSeqLength": 128}))
        jobs.create(manifest(unschedulable, baseModel={"uri": SHAPE_70B}, method="lora",
                             dataset={"trainUri": "s3://finetune/data/chat.jsonl", "maxSeqLength": 2048},
                             lora={"r": 16}, training={"maxSteps": 10}))
        names = [happy, suspended, invalid, bad_data, unschedulable]
        until(lambda: all(_state(v[-1]) in FINAL for v in (recorder.of(n) for n in names) if v)
              and all(recorder.of(n) for n in names), timeout=600, interval=1, what="every job to reach a final state")
    finally:
        recorder.stop()

    captured = {n: recorder.of(n) for n in names}
    assert _state(captured[happy][-1]) == "Succeeded"
    assert _state(captured[suspended][-1]) == "Suspended"
    reasons = {n: (captured[n][-1]["status"].get("failure") or {}).get("reason") for n in (invalid, bad_data, unschedulable)}
    assert reasons == {invalid: "InvalidSpec", bad_data: "DataError", unschedulable: "Unschedulable"}
    states_seen = {_state(o) for o in captured[happy]}
    assert {None, "Inspecting", "Queued", "Running", "Succeeded"} <= states_seen, states_seen
    assert any(_state(o) == "Running" and (o["status"].get("progress") or {}).get("step") is not None
               for o in captured[happy]), "no Running status with progress was captured"

    objects = [o for versions in captured.values() for o in versions]
    results = luahealth.evaluate(objects, binary=luahealth_harness)
    wrong = []
    for obj, result in zip(objects, results, strict=True):
        health, text = _expected(obj)
        if result.get("status") != health or text not in result.get("message", ""):
            wrong.append(f"{obj['metadata']['name']} state={_state(obj)}: expected {health} with {text!r}, "
                         f"got {result}; status={json.dumps(obj.get('status'))[:600]}")
    assert not wrong, "\n".join(wrong)
    _maybe_write_testdata(objects, results)


def _maybe_write_testdata(objects: list[dict[str, Any]], results: list[dict[str, str]]) -> None:
    target = os.environ.get("FTO_ARGOCD_CAPTURE_DIR")
    if not target:
        return
    out = Path(target)
    out.mkdir(parents=True, exist_ok=True)
    seen: dict[str, Any] = {}
    for obj, result in zip(objects, results, strict=True):
        status = obj.get("status") or {}
        key = (status.get("state") or "no_status") + "".join(
            "_" + str(r) for r in [(status.get("failure") or {}).get("reason")] if r)
        if status.get("state") == "Running" and (status.get("progress") or {}).get("step") is None:
            key += "_no_progress"
        seen[key] = (obj, result)  # the last version of each kind: the most complete status
    for key, (obj, result) in seen.items():
        meta = obj["metadata"]
        clean = {"apiVersion": obj["apiVersion"], "kind": obj["kind"],
                 "metadata": {k: meta[k] for k in ("name", "namespace", "generation") if k in meta},
                 "spec": obj["spec"], **({"status": obj["status"]} if "status" in obj else {})}
        (out / f"{key}.yaml").write_text(yaml.safe_dump(clean, sort_keys=False))
        (out / f"{key}.health.json").write_text(json.dumps(result))

