"""Which hosts a job's pods may be pointed at: link-local and cloud metadata addresses are refused.

A job names an S3 endpoint (``spec.output.endpoint``, or the operator's default). An endpoint whose
host is, or resolves to, a link-local address (169.254.0.0/16 with the cloud metadata service at
169.254.169.254, fe80::/10, AWS's fd00:ec2::254) would let the trainer's S3 client reach the node's
instance credentials; such an endpoint is refused unless the operator's configuration lists its host
in ``network.allowedLinkLocalHosts``. Private ranges (10/8, 172.16/12, 192.168/16, fc00::/7) stay
allowed: in-cluster object stores live there.

Pure except for the resolver, which is passed in: the controller passes ``system_resolver``
(``socket.getaddrinfo``, cached for a minute), pure callers ``no_lookup``.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

Resolver = Callable[[str], Iterable[str]]

# Metadata services outside the link-local ranges (AWS's IPv6 endpoint sits in fd00::/8).
METADATA_ADDRESSES = (ipaddress.ip_address("fd00:ec2::254"),)
LINK_LOCAL = (ipaddress.ip_network("169.254.0.0/16"), ipaddress.ip_network("fe80::/10"))


def no_lookup(host: str) -> list[str]:
    """No name lookups: only hosts written as addresses are checked (pure callers, unit tests)."""
    return []


def system_resolver(host: str) -> list[str]:
    """Every address the host resolves to (empty when it does not resolve); cached for a minute,
    since the operator checks each new job's endpoint before launching it."""
    return list(_resolve_cached(host, int(time.monotonic() // 60)))


@functools.lru_cache(maxsize=256)
def _resolve_cached(host: str, _minute: int) -> tuple[str, ...]:
    try:
        infos: list[Any] = socket.getaddrinfo(host, None)
    except (socket.gaierror, UnicodeError, OSError):
        return ()
    return tuple(sorted({str(info[4][0]).split("%", 1)[0] for info in infos}))


def forbidden(address: str) -> str | None:
    """Why an address may not be reached, in words; None if it may."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip in METADATA_ADDRESSES or str(ip) == "169.254.169.254":
        return "a cloud metadata service address"
    if any(ip in net for net in LINK_LOCAL):
        return "a link-local address"
    return None


def _allowed(host: str, addresses: Iterable[str], allow: Iterable[str]) -> bool:
    entries = [a.strip() for a in allow if a.strip()]
    for entry in entries:
        if entry.lower() == host.lower():
            return True
    nets = []
    for entry in entries:
        try:
            nets.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            continue
    ips = [ipaddress.ip_address(a) for a in addresses]
    return bool(ips) and all(any(ip in net for net in nets if ip.version == net.version) for ip in ips)


def endpoint_error(field: str, url: str, allow: Iterable[str] = (), resolve: Resolver = no_lookup) -> str | None:
    """A refusal naming ``field`` when the URL's host is or resolves to a forbidden address, else None."""
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        return f"{field}: {url!r} is not a URL"
    if not host:
        return f"{field}: {url!r} has no host"
    literal = forbidden(host)
    addresses = [host] if literal else [a for a in resolve(host)]
    reasons = sorted({r for r in (forbidden(a) for a in addresses) if r})
    if not reasons or _allowed(host, addresses, allow):
        return None
    via = "" if literal else f" (it resolves to {', '.join(addresses)})"
    return (
        f"{field}: the host {host!r} is {' and '.join(reasons)}{via}; pods may not reach it, since it can hand out "
        "the node's credentials. Use the object store's own address, or ask the platform team to list the host "
        "in network.allowedLinkLocalHosts"
    )
