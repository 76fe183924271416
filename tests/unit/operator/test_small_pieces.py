"""Conditions, configuration, leader election and status patches: the small pure pieces."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from finetune_operator import conditions, config, controller, k8s, leader

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def test_last_transition_time_moves_only_when_status_changes() -> None:
    conds = conditions.set_condition([], "Running", True, "Training", "step 1", 1, T0)
    later = conditions.set_condition(conds, "Running", True, "Training", "step 2", 2, T0 + timedelta(minutes=5))
    assert later[0]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert later[0]["message"] == "step 2" and later[0]["observedGeneration"] == 2
    flipped = conditions.set_condition(later, "Running", False, "Suspended", "", 2, T0 + timedelta(minutes=9))
    assert flipped[0]["lastTransitionTime"] == "2026-01-01T00:09:00Z"


def test_other_condition_types_are_kept() -> None:
    conds = conditions.set_condition([], "Validated", True, "Valid", "", 1, T0)
    conds = conditions.set_condition(conds, "Running", None, "Starting", "", 1, T0)
    assert [c["type"] for c in conds] == ["Validated", "Running"]
    assert conditions.is_true(conds, "Validated") and not conditions.is_true(conds, "Running")


def test_config_from_file_and_env(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "config.yaml"
    path.write_text("trainer_image: registry.local/trainer:1\ns3:\n  endpoint: http://s3:8333\n")
    cfg = config.load({"FINETUNE_OPERATOR_CONFIG": str(path), "FINETUNE_OPERATOR_S3__REGION": "eu-west-1",
                       "FINETUNE_OPERATOR_MAX_CONCURRENT_JOBS": "3"})
    assert cfg.trainer_image == "registry.local/trainer:1"
    assert (cfg.s3.endpoint, cfg.s3.region, cfg.max_concurrent_jobs) == ("http://s3:8333", "eu-west-1", 3)
    assert cfg.allowed_endpoints() == {"http://s3:8333"}


@pytest.mark.parametrize("env, needle", [
    ({"FINETUNE_OPERATOR_VRAM_HEADROOM": "1.5"}, "vram_headroom"),
    ({"FINETUNE_OPERATOR_UNKNOWN_KEY": "x"}, "unknown_key"),
    ({"FINETUNE_OPERATOR_TERMINATION_GRACE_PERIOD_SECONDS": "1"}, "termination_grace_period_seconds"),
])
def test_bad_configuration_names_the_key(env: dict[str, str], needle: str) -> None:
    with pytest.raises(config.ConfigError, match=needle):
        config.load(env)


def test_lease_takeover_only_after_expiry() -> None:
    spec = {"holderIdentity": "a", "renewTime": "2026-01-01T00:00:00.000000Z", "leaseDurationSeconds": 15}
    assert leader.may_take(spec, "a", T0 + timedelta(seconds=5))
    assert not leader.may_take(spec, "b", T0 + timedelta(seconds=10))
    assert leader.may_take(spec, "b", T0 + timedelta(seconds=16))
    assert leader.may_take({}, "b", T0)


def test_merge_patch_nulls_removed_keys_and_keeps_unchanged_out() -> None:
    old = {"state": "Running", "progress": {"step": 1, "eta": 5}, "failure": {"reason": "x"}}
    new = {"state": "Running", "progress": {"step": 2}}
    assert controller._merge_patch(old, new) == {"progress": {"step": 2, "eta": None}, "failure": None}


def test_progress_only_diffs_are_told_from_news() -> None:
    running = {"type": "Running", "status": "True", "reason": "Training", "message": "step 1/10"}
    old = {"state": "Running", "progress": {"step": 1}, "conditions": [running]}
    assert controller.progress_only(old, {**old, "progress": {"step": 2},
                                          "conditions": [{**running, "message": "step 2/10"}]})
    assert not controller.progress_only(old, {**old, "state": "Succeeded"})
    assert not controller.progress_only(old, {**old, "conditions": [{**running, "status": "False"}]})
    assert not controller.progress_only(old, {**old, "attempts": 2})


def test_the_state_list_lives_in_one_place() -> None:
    from finetune_operator import api

    assert set(conditions.STATES) == set(api.STATES)
    assert set(conditions.TERMINAL_STATES) <= set(api.STATES)


def test_liveness_probe_fails_when_no_watch_event_arrives(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    from finetune_operator import handlers, observability

    handlers.Runtime.config = config.OperatorConfig(lease_duration_seconds=5)
    observability.HEARTBEAT.beat()
    assert asyncio.run(handlers.watch_age()) < 1  # async: never queued behind reconcile work
    monkeypatch.setattr(observability.HEARTBEAT, "age", lambda: 21.0)
    with pytest.raises(Exception, match="stale"):
        asyncio.run(handlers.watch_age())


def test_gpu_catalog_additions_give_memory_to_cloud_labelled_nodes() -> None:
    from finetune_operator import gpus

    node = {"metadata": {"name": "n1", "labels": {"cloud.google.com/gke-accelerator": "nvidia-future-x1"}},
            "status": {"allocatable": {"nvidia.com/gpu": "8"}, "capacity": {"nvidia.com/gpu": "8"}}}
    before = gpus.inventory_from_nodes([node])
    assert not before.products({})
    extended = gpus.BUILTIN_CATALOG.with_entries([{"product": "NVIDIA-Future-X1", "memoryMiB": 196608,
                                                   "computeCapability": "10.0", "gkeAccelerator": ["nvidia-future-x1"]}])
    after = gpus.inventory_from_nodes([node], gpu_catalog=extended).products({})
    assert [p.memory_mib for p in after] == [196608]
    # a value, not module state: the built-in catalog is unchanged
    assert not gpus.inventory_from_nodes([node]).products({}) and gpus.BUILTIN_CATALOG.lookup("nvidia-future-x1") is None
    with pytest.raises(ValueError, match=r"gpu_catalog\[0\]"):
        gpus.BUILTIN_CATALOG.with_entries([{"product": "x"}])


def test_a_configured_gpu_replaces_the_built_in_entry_of_that_product() -> None:
    from finetune_operator import gpus

    extended = gpus.BUILTIN_CATALOG.with_entries([{"product": "Tesla-T4", "memoryMiB": 16000, "computeCapability": "7.5"}])
    entry = extended.lookup("tesla-t4")
    assert entry is not None and entry.memory_mib == 16000
    assert [g.product for g in extended.entries].count("Tesla-T4") == 1
    builtin = gpus.BUILTIN_CATALOG.lookup("tesla-t4")
    assert builtin is not None and builtin.memory_mib == 15360


def test_a_standby_retries_when_the_holders_term_ends() -> None:
    spec = {"holderIdentity": "a", "renewTime": "2026-01-01T00:00:00.000000Z", "leaseDurationSeconds": 15}
    assert leader.expires(spec) == T0 + timedelta(seconds=15)
    assert leader.expires({**spec, "holderIdentity": None}) is None  # released: nothing to wait for
    assert leader.expires({"holderIdentity": "a"}) is None


class _LeaseApi:
    """The Lease calls of one elector, answered from `lease` (None: deleted)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, lease: dict[str, Any] | None) -> None:
        self.lease = lease
        self.writes: list[str] = []
        monkeypatch.setattr(k8s, "get_object", lambda kind, ns, name: self.lease)
        monkeypatch.setattr(k8s, "request", lambda method, path, body=None, **_: self.writes.append(method) or {})
        monkeypatch.setattr(k8s, "patch_object", lambda *args: self.writes.append("PATCH") or {})


