"""Root test configuration: per-tier counts at the end of every run.

CI's log shows how many tests ran in each tier, so a tier that silently stopped collecting
(or started skipping) is visible at a glance.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

TIERS = ("unit", "integration", "trainer", "e2e")
_ROOT = Path(__file__).parent


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
