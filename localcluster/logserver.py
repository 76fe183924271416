"""The kubelet's ``containerLogs`` endpoint, so ``kubectl logs`` works on simulated nodes.

The API server proxies ``pods/log`` to ``https://<node InternalIP>:<kubeletEndpoint port>``
with its kubelet client certificate. Every simulated node has InternalIP 127.0.0.1 and the
same port, so one small HTTPS server answers for the whole fleet from the pod runner's logs.
"""

from __future__ import annotations

import http.server
import ssl
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Callable

from localcluster.pki import Pki

# (namespace, pod, container) -> is that container still running?
IsRunning = Callable[[str, str, str], bool]


def _log_file(pods_dir: Path, ns: str, pod: str, container: str) -> Path | None:
    # Several pods may have had this name (different uids); the newest one is meant.
    # Names and namespaces never contain "_", so the glob cannot match another pod.
    candidates = [d / f"{container}.log" for d in pods_dir.glob(f"{ns}_{pod}_*") if (d / f"{container}.log").exists()]
    return max(candidates, key=lambda p: p.stat().st_mtime) if candidates else None


class _Handler(http.server.BaseHTTPRequestHandler):
    server: "LogServer"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        url = urllib.parse.urlsplit(self.path)
        parts = url.path.strip("/").split("/")
        if len(parts) != 4 or parts[0] != "containerLogs":
            self.send_error(404, "only /containerLogs/<namespace>/<pod>/<container> is served")
            return
        _, ns, pod, container = parts
        q = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query).items()}
        path = _log_file(self.server.pods_dir, ns, pod, container)
        if path is None:
            self.send_error(404, f"no logs for container {container} of pod {ns}/{pod}")
            return
        data = path.read_bytes()
        if "tailLines" in q:
            lines = data.splitlines(keepends=True)
            data = b"".join(lines[-int(q["tailLines"]):]) if int(q["tailLines"]) > 0 else b""
        if "limitBytes" in q:
            data = data[: int(q["limitBytes"])]
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self._chunk(data)
        if q.get("follow") == "true":
            offset = path.stat().st_size
            while True:
                running = self.server.is_running(ns, pod, container)
                size = path.stat().st_size
                if size > offset:
                    with open(path, "rb") as f:
                        f.seek(offset)
                        self._chunk(f.read(size - offset))
                    offset = size
                elif not running:
                    break
                time.sleep(0.2)
        self.wfile.write(b"0\r\n\r\n")

    def _chunk(self, data: bytes) -> None:
        if data:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()


class LogServer(http.server.ThreadingHTTPServer):
    """HTTPS on 127.0.0.1 with a CA-signed serving cert; clients must present a CA-signed cert."""

    daemon_threads = True

    def __init__(self, pki: Pki, pods_dir: Path, is_running: IsRunning, port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.pods_dir = pods_dir
        self.is_running = is_running
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(pki.path("kubelet.crt")), str(pki.path("kubelet.key")))
        ctx.load_verify_locations(str(pki.ca_crt))
        ctx.verify_mode = ssl.CERT_REQUIRED
        # The handshake happens in the handler thread, not in the accept loop.
        self.socket = ctx.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def start(self) -> None:
        threading.Thread(target=self.serve_forever, name="kubelet-logs", daemon=True).start()
