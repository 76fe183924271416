"""The only module that uses kopf's decorators; every handler is a line or two over `controller`.

kopf's watches feed the caches on every replica (so a standby is warm when it takes over);
handlers never reconcile: they update a cache and enqueue the job's key, and the workers of
`controller.Controller` reconcile — only on the leader. The cache feeders are `@kopf.index`
handlers: kopf calls them before any other handler and holds every other handler back until
all initial lists are indexed, which is what tells the workers that the caches are complete
(a reconcile over a half-filled cache would, for one, report a running Job as deleted).
Deletions come through `on.event` (kopf does not call indexers for them).
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from finetune_operator import api, k8s, naming, observability
from finetune_operator.config import OperatorConfig
from finetune_operator.controller import CHILD_SELECTOR, Controller
from finetune_operator.leader import LeaderElector

log = logging.getLogger(__name__)

JOBS = ("batch", "v1", "jobs")
PODS = ("", "v1", "pods")
CONFIGMAPS = ("", "v1", "configmaps")
NODES = ("", "v1", "nodes")
FTJS = (api.GROUP, api.VERSION, api.PLURAL)
_OURS = {"app.kubernetes.io/managed-by": naming.MANAGED_BY}  # the server-side selector, checked again here


class Runtime:
    """Process-wide state set at start-up."""

    config: OperatorConfig = OperatorConfig()
    elector: LeaderElector | None = None
    controller: Controller | None = None


def _leading() -> bool:
    return Runtime.elector is not None and Runtime.elector.is_leader()


def _ctl() -> Controller:
    if Runtime.controller is None:
        Runtime.controller = Controller(Runtime.config, leading=_leading)
    return Runtime.controller


# kopf retries a failing API request (a watch's included) with these sleeps and then gives up,
# which stops the operator. Its default (1 … 21 s, ≈ 54 s in all) is shorter than an API server
# upgrade or a control-plane failover can take; these ride out ≈ 5 minutes of outage.
ERROR_BACKOFFS = (1.0, 1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 21.0, *([30.0] * 9))  # 324 s


class NoDiffBase(kopf.DiffBaseStorage):
    """No diff-base: this operator has no change-detecting handlers (``on.create``/``update``/
    ``field``/``resume``/``delete``), only indexes and ``on.event``, so the "last handled" essence
    kopf keeps for them is never read. kopf still builds one per event by deep-copying the whole
    object (status and managedFields included): ≈ 10 % of the operator's CPU at 500 nodes × 100
    jobs (py-spy). ``test_the_operator_registers_no_change_handlers_that_need_a_diff_base``
    keeps this true."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


def configure_watches(settings: kopf.OperatorSettings) -> None:
    """kopf's own settings: annotations for its bookkeeping, bounded watches, server-side filters."""
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kopf.finetune.dev")
    settings.persistence.diffbase_storage = NoDiffBase()
    settings.posting.enabled = False  # we emit our own, meaningful Events
    # Watches that silently stop are a known kopf failure mode: bound every watch request.
    settings.watching.server_timeout = 120
    settings.watching.client_timeout = 150
    settings.watching.connect_timeout = 30
    settings.watching.chunk_size = 500  # initial lists are paged: no 9 MB response at 500 nodes
    settings.networking.request_timeout = 60
    settings.networking.error_backoffs = ERROR_BACKOFFS
    settings.execution.max_workers = 4
    # Only the operator's own children travel: kopf turns these into labelSelector/fieldSelector.
    for resource in (JOBS, PODS, CONFIGMAPS):
        settings.watching.label_selectors[resource] = CHILD_SELECTOR


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    configure_watches(settings)
    k8s.set_rate_limit(Runtime.config.api_qps, Runtime.config.api_burst)
    config = Runtime.config
    # The elector watches the Lease in its own namespace (kopf's watches cover only the served
    # namespaces); its events are the liveness heartbeat.
    Runtime.elector = LeaderElector(config.lease_name, config.lease_namespace, config.identity,
                                    config.lease_duration_seconds, on_event=observability.HEARTBEAT.beat)
    Runtime.elector.start()
    _ctl().start()


@kopf.on.cleanup()
def cleanup(**_: Any) -> None:
    if Runtime.controller is not None:
        Runtime.controller.stop()
    if Runtime.elector is not None:
        Runtime.elector.stop()


# --- cache feeders (before every other handler; never on DELETED) ----------------------------

@kopf.index(*FTJS)
async def ftj_index(body: kopf.Body, **_: Any) -> None:
    _ctl().on_ftj(body)


@kopf.index(*JOBS, labels=_OURS)
async def job_index(body: kopf.Body, **_: Any) -> None:
    _ctl().on_child("Job", body)


@kopf.index(*PODS, labels=_OURS)
async def pod_index(body: kopf.Body, **_: Any) -> None:
    _ctl().on_child("Pod", body)


@kopf.index(*CONFIGMAPS, labels=_OURS)
async def configmap_index(body: kopf.Body, **_: Any) -> None:
    _ctl().on_child("ConfigMap", body)


@kopf.index(*NODES)
async def node_index(body: kopf.Body, **_: Any) -> None:
    _ctl().on_node(body)


# --- deletions, and the signal that the initial lists are all in ------------------------------

@kopf.on.event(*FTJS)
async def ftj_event(type: str | None, body: kopf.Body, **_: Any) -> None:
    _ctl().mark_synced()
    if type == "DELETED":
        _ctl().on_ftj(body, deleted=True)


@kopf.on.event(*JOBS, labels=_OURS)
async def job_event(type: str | None, body: kopf.Body, **_: Any) -> None:
    _ctl().mark_synced()
    if type == "DELETED":
        _ctl().on_child("Job", body, deleted=True)


@kopf.on.event(*PODS, labels=_OURS)
async def pod_event(type: str | None, body: kopf.Body, **_: Any) -> None:
    _ctl().mark_synced()
    if type == "DELETED":
        _ctl().on_child("Pod", body, deleted=True)


@kopf.on.event(*CONFIGMAPS, labels=_OURS)
async def configmap_event(type: str | None, body: kopf.Body, **_: Any) -> None:
    _ctl().mark_synced()
    if type == "DELETED":
        _ctl().on_child("ConfigMap", body, deleted=True)


@kopf.on.event(*NODES)
async def node_event(type: str | None, body: kopf.Body, **_: Any) -> None:
    _ctl().mark_synced()
    if type == "DELETED":
        _ctl().on_node(body, deleted=True)


# --- probes: async, so they never wait behind reconcile work -----------------------------------

@kopf.on.probe(id="watchAgeSeconds")
async def watch_age(**_: Any) -> float:
    age = observability.HEARTBEAT.age()
    limit = Runtime.config.watch_stale_limit()
    if age > limit:
        raise kopf.PermanentError(f"no watch event for {age:.0f}s (limit {limit}s): the watch stream is stale")
    return round(age, 1)


@kopf.on.probe(id="leader")
async def leader_probe(**_: Any) -> bool:
    return _leading()
