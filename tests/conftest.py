"""Root test configuration, shared by every tier.

- The local cluster's fixtures (local_cluster, kubeconfig, k8s_api, kubectl, s3, namespace,
  service_account_kubeconfig) from :mod:`localcluster.pytest_plugin`, registered once for the run,
  so integration and e2e share one cluster. Fixtures start nothing until a test asks for them; a
  tier's own conftest may override one (the trainer tier has its own ``s3``).
- Per-tier counts at the end of every run: CI's log shows how many tests ran in each tier, so a
  tier that silently stopped collecting (or started skipping) is visible at a glance.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from localcluster import pytest_plugin

TIERS = ("unit", "integration", "trainer", "e2e")
_ROOT = Path(__file__).parent


def pytest_configure(config: pytest.Config) -> None:
    pytest_plugin.register(config)


def _tier(nodeid: str) -> str:
    parts = Path(nodeid.split("::", 1)[0]).parts
    return parts[1] if len(parts) > 1 and parts[0] == "tests" and parts[1] in TIERS else "other"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    counts: dict[str, Counter[str]] = {tier: Counter() for tier in (*TIERS, "other")}
    for outcome in ("passed", "failed", "error", "skipped", "xfailed", "xpassed"):
        for report in terminalreporter.stats.get(outcome, []):
            if getattr(report, "when", "call") in ("call", "setup") and hasattr(report, "nodeid"):
                if outcome == "passed" and report.when != "call":
                    continue
                counts[_tier(report.nodeid)][outcome] += 1
    terminalreporter.section("tests per tier")
    for tier, counter in counts.items():
        if tier == "other" and not counter:
            continue
        detail = ", ".join(f"{n} {k}" for k, n in sorted(counter.items())) or "none ran"
        terminalreporter.write_line(f"{tier:12s} {sum(counter.values()):4d}  ({detail})")
