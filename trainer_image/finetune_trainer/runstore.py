"""The run prefix (contract §2) as one small interface, in S3 or (for laptop runs) a local directory.

Every key is relative to `<output_uri><job_name>-<job_uid>/`, so nothing here can touch
another run's files: checkpoints of a re-created job with the same name live under another UID.
"""

from __future__ import annotations

import os
import shutil
from typing import Any, Protocol

from . import storage


class RunStore(Protocol):
    def uri(self, rel: str = "") -> str: ...
    def put_bytes(self, rel: str, data: bytes, *, if_none_match: bool = False) -> bool: ...
    def read_bytes(self, rel: str) -> bytes: ...
    def exists(self, rel: str) -> bool: ...
    def upload_dir(self, rel: str, local_dir: str) -> dict[str, str]: ...
    def download_dir(self, rel: str, local_dir: str) -> None: ...
    def list_dirs(self, rel: str) -> list[str]: ...
    def list_files(self, rel: str) -> list[str]: ...
    def delete_dir(self, rel: str) -> None: ...
    # One file, created only if absent: its SHA-256, or None when the key exists.
    def put_file_if_absent(self, rel: str, local_path: str) -> str | None: ...
    # (SHA-256 of a stored file, a version token for delete_file_if_version), None when absent.
    def file_version(self, rel: str) -> tuple[str, str] | None: ...
    # Delete a stored file only while it is still that version; False when it is not.
    def delete_file_if_version(self, rel: str, version: str) -> bool: ...


class S3RunStore:
    def __init__(self, client: Any, prefix: storage.S3Uri) -> None:
        self.client = client
        self.prefix = prefix

    def uri(self, rel: str = "") -> str:
        return str(self.prefix.child(rel)) if rel else str(self.prefix)

    def put_bytes(self, rel: str, data: bytes, *, if_none_match: bool = False) -> bool:
        return storage.put_bytes(self.client, self.prefix.child(rel), data, if_none_match=if_none_match)

    def read_bytes(self, rel: str) -> bytes:
        return storage.read_bytes(self.client, self.prefix.child(rel))

    def exists(self, rel: str) -> bool:
        return storage.exists(self.client, self.prefix.child(rel))

    def upload_dir(self, rel: str, local_dir: str) -> dict[str, str]:
        return storage.upload_dir(self.client, local_dir, self.prefix.child(rel.rstrip("/") + "/"))

    def download_dir(self, rel: str, local_dir: str) -> None:
        storage.download_prefix(self.client, self.prefix.child(rel), local_dir)

    def list_dirs(self, rel: str) -> list[str]:
        base = self.prefix.child(rel.rstrip("/") + "/")
        return [p[len(base.key) :].rstrip("/") for p in storage.list_prefixes(self.client, base)]

    def list_files(self, rel: str) -> list[str]:
        """Names of the objects directly under `rel` (not in its sub-directories)."""
        base = self.prefix.child(rel.rstrip("/") + "/")
        names = (o["Key"][len(base.key) :] for o in storage.list_keys(self.client, base))
        return sorted(n for n in names if n and "/" not in n)

    def delete_dir(self, rel: str) -> None:
        storage.delete_prefix(self.client, self.prefix.child(rel.rstrip("/") + "/"))

    def put_file_if_absent(self, rel: str, local_path: str) -> str | None:
        return storage.upload_file_verified(self.client, local_path, self.prefix.child(rel), if_none_match=True)

    def file_version(self, rel: str) -> tuple[str, str] | None:
        return storage.object_sha256(self.client, self.prefix.child(rel))

    def delete_file_if_version(self, rel: str, version: str) -> bool:
        return storage.delete_if_match(self.client, self.prefix.child(rel), version)


class LocalRunStore:
    """The same layout in a local directory, for laptop runs with a local output_uri."""

    def __init__(self, root: str) -> None:
        self.root = root

    def _p(self, rel: str) -> str:
        return os.path.join(self.root, rel)

    def uri(self, rel: str = "") -> str:
        return self._p(rel)

    def put_bytes(self, rel: str, data: bytes, *, if_none_match: bool = False) -> bool:
        path = self._p(rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            with open(path, "xb" if if_none_match else "wb") as f:
                f.write(data)
        except FileExistsError:
            return False
        return True

    def read_bytes(self, rel: str) -> bytes:
        with open(self._p(rel), "rb") as f:
            return f.read()

    def exists(self, rel: str) -> bool:
        return os.path.exists(self._p(rel))

    def upload_dir(self, rel: str, local_dir: str) -> dict[str, str]:
        dest = self._p(rel)
        out: dict[str, str] = {}
        for root, _dirs, names in os.walk(local_dir):
            for name in names:
                src = os.path.join(root, name)
                r = os.path.relpath(src, local_dir)
                os.makedirs(os.path.dirname(os.path.join(dest, r)), exist_ok=True)
                shutil.copyfile(src, os.path.join(dest, r))
                digest = storage.sha256_path(os.path.join(dest, r))
                if digest != storage.sha256_path(src):
                    raise OSError(f"copy of {src} does not match")
                out[r] = digest
        return out

    def download_dir(self, rel: str, local_dir: str) -> None:
        shutil.copytree(self._p(rel), local_dir, dirs_exist_ok=True)

    def list_dirs(self, rel: str) -> list[str]:
        path = self._p(rel)
        if not os.path.isdir(path):
            return []
        return sorted(n for n in os.listdir(path) if os.path.isdir(os.path.join(path, n)))

    def list_files(self, rel: str) -> list[str]:
        path = self._p(rel)
        if not os.path.isdir(path):
            return []
        return sorted(n for n in os.listdir(path) if os.path.isfile(os.path.join(path, n)))

    def delete_dir(self, rel: str) -> None:
        shutil.rmtree(self._p(rel), ignore_errors=True)

    # Laptop runs have one writer; these keep the interface (the checks are not atomic here).
    def put_file_if_absent(self, rel: str, local_path: str) -> str | None:
        dest = self._p(rel)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        try:
            with open(local_path, "rb") as src, open(dest, "xb") as out:
                shutil.copyfileobj(src, out)
        except FileExistsError:
            return None
        digest = storage.sha256_path(dest)
        if digest != storage.sha256_path(local_path):
            raise OSError(f"copy of {local_path} does not match")
        return digest

    def file_version(self, rel: str) -> tuple[str, str] | None:
        path = self._p(rel)
        if not os.path.isfile(path):
            return None
        digest = storage.sha256_path(path)
        return digest, digest

    def delete_file_if_version(self, rel: str, version: str) -> bool:
        found = self.file_version(rel)
        if found is None or found[1] != version:
            return False
        os.remove(self._p(rel))
        return True


def open_run_store(run_prefix: str, client: Any | None) -> RunStore:
    if run_prefix.startswith("s3://"):
        return S3RunStore(client, storage.parse_s3_uri(run_prefix, "output_uri"))
    return LocalRunStore(run_prefix)