def test_a_stopping_replica_never_recreates_the_lease(monkeypatch: pytest.MonkeyPatch) -> None:
    api = _LeaseApi(monkeypatch, None)
    elector = leader.LeaderElector("fto-leader", "fto-system", "b", 15)
    elector._stop.set()  # stop() was called (an uninstall deleted the Lease and is stopping the pods)
    elector._try_once()
    assert api.writes == [] and not elector.is_leader()
    running = leader.LeaderElector("fto-leader", "fto-system", "c", 15)
    running._try_once()  # a replica that is not stopping creates the missing Lease
    assert api.writes == ["POST"] and running.is_leader()


def test_a_standby_schedules_its_next_try_at_the_end_of_the_term(monkeypatch: pytest.MonkeyPatch) -> None:
    renewed = datetime.now(timezone.utc)
    _LeaseApi(monkeypatch, {"metadata": {"resourceVersion": "1"}, "spec": {
        "holderIdentity": "a", "renewTime": renewed.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "leaseDurationSeconds": 15}})
    elector = leader.LeaderElector("fto-leader", "fto-system", "b", 15)
    elector._try_once()
    assert not elector.is_leader()
    assert elector._next_try is not None and 10 < elector._next_try <= 15.05


def test_the_lease_is_watched_in_its_own_namespace_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, dict[str, Any]]] = []
    beats: list[int] = []
    elector = leader.LeaderElector("fto-leader", "fto-system", "b", 15, on_event=lambda: beats.append(1))

    def watch(path: str, query: dict[str, Any]) -> Any:
        seen.append((path, query))
        yield "MODIFIED", {"spec": {"holderIdentity": "a"}}
        yield "MODIFIED", {"spec": {"holderIdentity": None}}  # released by a graceful stop
        elector._stop.set()
        yield "MODIFIED", {"spec": {}}

    monkeypatch.setattr(k8s, "watch", watch)
    elector._watch()
    assert seen == [("/apis/coordination.k8s.io/v1/namespaces/fto-system/leases",
                     {"fieldSelector": "metadata.name=fto-leader"})]
    assert len(beats) == 3  # every event is a liveness heartbeat
    assert elector._wake.is_set()  # the release woke the standby's election at once


