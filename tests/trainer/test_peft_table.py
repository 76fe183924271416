"""The operator's copy of PEFT's default LoRA targets agrees with the installed PEFT.

The operator must not import PEFT (it pulls torch: the .importlinter no-torch contract), so it keeps
``finetune_operator/data/peft_lora_targets.yaml``. When PEFT is upgraded this test fails; regenerate
the file with ``.venv/bin/python tests/trainer/test_peft_table.py --write`` and review the diff.
"""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

TABLE = Path(__file__).resolve().parents[2] / "operator" / "finetune_operator" / "data" / "peft_lora_targets.yaml"


def installed_table() -> dict[str, Any]:
    """PEFT's own mapping, in the file's layout."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as mapping

    return {
        "peftVersion": metadata.version("peft"),
        "loraTargetModules": {k: list(v) for k, v in sorted(mapping.items())},
    }


def test_operator_table_matches_installed_peft() -> None:
    ours = yaml.safe_load(TABLE.read_text(encoding="utf-8"))
    theirs = installed_table()
    assert ours["peftVersion"] == theirs["peftVersion"], "regenerate: python tests/trainer/test_peft_table.py --write"
    assert ours["loraTargetModules"] == theirs["loraTargetModules"]


def test_operator_catalog_reads_the_same_table() -> None:
    from finetune_operator import catalog

    theirs = installed_table()["loraTargetModules"]
    assert {k: list(v) for k, v in catalog.PEFT_DEFAULT_TARGETS.items()} == theirs
    # the families PEFT has defaults for that the estimator also sizes: our "peft" column is PEFT's
    for model_type, row in catalog.AUTO_TARGETS.items():
        assert row.peft_default == (tuple(theirs[model_type]) if model_type in theirs else None), model_type


def _write() -> None:
    header = "# Generated from the installed PEFT by tests/trainer/test_peft_table.py --write; do not edit.\n"
    TABLE.write_text(header + yaml.safe_dump(installed_table(), sort_keys=True), encoding="utf-8")


if __name__ == "__main__":
    if "--write" in sys.argv:
        _write()
