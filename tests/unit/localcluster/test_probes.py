"""Probe bookkeeping of the pod runner (pure): thresholds, start-up gating, port allocation."""

from __future__ import annotations

from localcluster import probes


def test_readiness_needs_success_threshold_and_fails_after_failure_threshold() -> None:
    p = probes.Probe("readiness", {"successThreshold": 2, "failureThreshold": 2, "periodSeconds": 5}, started=0.0)
    assert p.due(0.0) and not p.passed
    p.record(True, "", 0.0)
    assert not p.passed and not p.due(4.9) and p.due(5.0)
    p.record(True, "", 5.0)
    assert p.passed
    p.record(False, "boom", 10.0)
    assert p.passed  # one failure is below the threshold
    p.record(False, "boom", 15.0)
    assert not p.passed and not p.failed_out()  # readiness never kills


def test_liveness_fails_out_and_initial_delay_is_kept() -> None:
    p = probes.Probe("liveness", {"initialDelaySeconds": 30}, started=100.0)
    assert not p.due(129.0) and p.due(130.0)
    for t in (130.0, 140.0, 150.0):
        p.record(False, "down", t)
    assert p.failed_out()


def test_startup_probe_gates_readiness() -> None:
    container = {"name": "c", "startupProbe": {"exec": {"command": ["true"]}}, "readinessProbe": {"tcpSocket": {"port": 1}}}
    cp = probes.ContainerProbes(container, {}, started=0.0)
    assert not cp.started() and not cp.ready()
    _, kill = cp.tick("127.0.0.1", now=0.0)  # exec probes are not run: they fail, never pass silently
    assert kill is None and cp.probes["startup"].last_message.startswith("exec probes are not run")


def test_only_ports_the_image_can_be_told_about_are_moved() -> None:
    container = {"name": "op", "ports": [{"name": "health", "containerPort": 8080}, {"name": "other", "containerPort": 7000}]}
    mapping = probes.allocate_ports(container, {"health": "APP_HEALTH_PORT"})
    assert mapping[7000] == 7000 and mapping[8080] not in (8080, 0)
    assert probes.port_env_values(container, {"health": "APP_HEALTH_PORT"}, mapping) == {"APP_HEALTH_PORT": str(mapping[8080])}
