"""The operator's layering (STYLE.md): every module sits in one layer and imports only downwards,
pure modules never reach the API, kopf stays in handlers, and the operator never pulls the
trainer's torch stack. Enforced with import-linter (.importlinter)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def test_import_contracts_are_kept() -> None:
    proc = subprocess.run([str(Path(sys.executable).parent / "lint-imports"), "--config", str(REPO / ".importlinter")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def test_handlers_stay_thin() -> None:
    """Every kopf handler delegates: no handler body longer than a few statements."""
    import ast

    tree = ast.parse((REPO / "operator" / "finetune_operator" / "handlers.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and any(
            isinstance(d, ast.Call) and "kopf" in ast.unparse(d.func) for d in node.decorator_list
        ):
            assert len(node.body) <= 12, f"handler {node.name} has grown logic ({len(node.body)} statements)"