def test_a_failing_lease_watch_is_not_stale(monkeypatch: pytest.MonkeyPatch) -> None:
    """While the API server restarts the watch fails and reconnects: each failure is a heartbeat
    (liveness stays up); only a connected, silent stream lets the watch age grow."""
    beats: list[int] = []
    elector = leader.LeaderElector("fto-leader", "fto-system", "b", 15, on_event=lambda: beats.append(1))
    attempts: list[int] = []

    def watch(path: str, query: dict[str, Any]) -> Any:
        attempts.append(1)
        if len(attempts) == 3:
            elector._stop.set()
        raise ConnectionRefusedError("connection refused")
        yield  # a generator, as k8s.watch

    monkeypatch.setattr(k8s, "watch", watch)
    monkeypatch.setattr(elector._stop, "wait", lambda timeout=None: elector._stop.is_set())
    elector._watch()
    assert len(attempts) == 3 and len(beats) == 3


def test_only_a_refused_renewal_counts_as_a_heartbeat(monkeypatch: pytest.MonkeyPatch) -> None:
    """A refused connection means nothing listens at the API server's address (it restarts): the
    watch's silence then is no sign of a stale stream. A timeout proves nothing and is not a beat."""
    import urllib3

    beats: list[int] = []
    elector = leader.LeaderElector("fto-leader", "fto-system", "b", 15, on_event=lambda: beats.append(1))
    refused = urllib3.exceptions.MaxRetryError(
        None, "/leases", urllib3.exceptions.NewConnectionError(None, "Failed to establish a new connection"))  # type: ignore[arg-type]
    refused.reason.__cause__ = ConnectionRefusedError(111, "Connection refused")  # type: ignore[union-attr]
    timed_out = urllib3.exceptions.MaxRetryError(None, "/leases", urllib3.exceptions.ReadTimeoutError(
        None, "/leases", "Read timed out"))  # type: ignore[arg-type]
    assert k8s.server_refused(refused) and not k8s.server_refused(timed_out)
    for error in (refused, timed_out):
        def fail(*_: Any, error: Exception = error) -> Any:
            raise error
        monkeypatch.setattr(k8s, "get_object", fail)
        monkeypatch.setattr(elector._wake, "wait", lambda timeout=None: elector._stop.set())
        elector._stop.clear()
        elector._run()
    assert len(beats) == 1 and not elector.is_leader()


