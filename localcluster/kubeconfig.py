"""Writing kubeconfig files (self-contained: certificates embedded, no paths to the PKI)."""

from __future__ import annotations

import base64
from pathlib import Path

import yaml


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def write_kubeconfig(
    path: Path,
    *,
    server: str,
    ca_crt: Path,
    user: str,
    client_crt: Path | None = None,
    client_key: Path | None = None,
    token: str | None = None,
    namespace: str | None = None,
    cluster_name: str = "localcluster",
) -> Path:
    """Write a kubeconfig with one cluster, one user and one current context."""
    creds: dict[str, str] = {}
    if client_crt and client_key:
        creds["client-certificate-data"] = _b64(client_crt)
        creds["client-key-data"] = _b64(client_key)
    if token:
        creds["token"] = token
    context: dict[str, str] = {"cluster": cluster_name, "user": user}
    if namespace:
        context["namespace"] = namespace
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": cluster_name,
                "cluster": {"server": server, "certificate-authority-data": _b64(ca_crt)},
            }
        ],
        "users": [{"name": user, "user": creds}],
        "contexts": [{"name": f"{user}@{cluster_name}", "context": context}],
        "current-context": f"{user}@{cluster_name}",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    path.chmod(0o600)
    return path
