"""What a kubelet materialises for a pod before starting it: volume contents and environment.

Volumes are written once under the pod's directory and bind-mounted by :mod:`podexec`.
ConfigMap and Secret updates after the start are not propagated (the tests never need it).
"""

from __future__ import annotations

import base64
import math
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException
from kubernetes.utils import parse_quantity

SA_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"


class NotReadyError(Exception):
    """Something the pod needs is missing (yet): the container waits with ``reason``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


Obj = dict[str, Any]


def field_value(pod: Obj, path: str) -> str:
    """A downward-API ``fieldRef.fieldPath`` of ``pod`` (camelCase dict form)."""
    meta, spec, status = pod["metadata"], pod["spec"], pod.get("status") or {}
    m = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if m:
        return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
    simple = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.hostIP": status.get("hostIP", "127.0.0.1"),
        "status.podIP": status.get("podIP", "127.0.0.1"),
        "status.hostIPs": status.get("hostIP", "127.0.0.1"),
        "status.podIPs": status.get("podIP", "127.0.0.1"),
    }
    if path in simple:
        return str(simple[path] or "")
    if path in ("metadata.labels", "metadata.annotations"):
        items = meta.get(path.split(".")[1]) or {}
        return "\n".join(f'{k}="{v}"' for k, v in sorted(items.items()))
    raise NotReadyError("CreateContainerConfigError", f"unsupported fieldPath {path!r}")


def resource_value(pod: Obj, ref: Obj, default_container: str | None) -> str:
    """A ``resourceFieldRef``: limits.cpu/memory or requests.cpu/memory with a divisor."""
    cname = ref.get("containerName") or default_container
    container = next((c for c in pod["spec"]["containers"] if c["name"] == cname), None)
    if container is None:
        raise NotReadyError("CreateContainerConfigError", f"resourceFieldRef: no container {cname!r}")
    kind, _, res = ref["resource"].partition(".")
    value = ((container.get("resources") or {}).get(kind) or {}).get(res)
    divisor = parse_quantity(ref.get("divisor") or "1")
    if value is None:
        # The kubelet reports node allocatable for a missing limit; a large number will do.
        return "0" if kind == "requests" else str(2**40 if res == "memory" else 8)
    return str(math.ceil(parse_quantity(value) / divisor))


class PodFiles:
    """Reads the objects a pod refers to and writes its volumes."""

    def __init__(self, api: client.ApiClient, ca_crt: Path) -> None:
        self.core = client.CoreV1Api(api)
        self.api = api
        self.ca_crt = ca_crt

    def _configmap(self, ns: str, name: str, optional: bool) -> dict[str, bytes] | None:
        try:
            cm = self.core.read_namespaced_config_map(name, ns)
        except ApiException as e:
            if e.status == 404:
                if optional:
                    return None
                raise NotReadyError("CreateContainerConfigError", f'configmap "{name}" not found') from None
            raise
        data = {k: v.encode() for k, v in (cm.data or {}).items()}
        data.update({k: base64.b64decode(v) for k, v in (cm.binary_data or {}).items()})
        return data

    def _secret(self, ns: str, name: str, optional: bool) -> dict[str, bytes] | None:
        try:
            s = self.core.read_namespaced_secret(name, ns)
        except ApiException as e:
            if e.status == 404:
                if optional:
                    return None
                raise NotReadyError("CreateContainerConfigError", f'secret "{name}" not found') from None
            raise
        data = {k: base64.b64decode(v) for k, v in (s.data or {}).items()}
        data.update({k: v.encode() for k, v in (s.string_data or {}).items()})
        return data

    # --- environment -------------------------------------------------------------------

    def env(self, pod: Obj, container: Obj, base: dict[str, str]) -> dict[str, str]:
        """The container's environment: ``base``, then envFrom, then env (with $(VAR) expansion)."""
        ns = pod["metadata"]["namespace"]
        env = dict(base)
        for src in container.get("envFrom") or []:
            prefix = src.get("prefix", "")
            if "configMapRef" in src:
                ref = src["configMapRef"]
                data = self._configmap(ns, ref["name"], bool(ref.get("optional")))
            else:
                ref = src["secretRef"]
                data = self._secret(ns, ref["name"], bool(ref.get("optional")))
            for k, v in (data or {}).items():
                env[prefix + k] = v.decode(errors="replace")
        for e in container.get("env") or []:
            name = e["name"]
            if "valueFrom" not in e:
                env[name] = expand(e.get("value", ""), env)
                continue
            vf = e["valueFrom"]
            if "fieldRef" in vf:
                env[name] = field_value(pod, vf["fieldRef"]["fieldPath"])
            elif "resourceFieldRef" in vf:
                env[name] = resource_value(pod, vf["resourceFieldRef"], container["name"])
            elif "secretKeyRef" in vf or "configMapKeyRef" in vf:
                is_secret = "secretKeyRef" in vf
                ref = vf["secretKeyRef" if is_secret else "configMapKeyRef"]
                optional = bool(ref.get("optional"))
                data = (self._secret if is_secret else self._configmap)(ns, ref["name"], optional)
                kind = "secret" if is_secret else "configmap"
                if data is None or ref["key"] not in data:
                    if optional:
                        continue
                    raise NotReadyError(
                        "CreateContainerConfigError",
                        f"couldn't find key {ref['key']} in {kind.capitalize()} {ns}/{ref['name']}",
                    )
                env[name] = data[ref["key"]].decode(errors="replace")
        return env

    # --- volumes -----------------------------------------------------------------------

    def _write(self, root: Path, rel: str, data: bytes, mode: int | None) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename, so a reader never sees a half-written file (a rotated token).
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(data)
        tmp.chmod(mode if mode is not None else 0o644)
        os.replace(tmp, path)

    def refresh_tokens(self, pod: Obj, pod_dir: Path) -> float:
        """Rewrite every projected service-account token; return seconds until the next refresh.

        The kubelet rotates a token at 80 % of its lifetime; so does this.
        """
        lifetimes = []
        for vol in pod["spec"].get("volumes") or []:
            for src in (vol.get("projected") or {}).get("sources") or []:
                t = src.get("serviceAccountToken")
                if t:
                    root = pod_dir / "volumes" / vol["name"]
                    self._write(root, t["path"], self._token(pod, t), vol["projected"].get("defaultMode"))
                    lifetimes.append(int(t.get("expirationSeconds") or 3600))
        return 0.8 * min(lifetimes) if lifetimes else float("inf")

    def _write_items(self, root: Path, data: dict[str, bytes], items: list[Obj] | None,
                     default_mode: int | None, what: str, optional: bool) -> None:
        if items:
            for it in items:
                if it["key"] not in data:
                    if optional:
                        continue
                    raise NotReadyError("CreateContainerConfigError", f"{what}: no key {it['key']!r}")
                self._write(root, it["path"], data[it["key"]], it.get("mode", default_mode))
        else:
            for k, v in data.items():
                self._write(root, k, v, default_mode)

    def _token(self, pod: Obj, src: Obj) -> bytes:
        meta = pod["metadata"]
        spec: Obj = {
            "expirationSeconds": int(src.get("expirationSeconds") or 3600),
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "uid": meta["uid"]},
        }
        if src.get("audience"):
            spec["audiences"] = [src["audience"]]
        sa = pod["spec"].get("serviceAccountName") or "default"
        try:
            resp = self.core.create_namespaced_service_account_token(
                sa, meta["namespace"], {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
            )
        except ApiException as e:
            raise NotReadyError("CreateContainerConfigError", f"token request for serviceaccount {sa}: {e.reason}") from None
        return str(resp.status.token).encode()

    def volumes(self, pod: Obj, pod_dir: Path) -> dict[str, Path]:
        """Write every volume under ``pod_dir/volumes``; return volume name → host path."""
        ns = pod["metadata"]["namespace"]
        out: dict[str, Path] = {}
        for vol in pod["spec"].get("volumes") or []:
            name = vol["name"]
            root = pod_dir / "volumes" / name
            if "hostPath" in vol:
                hp = Path(vol["hostPath"]["path"])
                if vol["hostPath"].get("type") in ("DirectoryOrCreate", None, "") and not hp.exists():
                    hp.mkdir(parents=True, exist_ok=True)
                out[name] = hp
                continue
            if "emptyDir" in vol:
                root.mkdir(parents=True, exist_ok=True)
                if (vol["emptyDir"] or {}).get("medium") == "Memory" and not os.path.ismount(root):
                    size = (vol["emptyDir"] or {}).get("sizeLimit")
                    opts = f"size={int(parse_quantity(size))}" if size else "size=50%"
                    subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(root)], check=True)
                out[name] = root
                continue
            # Content volumes are rewritten from scratch so a retry after an error starts clean.
            if root.exists() and not os.path.ismount(root):
                shutil.rmtree(root)
            root.mkdir(parents=True, exist_ok=True)
            if "configMap" in vol:
                v = vol["configMap"]
                data = self._configmap(ns, v["name"], bool(v.get("optional")))
                self._write_items(root, data or {}, v.get("items"), v.get("defaultMode"),
                                  f"configmap {v['name']}", bool(v.get("optional")))
            elif "secret" in vol:
                v = vol["secret"]
                data = self._secret(ns, v["secretName"], bool(v.get("optional")))
                self._write_items(root, data or {}, v.get("items"), v.get("defaultMode"),
                                  f"secret {v['secretName']}", bool(v.get("optional")))
            elif "downwardAPI" in vol:
                self._downward(pod, root, vol["downwardAPI"].get("items") or [], vol["downwardAPI"].get("defaultMode"))
            elif "projected" in vol:
                p = vol["projected"]
                mode = p.get("defaultMode")
                for src in p.get("sources") or []:
                    if "serviceAccountToken" in src:
                        t = src["serviceAccountToken"]
                        self._write(root, t["path"], self._token(pod, t), mode)
                    elif "configMap" in src:
                        v = src["configMap"]
                        data = self._configmap(ns, v["name"], bool(v.get("optional")))
                        self._write_items(root, data or {}, v.get("items"), mode, f"configmap {v['name']}", bool(v.get("optional")))
                    elif "secret" in src:
                        v = src["secret"]
                        data = self._secret(ns, v["name"], bool(v.get("optional")))
                        self._write_items(root, data or {}, v.get("items"), mode, f"secret {v['name']}", bool(v.get("optional")))
                    elif "downwardAPI" in src:
                        self._downward(pod, root, src["downwardAPI"].get("items") or [], mode)
                    else:
                        raise NotReadyError("CreateContainerConfigError", f"volume {name}: unsupported projected source {sorted(src)}")
            else:
                kinds = sorted(k for k in vol if k != "name")
                raise NotReadyError("CreateContainerConfigError", f"volume {name}: unsupported volume type {kinds} on localcluster")
            out[name] = root
        return out

    def _downward(self, pod: Obj, root: Path, items: list[Obj], mode: int | None) -> None:
        for it in items:
            if "fieldRef" in it:
                value = field_value(pod, it["fieldRef"]["fieldPath"])
            else:
                value = resource_value(pod, it["resourceFieldRef"], None)
            self._write(root, it["path"], value.encode(), it.get("mode", mode))


def mounts(container: Obj, volumes: dict[str, Path]) -> list[dict[str, Any]]:
    """Bind mounts (source, target, readOnly) for the container's volumeMounts."""
    out = []
    for vm in container.get("volumeMounts") or []:
        src = volumes.get(vm["name"])
        if src is None:
            raise NotReadyError("CreateContainerConfigError", f"volumeMount {vm['name']!r}: no such volume")
        if vm.get("subPath"):
            src = src / vm["subPath"]
            if not src.exists():
                src.mkdir(parents=True)
        out.append({"source": str(src), "target": vm["mountPath"], "readOnly": bool(vm.get("readOnly"))})
    return out


_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: known variables are replaced, $$ escapes, others stay."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _VAR.sub(sub, text)
