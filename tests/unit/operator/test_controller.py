"""The controller over its caches, with the API replaced by a recorder (pure: no cluster, no sleeps).

What it shows: reconciles read only the caches; our own status write does not come back as
work; progress writes wait for the budget while phase changes do not; a missing Job is checked
before a job is failed as JobDeleted; the audit relist repairs a missed deletion; a new leader
queues every unfinished job once.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from finetune_operator import controller as controller_mod
from finetune_operator import gpus, k8s, naming, observability
from finetune_operator.config import OperatorConfig
from finetune_operator.ratelimit import CRITICAL, LOW, NORMAL

CONFIG = OperatorConfig.model_validate({"s3": {"endpoint": "http://s3.local:8333"}, "relist_seconds": 0})
KEY = ("team-a", "llama-chat")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeApi:
    """Records writes; reads other than the ones a test arranges fail the test."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[str, str]] = []
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.rv = 100
        self.metadata: dict[str, list[dict[str, Any]]] = {}
        for name in ("ensure", "patch_ftj_status", "get_object", "get_ftj", "emit_event", "patch_object",
                     "delete_object", "list_metadata"):
            monkeypatch.setattr(k8s, name, getattr(self, name))

    def ensure(self, obj: dict[str, Any], owner_uid: str) -> dict[str, Any]:
        self.calls.append(("create", obj["kind"]))
        created = copy.deepcopy(obj)
        created["metadata"]["uid"] = f"uid-{obj['metadata']['name']}"
        return created

    def patch_ftj_status(self, namespace: str, name: str, status: dict[str, Any], rv: str | None) -> dict[str, Any]:
        self.calls.append(("status", name))
        body = copy.deepcopy(self.objects[("FineTuneJob", name)])
        current = body.get("status") or {}
        _apply(current, status)
        body["status"] = current
        self.rv += 1
        body["metadata"]["resourceVersion"] = str(self.rv)
        self.objects[("FineTuneJob", name)] = body
        return copy.deepcopy(body)

    def get_object(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        self.calls.append(("get", kind))
        return copy.deepcopy(self.objects.get((kind, name)))

    def get_ftj(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.get_object("FineTuneJob", namespace, name)

    def emit_event(self, *args: Any) -> None:
        self.calls.append(("event", str(args[2])))

    def patch_object(self, kind: str, namespace: str | None, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("patch", kind))
        return {}

    def delete_object(self, *args: Any) -> None:
        self.calls.append(("delete", str(args[0])))

    def list_metadata(self, path: str, label_selector: str = "") -> list[dict[str, Any]]:
        self.calls.append(("list", path))
        return next((items for suffix, items in self.metadata.items() if path.endswith(suffix)), [])

    def writes(self) -> list[tuple[str, str]]:
        out = [c for c in self.calls if c[0] not in ("get", "list")]
        self.calls.clear()
        return out


def _apply(target: dict[str, Any], patch: dict[str, Any]) -> None:
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _apply(target[key], value)
        else:
            target[key] = value


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> FakeApi:
    return FakeApi(monkeypatch)


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make(clock: Clock, leading: bool = True, **overrides: Any) -> controller_mod.Controller:
    config = CONFIG.model_copy(update=overrides)
    ctl = controller_mod.Controller(config, leading=lambda: leading, clock=clock)
    ctl.synced.set()
    return ctl


def child(kind: str, name: str, uid: str, owner: str, **extra: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {"kind": kind, "metadata": {
        "name": name, "namespace": "team-a", "uid": uid,
        "labels": {"app.kubernetes.io/managed-by": naming.MANAGED_BY, naming.UID_LABEL: owner},
        "ownerReferences": [{"kind": "FineTuneJob", "uid": owner, "controller": True}]}}
    obj.update(extra)
    return obj


H100_NODE: dict[str, Any] = {"metadata": {"name": "gpu-0", "labels": {
    "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "nvidia.com/gpu.memory": "81559", "nvidia.com/gpu.count": "1",
    "nvidia.com/gpu.compute.major": "9", "nvidia.com/gpu.compute.minor": "0", "nvidia.com/gpu.family": "hopper"}},
    "status": {"allocatable": {"nvidia.com/gpu": "1"}}}


def inspected_pod(owner: str) -> dict[str, Any]:
    """The inspection pod of llama-chat, finished, with the architecture it read."""
    return child("Pod", naming.inspection_pod("llama-chat"), "ip", owner, spec={"containers": [{}]}, status={
        "phase": "Succeeded", "containerStatuses": [{"state": {"terminated": {"exitCode": 0, "message": json.dumps(
            {"architecture": {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 64,
                              "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128,
                              "vocab_size": 400}})}}}]})


def take(ctl: controller_mod.Controller) -> list[tuple[str, str]]:
    keys = []
    while (key := ctl.queue.get(timeout=0)) is not None:
        keys.append(key)
        ctl.process(key)
        ctl.queue.done(key)
    return keys


def test_a_new_job_is_reconciled_from_the_cache_and_its_own_write_is_not_new_work(
        body: dict[str, Any], api: FakeApi, clock: Clock) -> None:
    ctl = make(clock)
    api.objects[("FineTuneJob", "llama-chat")] = copy.deepcopy(body)
    ctl.on_ftj(body)
    assert take(ctl) == [KEY]
    # The pod's way first; then, off the critical path, what the training step will need, and the Event.
    assert api.writes() == [("create", "Pod"), ("status", "llama-chat"),
                            ("create", "ServiceAccount"), ("create", "Role"), ("create", "RoleBinding"),
                            ("create", "ConfigMap"), ("event", "Inspecting")]
    echo = api.objects[("FineTuneJob", "llama-chat")]
    ctl.on_ftj(echo)  # the watch event of our own status write
    assert len(ctl.queue) == 0
    ctl.queue.add(KEY)
    take(ctl)  # the pod now exists (written through): Inspected moves from Started to Running
    assert api.writes() == [("status", "llama-chat")]
    ctl.queue.add(KEY)
    take(ctl)
    assert api.writes() == []  # nothing changed: nothing written, nothing created again
    assert ctl.cache.children(body["metadata"]["uid"]).pods  # the created pod was written through


def running(body: dict[str, Any], ctl: controller_mod.Controller, api: FakeApi, step: int) -> None:
    uid = body["metadata"]["uid"]
    job = child("Job", naming.training_job("llama-chat"), "job-uid", uid, spec={"suspend": False},
                status={"active": 1})
    pod = child("Pod", "llama-chat-train-x", "pod-uid", uid, spec={"nodeName": "gpu-0", "containers": [{}]},
                status={"phase": "Running"})
    pod["metadata"]["labels"]["batch.kubernetes.io/controller-uid"] = "job-uid"
    progress = child("ConfigMap", naming.progress("llama-chat"), "cm-uid", uid,
                     data={"progress.json": json.dumps({"step": step, "totalSteps": 100, "phase": "training"})})
    for kind, obj in (("Job", job), ("Pod", pod), ("ConfigMap", progress)):
        ctl.on_child(kind, obj)


def test_progress_waits_for_the_budget_and_phase_changes_do_not(
        body: dict[str, Any], api: FakeApi, clock: Clock) -> None:
    ctl = make(clock, progress_interval_seconds=10)
    api.objects[("FineTuneJob", "llama-chat")] = copy.deepcopy(body)
    ctl.on_ftj(body)
    running(body, ctl, api, step=1)
    take(ctl)
    assert ("status", "llama-chat") in api.writes()  # Running: a phase change goes out at once
    for step in (2, 3, 4):  # progress every 2 s
        clock.now += 2
        running(body, ctl, api, step=step)
        assert take(ctl) == []  # not even reconciled: the budget's next slot is known up front
    assert api.writes() == []  # held: within 10 s of the last write
    assert ctl.queue.waiting() == 1  # but never lost: queued for when the budget allows
    clock.now += 4
    take(ctl)
    assert api.writes() == [("status", "llama-chat")]
    assert api.objects[("FineTuneJob", "llama-chat")]["status"]["progress"]["step"] == 4
    clock.now += 1
    failed = child("Job", naming.training_job("llama-chat"), "job-uid", body["metadata"]["uid"],
                   spec={"suspend": False}, status={"conditions": [
                       {"type": "Failed", "status": "True", "reason": "DeadlineExceeded"}]})
    ctl.on_child("Job", failed)
    take(ctl)
    assert ("status", "llama-chat") in api.writes()  # terminal: not held by the budget
    assert api.objects[("FineTuneJob", "llama-chat")]["status"]["state"] == "Failed"


def test_a_job_missing_from_the_cache_is_checked_before_failing_as_deleted(
        body: dict[str, Any], api: FakeApi, clock: Clock) -> None:
    ctl = make(clock)
    uid = body["metadata"]["uid"]
    inspect = inspected_pod(uid)
    ctl.on_child("Pod", inspect)
    body["status"] = {"state": "Running", "attempts": 1, "observedGeneration": 1}
    api.objects[("FineTuneJob", "llama-chat")] = copy.deepcopy(body)
    ctl.on_ftj(body)
    api.objects[("Job", naming.training_job("llama-chat"))] = child(
        "Job", naming.training_job("llama-chat"), "job-uid", uid, spec={"suspend": False}, status={"active": 1})
    take(ctl)
    assert api.objects[("FineTuneJob", "llama-chat")]["status"]["state"] == "Queued"  # not Failed: JobDeleted
    assert ctl.cache.children(uid).jobs  # the Job the watch had not delivered yet is in the cache now


def test_the_audit_relist_drops_what_the_watch_missed(body: dict[str, Any], api: FakeApi, clock: Clock) -> None:
    ctl = make(clock)
    uid = body["metadata"]["uid"]
    api.objects[("FineTuneJob", "llama-chat")] = copy.deepcopy(body)
    ctl.on_ftj(body)
    take(ctl)
    ctl.on_child("Pod", child("Pod", "gone-pod", "gone", uid))
    ctl.on_child("Pod", child("Pod", "kept-pod", "kept", uid))
    api.metadata = {"/pods": [{"uid": "kept"}], "/finetunejobs": [{"uid": uid}], "/jobs": [], "/configmaps": [],
                    "/nodes": []}
    # the pod, plus the two children this reconcile created (the inspection pod, the progress
    # ConfigMap) that the fake never listed
    assert ctl.audit() == 1 + 2
    assert set(ctl.cache.children(uid).pods) == {"kept-pod"}
    assert ctl.queue.get(timeout=0) == KEY  # the owner is reconciled after the repair


def test_a_new_leader_queues_every_unfinished_job_once(body: dict[str, Any], api: FakeApi, clock: Clock) -> None:
    leading = {"now": False}
    ctl = controller_mod.Controller(CONFIG, leading=lambda: leading["now"], clock=clock)
    done = copy.deepcopy(body)
    done["metadata"].update(name="done", uid="u2")
    done["status"] = {"state": "Succeeded"}
    ctl.on_ftj(body)
    ctl.on_ftj(done)
    while (key := ctl.queue.get(timeout=0)) is not None:  # a standby's workers drop keys; its caches stay warm
        ctl.queue.done(key)
    state: dict[str, Any] = {}
    ctl.tick(clock.now, state)
    assert len(ctl.queue) == 0
    leading["now"] = True
    ctl.tick(clock.now, state)
    assert len(ctl.queue) == 1
    ctl.tick(clock.now + 0.25, state)
    assert len(ctl.queue) == 1  # once, not on every tick


def test_the_job_gauges_are_published_on_the_first_tick_not_after_a_resync(
        body: dict[str, Any], clock: Clock) -> None:
    from prometheus_client import REGISTRY

    ctl = make(clock, resync_seconds=600.0)
    body["status"] = {"state": "Running"}
    ctl.on_ftj(body)
    observability.JOBS_BY_STATE.clear()
    ctl.tick(clock.now, {})
    assert REGISTRY.get_sample_value("finetune_jobs", {"state": "Running"}) == 1
    assert REGISTRY.get_sample_value("finetune_jobs", {"state": "Failed"}) == 0


def test_node_changes_are_batched(body: dict[str, Any], api: FakeApi, clock: Clock) -> None:
    ctl = make(clock, node_batch_seconds=1.0)
    body["status"] = {"state": "Queued"}
    ctl.on_ftj(body)
    ctl.queue.get(timeout=0)
    ctl.queue.done(KEY)
    state: dict[str, Any] = {"leading": True}
    node = {"metadata": {"name": "n0", "labels": {"nvidia.com/gpu.product": "Tesla-T4"}}}
    ctl.on_node(node)
    ctl.tick(clock.now, state)
    assert ctl.queue.get(timeout=0) == KEY
    ctl.queue.done(KEY)
    for i in range(1, 50):  # a burst of node changes within the batch window
        ctl.on_node({"metadata": {"name": f"n{i}", "labels": {"nvidia.com/gpu.product": "Tesla-T4"}}})
        ctl.tick(clock.now + 0.01 * i, state)
    assert len(ctl.queue) == 0
    ctl.tick(clock.now + 1.0, state)
    assert ctl.queue.stats.adds == 3  # the job's own add, then one per batch


def test_a_name_held_by_a_predecessor_waits_instead_of_creating_another(
        body: dict[str, Any], api: FakeApi, clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    ctl = make(clock)
    api.objects[("FineTuneJob", "llama-chat")] = copy.deepcopy(body)

    def foreign(obj: dict[str, Any], owner_uid: str) -> dict[str, Any]:
        api.calls.append(("create", obj["kind"]))
        raise k8s.ForeignObject(f"{obj['kind']} belongs to another owner")

    monkeypatch.setattr(k8s, "ensure", foreign)
    ctl.on_ftj(body)
    take(ctl)
    assert api.writes()[0] == ("create", "Pod")  # the first refusal stops the rest
    conditions = {c["type"]: c for c in api.objects[("FineTuneJob", "llama-chat")]["status"]["conditions"]}
    assert conditions["Scheduled"]["reason"] == "WaitingForPredecessor"
    assert ctl.queue.waiting() == 1  # tried again shortly, without an event


def test_the_training_step_creates_only_what_the_inspection_could_not_prepare(
        body: dict[str, Any], api: FakeApi, clock: Clock) -> None:
    ctl = make(clock)
    uid = body["metadata"]["uid"]
    ctl.on_node(H100_NODE)
    api.objects[("FineTuneJob", "llama-chat")] = copy.deepcopy(body)
    ctl.on_ftj(body)
    take(ctl)
    assert ("create", "ServiceAccount") in api.writes()  # prepared while the inspection runs
    inspect = inspected_pod(uid)
    ctl.on_child("Pod", inspect)
    take(ctl)
    writes = api.writes()
    assert writes[:2] == [("create", "Job"), ("status", "llama-chat")], writes
    assert not {("create", "ServiceAccount"), ("create", "Role"), ("create", "RoleBinding")} & set(writes)
    assert api.objects[("FineTuneJob", "llama-chat")]["status"]["state"] == "Queued"


def test_a_preparation_that_runs_after_its_step_sends_nothing(body: dict[str, Any], api: FakeApi, clock: Clock) -> None:
    """In a burst the low-priority chores lag behind the critical path: when the training step
    has already made the trainer's access, the late chore must not create it again (a 409 and a
    GET per object, eight requests per job, measured at 500 nodes × 100 jobs)."""
    ctl = make(clock)
    ctl._background = True  # chores wait in their queue, as behind a busy limiter
    uid = body["metadata"]["uid"]
    ctl.on_node(H100_NODE)
    api.objects[("FineTuneJob", "llama-chat")] = copy.deepcopy(body)
    ctl.on_ftj(body)
    take(ctl)
    assert ("create", "ServiceAccount") not in api.writes()  # still waiting in the chore queue
    ctl.on_child("Pod", inspected_pod(uid))
    take(ctl)
    creates = [what for verb, what in api.writes() if verb == "create"]
    assert creates == ["ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Job"]
    ctl._run_inline()  # now the late chores: the preparation and the events
    assert not [what for verb, what in api.writes() if verb == "create" and what != "Event"]


def test_a_new_leader_still_creates_the_trainer_access_at_placement(
        body: dict[str, Any], api: FakeApi, clock: Clock) -> None:
    ctl = make(clock)  # nothing prepared by this process: the inspection ran under another leader
    uid = body["metadata"]["uid"]
    ctl.on_node(H100_NODE)
    ctl.on_child("Pod", inspected_pod(uid))
    body["status"] = {"state": "Inspecting"}
    api.objects[("FineTuneJob", "llama-chat")] = copy.deepcopy(body)
    ctl.on_ftj(body)
    take(ctl)
    creates = [what for verb, what in api.writes() if verb == "create"]
    assert creates == ["ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Job"]


def test_critical_writes_go_out_at_critical_priority_and_chores_at_low(
        body: dict[str, Any], api: FakeApi, clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, int]] = []
    recorded_ensure, recorded_status, recorded_event = api.ensure, api.patch_ftj_status, api.emit_event

    def ensure(obj: dict[str, Any], owner_uid: str) -> dict[str, Any]:
        seen.append((obj["kind"], k8s.current_priority()))
        return recorded_ensure(obj, owner_uid)

    def status(*args: Any) -> dict[str, Any]:
        seen.append(("status", k8s.current_priority()))
        return recorded_status(*args)

    def event(*args: Any) -> None:
        seen.append(("event", k8s.current_priority()))
        recorded_event(*args)

    monkeypatch.setattr(k8s, "ensure", ensure)
    monkeypatch.setattr(k8s, "patch_ftj_status", status)
    monkeypatch.setattr(k8s, "emit_event", event)
    ctl = make(clock)
    api.objects[("FineTuneJob", "llama-chat")] = copy.deepcopy(body)
    ctl.on_ftj(body)
    take(ctl)
    assert seen[:2] == [("Pod", CRITICAL), ("status", CRITICAL)]  # a state change
    assert all(level == LOW for _, level in seen[2:]) and len(seen) == 7
    seen.clear()
    ctl.queue.add(KEY)
    take(ctl)  # Inspected: Started -> Running, no state change
    assert seen == [("status", NORMAL)]
    assert k8s.current_priority() == NORMAL  # restored after every block


def test_the_gpu_inventory_is_built_once_per_node_change(clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    ctl = make(clock)
    builds: list[int] = []
    real = controller_mod.gpus.inventory_from_nodes
    monkeypatch.setattr(controller_mod.gpus, "inventory_from_nodes",
                        lambda nodes, pools=None, catalog=gpus.BUILTIN_CATALOG: builds.append(len(nodes)) or real(nodes, pools, catalog))
    t4 = {"metadata": {"name": "n0", "labels": {"nvidia.com/gpu.product": "Tesla-T4"}}}
    ctl.on_node(t4)
    first = ctl.inventory()
    assert ctl.inventory() is first and builds == [1]  # every placement until the next node change
    ctl.on_node(t4)  # the same facts (a heartbeat): nothing to rebuild
    assert ctl.inventory() is first and builds == [1]
    ctl.on_node({"metadata": {"name": "n1", "labels": {"nvidia.com/gpu.product": "Tesla-T4"}}})
    assert ctl.inventory() is not first and builds == [1, 2]


def test_a_complete_job_is_checked_against_the_api_server_before_its_adapter_is_judged(
        body: dict[str, Any], api: FakeApi, clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    ctl = make(clock)
    uid = body["metadata"]["uid"]
    body["status"] = {"state": "Running", "attempts": 1, "observedGeneration": 1, "jobName": "llama-chat-train"}
    api.objects[("FineTuneJob", "llama-chat")] = copy.deepcopy(body)
    ctl.on_ftj(body)
    ctl.on_child("Job", child("Job", naming.training_job("llama-chat"), "job-uid", uid, spec={"suspend": False},
                              status={"conditions": [{"type": "Complete", "status": "True"}]}))
    running = child("Pod", "llama-chat-train-x", "pod-uid", uid, spec={"nodeName": "gpu-0", "containers": [{}]},
                    status={"phase": "Running"})
    running["metadata"]["labels"]["batch.kubernetes.io/controller-uid"] = "job-uid"
    ctl.on_child("Pod", running)  # the cache is late: the pod's Succeeded event has not come yet
    succeeded = copy.deepcopy(running)
    succeeded["status"] = {"phase": "Succeeded", "containerStatuses": [{"state": {"terminated": {
        "exitCode": 0, "message": json.dumps({"class": "Succeeded", "adapter": {"uri": "s3://a/adapter/"}})}}}]}
    listed: list[str] = []

    def list_objects(kind: str, namespace: str | None, label_selector: str = "") -> list[dict[str, Any]]:
        listed.append(f"{kind} {label_selector}")
        return [copy.deepcopy(succeeded)]

    monkeypatch.setattr(k8s, "list_objects", list_objects)
    take(ctl)
    assert listed == ["Pod batch.kubernetes.io/controller-uid=job-uid"]  # one read, for this Job only
    final = api.objects[("FineTuneJob", "llama-chat")]["status"]
    assert final["state"] == "Succeeded" and final["adapter"]["uri"] == "s3://a/adapter/"
