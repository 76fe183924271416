"""The progress channel (contract §4): merge-patch one ConfigMap with the service-account token.

Plain urllib on purpose: the trainer image should not carry the kubernetes client, and the
pod's Role allows only get/patch/update on its own ConfigMap. Outside a cluster, or when no
ConfigMap is configured, progress is only logged.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger("finetune_trainer.progress")

SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


def decimal_str(value: float | None, digits: int = 4) -> str | None:
    """Non-integer numbers travel as decimal strings (as in the status)."""
    if value is None:
        return None
    return f"{value:.{digits}f}".rstrip("0").rstrip(".") if value == value else None


class ProgressReporter:
    """Throttled writer of `progress.json`; phase changes are always written."""

    def __init__(
        self,
        configmap: str,
        namespace: str,
        *,
        interval_seconds: float = 5.0,
        api_url: str | None = None,
        token_path: str = f"{SA_DIR}/token",
        ca_path: str = f"{SA_DIR}/ca.crt",
    ) -> None:
        self.configmap = configmap
        self.namespace = namespace
        self.interval = interval_seconds
        self.token_path = token_path
        self.ca_path = ca_path
        self.api_url = api_url
        if api_url is None and configmap:
            host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
            if host and port and os.path.exists(token_path):
                host = f"[{host}]" if ":" in host else host
                self.api_url = f"https://{host}:{port}"
        if not self.namespace and os.path.exists(f"{SA_DIR}/namespace"):
            with open(f"{SA_DIR}/namespace", encoding="utf-8") as f:
                self.namespace = f.read().strip()
        self.state: dict[str, Any] = {}
        self._last_write = 0.0
        self._last_phase: str | None = None
        self.failures = 0

    @property
    def enabled(self) -> bool:
        return bool(self.configmap and self.api_url and self.namespace)

    def update(self, force: bool = False, **fields: Any) -> bool:
        """Merge fields into the progress document; write it if due. Returns True when written."""
        self.state.update({k: v for k, v in fields.items() if v is not None})
        phase = self.state.get("phase")
        now = time.monotonic()
        due = force or phase != self._last_phase or now - self._last_write >= self.interval
        if not due:
            return False
        self._last_phase = phase
        self._last_write = now
        self.state["updatedAt"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        log.info("progress %s", json.dumps(self.state, sort_keys=True))
        if not self.enabled:
            return False
        return self._patch()

    def _patch(self) -> bool:
        body = json.dumps({"data": {"progress.json": json.dumps(self.state, sort_keys=True)}}).encode()
        url = f"{self.api_url}/api/v1/namespaces/{self.namespace}/configmaps/{self.configmap}"
        req = urllib.request.Request(url, data=body, method="PATCH")
        req.add_header("Content-Type", "application/merge-patch+json")
        req.add_header("Accept", "application/json")
        try:
            # The token rotates (bound service-account tokens): read it on every write.
            with open(self.token_path, encoding="utf-8") as f:
                req.add_header("Authorization", f"Bearer {f.read().strip()}")
        except OSError:
            pass
        context = None
        if url.startswith("https://"):
            context = ssl.create_default_context(cafile=self.ca_path if os.path.exists(self.ca_path) else None)
        try:
            with urllib.request.urlopen(req, timeout=5, context=context) as resp:  # noqa: S310 - in-cluster API URL
                resp.read()
            return True
        except (urllib.error.URLError, OSError) as e:
            # Progress is best effort: a failed write must never fail the training.
            self.failures += 1
            log.warning("progress write to ConfigMap %s failed: %s", self.configmap, e)
            return False
