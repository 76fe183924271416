"""The trainer's --config file of a pod object, resolved the way the kubelet fills its volumes.

Follows the container's arguments to the mount of that directory, the mount to its volume, the
volume's downward-API item for the file name, and the item to the pod annotation it names; so a
test reads what the trainer would read, not a field it assumes holds it.
"""

from __future__ import annotations

import re
from typing import Any

_ANNOTATION = re.compile(r"metadata\.annotations\['(.+)'\]")


def mounted_config(meta: dict[str, Any], pod_spec: dict[str, Any]) -> tuple[str, str]:
    """(file name, file text) of the file the first container's `--config` names."""
    container = pod_spec["containers"][0]
    path = container["args"][container["args"].index("--config") + 1]
    directory, filename = path.rsplit("/", 1)
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == directory)
    volume = next(v for v in pod_spec["volumes"] if v["name"] == mount["name"])
    item = next(i for i in volume["downwardAPI"]["items"] if i["path"] == filename)
    match = _ANNOTATION.fullmatch(item["fieldRef"]["fieldPath"])
    assert match, f"the config file comes from {item['fieldRef']['fieldPath']}, not an annotation"
    return filename, str(meta["annotations"][match.group(1)])
