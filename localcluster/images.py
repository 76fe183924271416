"""The image table: container image references → local entrypoints."""

from __future__ import annotations

import fnmatch
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

DEFAULT_IMAGES = Path(__file__).with_name("images.yaml")
HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class LocalImage:
    """How to run one image here."""

    pattern: str
    kind: str  # "venv" or "host"
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    # Port name → the variable the program reads that port from (see localcluster.probes).
    port_env: dict[str, str] = field(default_factory=dict)

    def path(self) -> str:
        """PATH for the container: the venv's bin dir first for venv images."""
        if self.kind == "venv":
            # sys.executable keeps the venv path even when python is a symlink out of it.
            return f"{Path(sys.executable).parent}:{HOST_PATH}"
        return HOST_PATH

    def argv(self, command: list[str], args: list[str]) -> list[str]:
        """Docker's rule: command replaces ENTRYPOINT (and drops CMD); args replace CMD."""
        if command:
            return command + args
        return self.entrypoint + (args if args else self.cmd)


class ImageTable:
    """Lookup of image references in the table file."""

    def __init__(self, path: Path | None = None) -> None:
        path = path or Path(os.environ.get("FTO_IMAGES") or DEFAULT_IMAGES)
        self.path = path
        doc = yaml.safe_load(path.read_text()) or {}
        self.entries: list[LocalImage] = []
        for pattern, e in (doc.get("images") or {}).items():
            e = e or {}
            kind = str(e.get("kind", "host"))
            if kind not in ("venv", "host"):
                raise ValueError(f"{path}: images[{pattern!r}].kind must be venv or host, not {kind!r}")
            self.entries.append(
                LocalImage(
                    pattern=str(pattern),
                    kind=kind,
                    entrypoint=[str(x) for x in e.get("entrypoint") or []],
                    cmd=[str(x) for x in e.get("cmd") or []],
                    env={str(k): str(v) for k, v in (e.get("env") or {}).items()},
                    port_env={str(k): str(v) for k, v in (e.get("portEnv") or {}).items()},
                )
            )

    def resolve(self, image: str) -> LocalImage | None:
        """The first entry matching ``image`` exactly or by pattern, or None."""
        for e in self.entries:
            if e.pattern == image or fnmatch.fnmatchcase(image, e.pattern):
                return e
        return None
