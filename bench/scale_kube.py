"""A small asyncio Kubernetes client for the scale bench's simulator and observer.

The bench plays a thousand trainers and watches every child object on a shared 2-core machine,
so its own cost must stay small next to the operator's: plain JSON over one aiohttp session
(kopf's own HTTP library), no typed models. List-then-watch with resume and relist on 410.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from kubernetes import client, config

Obj = dict[str, Any]


class KubeError(Exception):
    """An API call failed; ``status`` is the HTTP status."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"{status}: {text[:300]}")
        self.status = status


class Kube:
    """JSON requests and watches against one API server with one kubeconfig's credentials."""

    def __init__(self, kubeconfig: Path, connections: int = 16) -> None:
        cfg = client.Configuration()
        config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
        self.host = cfg.host.rstrip("/")
        ctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert)
        if cfg.cert_file:
            ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
        self.headers = {"Accept": "application/json"}
        token = (cfg.api_key or {}).get("authorization") or (cfg.api_key or {}).get("BearerToken")
        if token:
            self.headers["Authorization"] = token if token.startswith("Bearer ") else f"Bearer {token}"
        self._ssl = ctx
        self._connections = connections
        self.session: aiohttp.ClientSession | None = None
        self.requests = 0

    async def __aenter__(self) -> Kube:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self._ssl, limit=self._connections),
            headers=self.headers, timeout=aiohttp.ClientTimeout(total=None, sock_connect=30))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.session:
            await self.session.close()

    async def request(self, method: str, path: str, body: Any = None, *, params: dict[str, str] | None = None,
                      content_type: str = "application/json", timeout: float = 60) -> Obj:
        """One call; the decoded body, or KubeError."""
        assert self.session is not None
        self.requests += 1
        data = json.dumps(body) if body is not None else None
        async with self.session.request(method, self.host + path, data=data, params=params,
                                        headers={"Content-Type": content_type},
                                        timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            text = await resp.text()
            if resp.status >= 400:
                raise KubeError(resp.status, text)
            return json.loads(text) if text else {}

    async def merge_patch(self, path: str, patch: Obj) -> Obj:
        return await self.request("PATCH", path, patch, content_type="application/merge-patch+json")

    async def watch(self, path: str, on_event: Callable[[str, Obj], Awaitable[None] | None],
                    label_selector: str = "", stop: asyncio.Event | None = None) -> None:
        """List, then watch ``path`` until ``stop``; ``on_event(type, obj)`` sees every change.

        Listed objects arrive as ``ADDED`` (again after a relist, which the caller must tolerate).
        """
        assert self.session is not None
        stop = stop or asyncio.Event()
        rv = ""
        while not stop.is_set():
            try:
                if not rv:
                    params = {"labelSelector": label_selector} if label_selector else {}
                    listed = await self.request("GET", path, params=params)
                    rv = listed["metadata"]["resourceVersion"]
                    for item in listed.get("items") or []:
                        result = on_event("ADDED", item)
                        if asyncio.iscoroutine(result):
                            await result
                params = {"watch": "1", "resourceVersion": rv, "allowWatchBookmarks": "true",
                          "timeoutSeconds": "240"}
                if label_selector:
                    params["labelSelector"] = label_selector
                async with self.session.get(self.host + path, params=params,
                                            timeout=aiohttp.ClientTimeout(total=300, sock_read=300)) as resp:
                    if resp.status == 410:
                        rv = ""
                        continue
                    if resp.status >= 400:
                        raise KubeError(resp.status, await resp.text())
                    async for line in _lines(resp, stop):
                        ev = json.loads(line)
                        obj = ev.get("object") or {}
                        if ev.get("type") == "ERROR":
                            if obj.get("code") == 410:
                                rv = ""
                            break
                        rv = (obj.get("metadata") or {}).get("resourceVersion") or rv
                        if ev.get("type") == "BOOKMARK":
                            continue
                        result = on_event(str(ev.get("type")), obj)
                        if asyncio.iscoroutine(result):
                            await result
            except (aiohttp.ClientError, asyncio.TimeoutError, KubeError, ConnectionError) as exc:
                if stop.is_set():
                    return
                if isinstance(exc, KubeError) and exc.status in (401, 403, 404):
                    raise
                await asyncio.sleep(1)


async def _lines(resp: aiohttp.ClientResponse, stop: asyncio.Event) -> Any:
    buf = b""
    while not stop.is_set():
        try:
            chunk = await asyncio.wait_for(resp.content.readany(), timeout=1.0)
        except asyncio.TimeoutError:
            continue
        if not chunk:
            return
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            if line.strip():
                yield line


def now_rfc3339() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
