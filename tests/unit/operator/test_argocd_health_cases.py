"""The chart's Argo CD health check for FineTuneJob, run in gopher-lua (Argo CD's Lua VM) over
the cases of its ``health_test.yaml``, in Argo CD's own layout and contract.

Pure apart from the harness binary (``tools/luahealth``, built once and cached like helm). The
same check runs on statuses the real operator writes in ``tests/integration/test_argocd_health.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from localcluster import luahealth

CASES = luahealth.load_cases()


@pytest.mark.parametrize(("path", "obj", "expected"), CASES, ids=[c[0].removeprefix("testdata/") for c in CASES])
def test_health_test_yaml_case(path: str, obj: dict[str, Any], expected: dict[str, str], luahealth_harness: Path) -> None:
    [result] = luahealth.evaluate([obj], binary=luahealth_harness)
    assert result == expected, f"{path}: {result}"


def test_cases_cover_every_health_the_check_can_give() -> None:
    assert {e["status"] for _, _, e in CASES} == {"Progressing", "Healthy", "Degraded", "Suspended", "Unknown"}
    states = {(o.get("status") or {}).get("state") for _, o, _ in CASES}
    assert {None, "Validating", "Inspecting", "Queued", "Running", "Succeeded", "Failed", "Suspended"} <= states


def test_every_testdata_file_is_a_case() -> None:
    files = {f"testdata/{p.name}" for p in (luahealth.CHECK_DIR / "testdata").glob("*.yaml")}
    assert files == {c[0] for c in CASES}


def test_harness_keeps_argo_cds_contract(luahealth_harness: Path, tmp_path: Path) -> None:
    """What Argo CD does with scripts that break the contract, so the harness cannot pass a bad check."""
    def run(script: str) -> dict[str, str]:
        path = tmp_path / "check.lua"
        path.write_text(script)
        [result] = luahealth.evaluate([{"kind": "FineTuneJob"}], script=path, binary=luahealth_harness)
        return result

    assert run('return {status = "Healthy", message = obj.kind}') == {"status": "Healthy", "message": "FineTuneJob"}
    assert run('return {status = "Fine"}') == {"status": "Unknown", "message": "Lua returned an invalid health status"}
    assert "not string" in run('return "Healthy"')["error"]
    # argocd-cm checks run without the string and math libraries (useOpenLibs is off).
    assert "error" in run('return {status = string.upper("healthy")}')
    assert "error" in run('return {status = "Healthy", message = tostring(math.floor(1.5))}')
    # Argo CD stops a check after one second.
    assert "error" in run("while true do end")


def test_docs_give_argo_cds_key_and_the_shipped_file() -> None:
    """argocd-cm keys are resource.customizations.health.<group>_<kind>; the docs point at the chart's file."""
    install = (luahealth.REPO / "docs" / "install.md").read_text()
    rel = luahealth.HEALTH_LUA.relative_to(luahealth.REPO / "charts" / "finetune-operator")
    assert "resource.customizations.health.finetune.dev_FineTuneJob" in install
    assert str(rel) in install and luahealth.HEALTH_LUA.is_file()
    assert luahealth.CHECK_DIR.parts[-2:] == ("finetune.dev", "FineTuneJob")  # Argo CD's <group>/<kind> layout
