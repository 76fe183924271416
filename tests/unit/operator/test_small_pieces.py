"""Conditions, configuration, leader election and status patches: the small pure pieces."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from finetune_operator import conditions, config, controller, leader

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
