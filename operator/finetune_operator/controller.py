"""One reconcile of one FineTuneJob key: observe the caches, decide with `reconcile`, act through `k8s`.

Handlers only feed the caches and enqueue keys; workers take keys from the work queue (one
reconcile per key at a time) and read nothing from the API server on the way: the FineTuneJob,
its children and the GPU inventory all come from the watch caches. Writes happen only when
something changed, through the client-side rate limiter, and every successful write is put
back into the cache so the next reconcile (and the watch event our own write causes) sees it.

The critical path of a job — the creates that take it to its next step and its state changes —
runs on the workers at `ratelimit.CRITICAL`; what nobody waits for (Events, the trainer's
ServiceAccount/Role/RoleBinding/progress ConfigMap made during the inspection) runs on one
background thread at `ratelimit.LOW`, next to progress-only status writes, so in a burst the
limiter spends its tokens on the next step of every job first.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from finetune_operator import cache as cache_mod
from finetune_operator import conditions as cond
from finetune_operator import gpus, k8s, naming, observability, ratelimit, reach, reconcile
from finetune_operator.cache import Key, WorldCache
from finetune_operator.config import OperatorConfig
from finetune_operator.ratelimit import WriteBudget
from finetune_operator.workqueue import QueueStats, WorkQueue

log = logging.getLogger(__name__)
COMPONENT = "finetune-operator"
CHILD_SELECTOR = f"app.kubernetes.io/managed-by={naming.MANAGED_BY}"
CHILD_KINDS = ("Job", "Pod", "ConfigMap")
PREPARED_KINDS = ("ServiceAccount", "Role", "RoleBinding", "ConfigMap")  # made once per job; a ConfigMap while cached

# Status fields that change with every progress write; a diff limited to these waits for the budget.
_PROGRESS_FIELDS = ("progress", "lastCheckpoint", "baselineEvalLoss")


def progress_only(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """True when `new` differs from `old` only in training progress (not state, reasons or results)."""
    def strip(status: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in status.items() if k not in _PROGRESS_FIELDS}
        out["conditions"] = [
            {k: v for k, v in c.items() if not (c.get("type") == cond.RUNNING and k == "message")}
            for c in status.get("conditions") or []
        ]
        return out
    return strip(old) == strip(new)


def _waiting(status: dict[str, Any], message: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    return cond.set_condition(status.get("conditions"), cond.SCHEDULED, None, cond.WAITING_FOR_PREDECESSOR,
                              message, int(body["metadata"].get("generation") or 1))


def _merge_patch(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """A JSON merge patch turning `old` into `new` (removed keys become null)."""
    patch: dict[str, Any] = {}
    for key in set(old) | set(new):
        if key not in new:
            patch[key] = None
        elif isinstance(new[key], dict) and isinstance(old.get(key), dict):
            sub = _merge_patch(old[key], new[key])
            if sub:
                patch[key] = sub
        elif new[key] != old.get(key):
            patch[key] = new[key]
    return patch


def _unfinished(status: dict[str, Any]) -> bool:
    return status.get("state") not in cond.TERMINAL_STATES


def _waiting_for_capacity(status: dict[str, Any]) -> bool:
    return status.get("state") == cond.QUEUED and not status.get("jobName")


class Controller:
    """The work queue, its workers and the housekeeping loop over one `WorldCache`."""

    def __init__(self, config: OperatorConfig, world: WorldCache | None = None,
                 leading: Callable[[], bool] = lambda: True, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.cache = world or WorldCache()
        self.leading = leading
        self.clock = clock
        self.queue: WorkQueue[Key] = WorkQueue(clock=clock, stats=QueueStats(
            on_change=observability.queue_event, on_wait=observability.queue_wait))
        self.budget = WriteBudget(config.progress_interval_seconds, config.status_writes_per_second, clock=clock)
        self.synced = threading.Event()  # kopf's initial lists are all in the caches
        self._specs: dict[tuple[str, int], reconcile.ParsedSpec] = {}
        self._own: dict[Key, tuple[Any, ...]] = {}  # fingerprint of the status write in flight, per key
        self._inventory: tuple[int, gpus.GpuInventory] | None = None  # (cache.node_version, inventory)
        self._pods_confirmed: set[str] = set()  # Job uids whose pods were read from the API server
        self._made: set[tuple[str, str, str]] = set()  # (owner uid, kind, name) prepared ahead here
        self._chores: deque[Callable[[], None]] = deque()
        self._chores_cond = threading.Condition()
        self._background = False  # chores run inline until start() (unit tests call process directly)
        self._nodes_dirty = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # --- feeding the caches (called from kopf's handlers, in its event loop: no I/O) ------------

    def on_ftj(self, body: Any, deleted: bool = False) -> None:
        meta = body.get("metadata") or {}
        key = (str(meta.get("namespace")), str(meta.get("name")))
        if deleted:
            self.cache.drop_ftj(*key, uid=meta.get("uid"))
            self.budget.forget(key)
            uid = str(meta.get("uid"))
            self._made = {made for made in self._made if made[0] != uid}
            self._own.pop(key, None)
            return
        if self.cache.put_ftj(body) and cache_mod.ftj_fingerprint(body) != self._own.get(key):
            self.queue.add(key, urgent=True)  # news; the echo of our own status write is not

    def on_child(self, kind: str, body: Any, deleted: bool = False) -> None:
        meta = body.get("metadata") or {}
        if deleted:
            change = self.cache.drop_child(kind, str(meta.get("namespace")), str(meta.get("name")), meta.get("uid"))
        else:
            change = self.cache.put_child(kind, body)
        if change.changed:
            key = self.cache.key_of(change.owner)
            if key is not None:
                if kind == "ConfigMap" and str(meta.get("name")) == naming.progress(key[1]):
                    # Routine: it can show no sooner than the write budget allows, so the job is
                    # reconciled then, once, whatever the number of writes in between.
                    self.queue.add_after(key, self.budget.deferral(key))
                else:
                    self.queue.add(key, urgent=True)  # news

    def on_node(self, body: Any, deleted: bool = False) -> None:
        name = str((body.get("metadata") or {}).get("name"))
        changed = self.cache.drop_node(name) if deleted else self.cache.put_node(body)
        if changed:
            self._nodes_dirty.set()

    def mark_synced(self) -> None:
        if not self.synced.is_set():
            self.synced.set()
            log.info("watch caches filled: %d jobs, %d nodes", len(self.cache.ftj_keys()), len(self.cache.node_names()))

    # --- the workers ----------------------------------------------------------------------------

    def start(self) -> None:
        for i in range(self.config.workers):
            self._spawn(self._work, f"reconcile-{i}")
        self._spawn(self._housekeeping, "housekeeping")
        self._background = True
        self._spawn(self._run_chores, "background")

    def stop(self) -> None:
        self._stop.set()
        self.queue.shutdown()
        with self._chores_cond:
            self._chores_cond.notify_all()

    def later(self, chore: Callable[[], None]) -> None:
        """Run `chore` off the critical path: on the background thread, at low priority."""
        with self._chores_cond:
            self._chores.append(chore)
            self._chores_cond.notify()

    def _run_inline(self) -> None:
        """Before start() (unit tests drive `process` directly) chores run at the end of the reconcile."""
        while self._chores:
            with k8s.priority(ratelimit.LOW):
                self._chores.popleft()()

    def _run_chores(self) -> None:
        while not self._stop.is_set():
            with self._chores_cond:
                while not self._chores and not self._stop.is_set():
                    self._chores_cond.wait(1.0)
                if not self._chores:
                    continue
                chore = self._chores.popleft()
            try:
                with k8s.priority(ratelimit.LOW):
                    chore()
            except Exception as exc:  # noqa: BLE001 - a chore is best effort; the reconcile repeats what matters
                log.warning("background: %s", exc)

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _work(self) -> None:
        self.synced.wait()
        while not self._stop.is_set():
            key = self.queue.get(timeout=1.0)
            if key is None:
                continue
            try:
                if self.leading():
                    self.process(key)
                self.queue.forget(key)
            except Exception as exc:  # noqa: BLE001 - one job's failure is retried, never fatal
                delay = self.queue.retry(key)
                log.warning("reconcile %s/%s failed (retry in %.1fs): %s", key[0], key[1], delay, exc)
            finally:
                self.queue.done(key)

    def process(self, key: Key) -> None:
        """Reconcile one job from the caches."""
        started = time.monotonic()
        try:
            self._reconcile(key)
        finally:
            observability.RECONCILE_SECONDS.observe(time.monotonic() - started)
            if not self._background:
                self._run_inline()

    def parsed_spec(self, body: dict[str, Any]) -> reconcile.ParsedSpec:
        """The spec parsed once per (uid, generation)."""
        meta = body["metadata"]
        ident = (str(meta.get("uid")), int(meta.get("generation") or 0))
        parsed = self._specs.get(ident)
        if parsed is None:
            parsed = reconcile.parse_spec(body.get("spec"))
            if len(self._specs) > 10_000:
                self._specs.clear()
            self._specs[ident] = parsed
        return parsed

    def observe(self, body: dict[str, Any]) -> reconcile.Observed:
        """The typed facts the decision depends on, from the caches."""
        meta = body["metadata"]
        ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
        kids = self.cache.children(uid)
        obs = reconcile.Observed(body=body, parsed=self.parsed_spec(body), resolve=reach.system_resolver)
        obs.job = kids.jobs.get(naming.training_job(name))
        obs.nodes = self.cache.nodes()
        obs.node_index = self.cache.nodes_by_name()
        if obs.job is None:
            obs.inspect_pod = kids.pods.get(naming.inspection_pod(name))
            obs.inventory = self.inventory()
            if self.config.max_concurrent_jobs:
                obs.active_jobs = self.cache.active_training_jobs(ns if self.config.namespaces else None)
        else:
            obs.pods = [p for p in kids.pods.values() if p.job_uid == obs.job.uid]
            obs.pods_confirmed = obs.job.uid in self._pods_confirmed
            progress_cm = kids.configmaps.get(naming.progress(name))
            obs.progress = dict(progress_cm.progress or {}) if progress_cm is not None else {}
        return obs

    def inventory(self) -> gpus.GpuInventory:
        """The GPU inventory, rebuilt only when a node changed (at 500 nodes a rebuild is ≈ 45 ms of CPU)."""
        version = self.cache.node_version  # read first: a change meanwhile makes the next call rebuild
        cached = self._inventory
        if cached is None or cached[0] != version:
            cached = (version, gpus.inventory_from_nodes(self.cache.nodes(), self.config.node_pools or None,
                                                         gpus.BUILTIN_CATALOG.with_entries(self.config.gpu_catalog)))
            self._inventory = cached
        return cached[1]

    def _reconcile(self, key: Key) -> None:
        namespace, name = key
        body = self.cache.ftj(key)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return  # deleting: garbage collection removes the children; S3 is never touched
        old = body.get("status") or {}
        if not _unfinished(old):
            return
        obs = self.observe(body)
        plan = reconcile.plan(obs, self.config)
        uid = body["metadata"]["uid"]
        new = plan.status_data()
        if plan.confirm_pods and obs.job is not None:
            self._confirm_pods(key, obs.job.uid)
            return
        if new.get("failure", {}).get("reason") == cond.JOB_DELETED and self._job_still_there(namespace, name, uid):
            self.queue.add(key, urgent=True)  # the cache had missed the Job: never a false JobDeleted
            return
        with k8s.priority(ratelimit.CRITICAL):
            for obj in plan.ensure:
                try:
                    self._ensure(obj, uid)
                except k8s.ForeignObject as exc:
                    # A predecessor's child still holds the name; report and retry on the next pass.
                    new["conditions"] = _waiting(new, str(exc), body)
                    self.queue.add_after(key, 2.0)
                    plan.prepare = []
                    break
        if plan.prepare:
            self.later(lambda: self._prepare(plan.prepare, uid))
        if plan.job_suspend is not None and obs.job is not None:
            patched = k8s.patch_object("Job", namespace, obs.job.name, {"spec": {"suspend": plan.job_suspend}})
            self.cache.put_child("Job", patched)
        if plan.delete_job and obs.job is not None:
            k8s.delete_object("Job", namespace, obs.job.name, obs.job.uid)
        for pod_name, pod_uid in plan.force_delete_pods:
            # Failed first: with a podFailurePolicy the Job waits for a terminal phase, not for the deletion.
            k8s.fail_pod(namespace, pod_name, pod_uid, reconcile.NODE_LOST, "the pod's node stopped reporting")
            k8s.delete_object("Pod", namespace, pod_name, pod_uid, grace_seconds=0)
        if new == old:
            return
        if progress_only(old, new):
            wait = self.budget.admit(key)
            if wait > 0:
                observability.STATUS_DEFERRED.inc()
                self.queue.add_after(key, wait)
                return
            observability.STATUS_WRITES.labels(kind="progress").inc()
            level = ratelimit.LOW
        else:
            self.budget.record(key)
            observability.STATUS_WRITES.labels(kind="change").inc()
            level = ratelimit.CRITICAL if new.get("state") != old.get("state") else ratelimit.NORMAL
        # Its watch event may arrive before the response: recognise it by what we are writing.
        self._own[key] = cache_mod.ftj_fingerprint({"metadata": body["metadata"], "status": new})
        try:
            with k8s.priority(level):
                written = k8s.patch_ftj_status(namespace, name, _merge_patch(old, new),
                                               body["metadata"].get("resourceVersion"))
        except k8s.ApiError as exc:
            if exc.status == 409:
                # Our cached copy is behind: refresh it with one GET and try again at once.
                fresh = k8s.get_ftj(namespace, name)
                if fresh is not None:
                    self.cache.put_ftj(fresh)
                    self.queue.add(key, urgent=True)
                return
            if exc.status == 404:
                return
            raise
        self.cache.put_ftj(written)
        self._announce(body, plan, old, new)

    def _confirm_pods(self, key: Key, job_uid: str) -> None:
        """The cache shows a complete Job without its succeeded pod: read the pods, then decide again."""
        pods = k8s.list_objects("Pod", key[0], f"batch.kubernetes.io/controller-uid={job_uid}")
        for pod in pods:
            self.cache.put_child("Pod", pod)
        if len(self._pods_confirmed) > 100_000:
            self._pods_confirmed.clear()
        self._pods_confirmed.add(job_uid)  # the next reconcile decides on what the API server said
        self.queue.add(key, urgent=True)

    def _job_still_there(self, namespace: str, name: str, uid: str) -> bool:
        existing = k8s.get_object("Job", namespace, naming.training_job(name))
        if existing is None or naming.controller_uid(existing) != uid:
            return False
        self.cache.put_child("Job", existing)
        return True

    def _ensure(self, obj: dict[str, Any], uid: str) -> None:
        """Create or adopt (a 409 on create means "adopt if ours"), then write the child through to the cache.

        An object prepared ahead by this process is not sent again when its step comes (a
        ConfigMap only while the cache still has it); a new leader sends it once and adopts it.
        """
        kind, name = str(obj["kind"]), str(obj["metadata"]["name"])
        if (uid, kind, name) in self._made and (kind != "ConfigMap" or name in self.cache.children(uid).configmaps):
            return
        created = k8s.ensure(obj, uid)
        if kind in CHILD_KINDS:
            self.cache.put_child(kind, created)
        if kind in PREPARED_KINDS:
            # Whichever comes first, the chore or the step that needs it: the other one is not sent
            # (in a burst the chore runs late, behind the critical path, and would only meet a 409).
            if len(self._made) > 200_000:
                self._made.clear()
            self._made.add((uid, kind, name))

    def _prepare(self, objs: list[dict[str, Any]], uid: str) -> None:
        """Make what a later step needs (a failure is left to that step, which ensures it too)."""
        for obj in objs:
            try:
                self._ensure(obj, uid)
            except k8s.ForeignObject as exc:
                log.info("not prepared ahead: %s", exc)
                return

    def _announce(self, body: dict[str, Any], plan: reconcile.Plan, old: dict[str, Any], new: dict[str, Any]) -> None:
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        for type_, reason, message in plan.events:
            self.later(functools.partial(k8s.emit_event, body, type_, reason, message, COMPONENT))
            if type_ == "Warning" or reason in cond.TERMINAL_STATES:
                log.info("%s/%s: %s %s", namespace, name, reason, message)
        if new.get("state") != old.get("state"):
            observability.TRANSITIONS.labels(state=str(new.get("state"))).inc()
            if new.get("state") == cond.FAILED_STATE:
                reason = str((new.get("failure") or {}).get("reason", "Failed"))
                if reason in cond.VALIDATION_REASONS:
                    observability.VALIDATION_FAILURES.labels(reason=reason).inc()

    # --- housekeeping: leadership, node batches, resync from memory, the audit relist ------------

    def enqueue_all(self, where: Callable[[dict[str, Any]], bool] = _unfinished, urgent: bool = False) -> int:
        keys = self.cache.ftj_keys(where)
        for key in keys:
            self.queue.add(key, urgent=urgent)
        return len(keys)

    def tick(self, now: float, state: dict[str, Any]) -> None:
        """One housekeeping step at `now` (monotonic); `state` carries the timers between steps."""
        leading = self.leading()
        if leading and not state.get("leading"):
            count = self.enqueue_all(urgent=True)  # a new leader treats every unfinished job once
            log.info("leading: %d unfinished jobs queued", count)
            state["resync_at"] = now + self.config.resync_seconds
        state["leading"] = leading
        if self._nodes_dirty.is_set() and now >= state.get("nodes_at", 0.0):
            self._nodes_dirty.clear()
            state["nodes_at"] = now + self.config.node_batch_seconds
            if leading:
                self.enqueue_all(_waiting_for_capacity)
        if "gauges" not in state:  # at once: a scrape right after start-up sees every state's count
            state["gauges"] = True
            self.update_gauges()
        if now >= state.setdefault("resync_at", now + self.config.resync_seconds):
            state["resync_at"] = now + self.config.resync_seconds
            if leading:
                self.enqueue_all()
            self.update_gauges()
        if self.config.relist_seconds and now >= state.setdefault("relist_at", now + self.config.relist_seconds):
            state["relist_at"] = now + self.config.relist_seconds
            try:
                with k8s.priority(ratelimit.LOW):
                    self.audit()
            except k8s.ApiError as exc:
                log.warning("audit relist: %s", exc)
        observability.QUEUE_DELAYED.set(self.queue.waiting())

    def _housekeeping(self) -> None:
        self.synced.wait()
        state: dict[str, Any] = {}
        while not self._stop.wait(0.25):
            try:
                self.tick(time.monotonic(), state)
            except Exception as exc:  # noqa: BLE001 - housekeeping must go on
                log.warning("housekeeping: %s", exc)

    def update_gauges(self) -> None:
        counts = self.cache.states()
        for state in cond.STATES:
            observability.JOBS_BY_STATE.labels(state=state).set(counts.get(state, 0))
        observability.CACHE_OBJECTS.labels(kind="FineTuneJob").set(sum(counts.values()))
        observability.CACHE_OBJECTS.labels(kind="Node").set(len(self.cache.node_names()))
        for kind in CHILD_KINDS:
            observability.CACHE_OBJECTS.labels(kind=kind).set(len(self.cache.child_uids(kind)))

    def audit(self) -> int:
        """Metadata-only relist: drop cached objects the API server no longer has (a missed deletion)."""
        namespaces: list[str | None] = list(self.config.namespaces) or [None]
        dropped = 0
        for kind in CHILD_KINDS:
            before = self.cache.child_uids(kind)
            present: set[str] = set()
            for ns in namespaces:
                present |= {str(m.get("uid")) for m in k8s.list_metadata(k8s.collection_path(kind, ns), CHILD_SELECTOR)}
            for uid, (ns_, name) in before.items():
                if uid not in present:
                    change = self.cache.drop_child(kind, ns_, name, uid)
                    key = self.cache.key_of(change.owner)
                    if key is not None:
                        self.queue.add(key, urgent=True)
                    dropped += 1
        before_ftjs = {k: (self.cache.ftj(k) or {}).get("metadata", {}).get("uid") for k in self.cache.ftj_keys()}
        present = set()
        for ns in namespaces:
            present |= {str(m.get("uid")) for m in k8s.list_metadata(k8s.collection_path("FineTuneJob", ns))}
        for key, uid in before_ftjs.items():
            if uid not in present:
                self.cache.drop_ftj(*key, uid=uid)
                dropped += 1
        nodes_before = self.cache.node_names()
        node_names = {str(m.get("name")) for m in k8s.list_metadata(k8s.collection_path("Node", None))}
        for name in nodes_before - node_names:
            if self.cache.drop_node(name):
                self._nodes_dirty.set()
                dropped += 1
        if dropped:
            log.warning("audit relist: %d cached objects were gone from the API server; dropped", dropped)
        return dropped