def test_the_stale_watch_limit_defaults_to_four_lease_durations() -> None:
    assert config.OperatorConfig(lease_duration_seconds=15).watch_stale_limit() == 60
    assert config.OperatorConfig(lease_duration_seconds=6, watch_stale_seconds=8).watch_stale_limit() == 8
    with pytest.raises(config.ConfigError, match="watch_stale_seconds: .*at least lease_duration_seconds"):
        config.load({"FINETUNE_OPERATOR_WATCH_STALE_SECONDS": "3"})


def test_the_watch_stream_is_split_into_events(monkeypatch: pytest.MonkeyPatch) -> None:
    lines = [b'{"type": "ADDED", "object": {"metadata": {"name": "l"}}}\n{"type": "MOD',
             b'IFIED", "object": {"spec": {}}}\n\n',
             b'{"type": "ERROR", "object": {"code": 410, "reason": "Gone", "message": "too old"}}\n']

    class Response:
        released = False

        def stream(self, amt: Any = None, decode_content: Any = None) -> Any:
            return iter(lines)

        def release_conn(self) -> None:
            Response.released = True

    class Api:
        def call_api(self, url: str, method: str, **_: Any) -> Response:
            assert "watch=true" in url and "fieldSelector=metadata.name%3Dl" in url
            return Response()

    monkeypatch.setattr(k8s, "_api", lambda: Api())
    events = []
    with pytest.raises(k8s.ApiError) as gone:
        for event in k8s.watch("/apis/coordination.k8s.io/v1/namespaces/n/leases", {"fieldSelector": "metadata.name=l"}):
            events.append(event)
    assert events == [("ADDED", {"metadata": {"name": "l"}}), ("MODIFIED", {"spec": {}})]
    assert gone.value.status == 410 and Response.released


def test_kopf_rides_out_minutes_of_api_server_outage_and_watches_only_its_children() -> None:
    import kopf

    from finetune_operator import handlers

    settings = kopf.OperatorSettings()
    handlers.configure_watches(settings)
    backoffs = list(settings.networking.error_backoffs)  # type: ignore[arg-type]
    assert sum(backoffs) >= 300, f"kopf gives up after {sum(backoffs)} s of API errors and stops the operator"
    assert settings.watching.client_timeout and settings.watching.server_timeout  # no unbounded watch
    assert settings.posting.enabled is False
    for resource in (handlers.JOBS, handlers.PODS, handlers.CONFIGMAPS):
        assert settings.watching.label_selectors[resource] == handlers.CHILD_SELECTOR


def test_the_operator_registers_no_change_handlers_that_need_a_diff_base() -> None:
    """kopf's diff-base (a deep copy of every object on every event) is switched off; that is
    only right while no handler asks kopf what changed."""
    import kopf
    from kopf._core.intents import registries

    from finetune_operator import handlers

    registry = registries.get_default_registry()
    for resource in (handlers.FTJS, handlers.JOBS, handlers.PODS, handlers.CONFIGMAPS, handlers.NODES):
        ref = kopf.Resource(*resource)  # type: ignore[call-arg]
        assert not registry._changing.has_handlers(resource=ref), resource
        assert registry._indexing.has_handlers(resource=ref) and registry._watching.has_handlers(resource=ref)
    settings = kopf.OperatorSettings()
    handlers.configure_watches(settings)
    assert settings.persistence.diffbase_storage.fetch(body=kopf.Body({"metadata": {}})) is None
