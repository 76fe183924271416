"""`python -m finetune_operator crds` prints the committed CRD (it raised TypeError before)."""

from __future__ import annotations

from pathlib import Path

import pytest

from finetune_operator.__main__ import main

REPO = Path(__file__).resolve().parents[3]


def test_crds_command_prints_the_committed_crd(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["crds"]) == 0
    assert capsys.readouterr().out == (REPO / "crds" / "finetunejobs.finetune.dev.yaml").read_text()


def test_crds_command_refuses_arguments_saying_what_it_does(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["crds", "--out", "x.yaml"]) == 2
    assert "takes no arguments" in capsys.readouterr().err
