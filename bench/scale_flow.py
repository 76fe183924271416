"""Counting the operator's API requests apart from everyone else's, by verb and resource.

kube-apiserver's ``apiserver_flowcontrol_dispatched_requests_total`` is labelled by
``flow_schema`` and ``priority_level`` only (no verb, no resource, no user). So the operator's
ServiceAccount gets its own PriorityLevelConfiguration and *one FlowSchema per verb × resource
its ClusterRole allows* (plus one catch-all for anything else it sends: discovery, namespaces):
the per-schema counters are then the operator's requests by verb and resource, with no audit
log and no restart of the API server. The schemas take precedence over every built-in one that
could match a ServiceAccount (``service-accounts`` is 9000, ``workload-leader-election`` 200)
and the priority level is generous enough never to queue the operator (rejections are read too).
"""

from __future__ import annotations

import re
import ssl
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

PREFIX = "fto-bench-"
PRIORITY_LEVEL = "fto-bench-operator"
OTHER = "other"
_METRIC = re.compile(r'^apiserver_flowcontrol_(dispatched|rejected)_requests_total\{([^}]*)\}\s+([0-9.eE+]+)$')


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")


def rules_from_clusterrole(path: Path) -> list[tuple[str, str, str]]:
    """(apiGroup, resource, verb) triples the ClusterRole file grants."""
    out = []
    for doc in yaml.safe_load_all(path.read_text()):
        if not doc or doc.get("kind") != "ClusterRole":
            continue
        for rule in doc.get("rules") or []:
            for group in rule.get("apiGroups") or [""]:
                for resource in rule.get("resources") or []:
                    for verb in rule.get("verbs") or []:
                        out.append((group, resource, verb))
    return sorted(set(out))


def schema_name(group: str, resource: str, verb: str) -> str:
    return f"{PREFIX}{_slug(verb)}-{_slug(resource)}" + (f"-{_slug(group)}" if group else "")


def label_of(name: str, table: dict[str, str]) -> str:
    """'verb resource' of a schema name (``other`` for the catch-all)."""
    return table.get(name, OTHER)


def install(api: client.ApiClient, sa_namespace: str, sa_name: str, clusterrole: Path) -> dict[str, str]:
    """Create the priority level and schemas for one ServiceAccount; schema name → 'verb resource'."""
    fc = client.FlowcontrolApiserverV1Api(api)
    level = {
        "apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "PriorityLevelConfiguration",
        "metadata": {"name": PRIORITY_LEVEL},
        "spec": {"type": "Limited", "limited": {
            "nominalConcurrencyShares": 100, "lendablePercent": 0,
            "limitResponse": {"type": "Queue", "queuing": {"queues": 64, "handSize": 6, "queueLengthLimit": 200}}}},
    }
    _create(lambda: fc.create_priority_level_configuration(level))
    subject = [{"kind": "ServiceAccount", "serviceAccount": {"name": sa_name, "namespace": sa_namespace}}]
    table: dict[str, str] = {}
    for group, resource, verb in rules_from_clusterrole(clusterrole):
        name = schema_name(group, resource, verb)
        table[name] = f"{verb} {resource}" + (f".{group}" if group and group not in ("finetune.dev",) else "")
        body = _schema(name, 500, subject, {"resourceRules": [{
            "verbs": [verb], "apiGroups": [group], "resources": [resource], "clusterScope": True, "namespaces": ["*"]}]})
        _create(lambda b=body: fc.create_flow_schema(b))
    catch_all = _schema(PREFIX + OTHER, 501, subject, {
        "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"], "clusterScope": True,
                           "namespaces": ["*"]}],
        "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}]})
    _create(lambda: fc.create_flow_schema(catch_all))
    return table


def _schema(name: str, precedence: int, subjects: list[dict[str, Any]], rule: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "FlowSchema", "metadata": {"name": name},
            "spec": {"priorityLevelConfiguration": {"name": PRIORITY_LEVEL}, "matchingPrecedence": precedence,
                     "distinguisherMethod": {"type": "ByUser"}, "rules": [{"subjects": subjects, **rule}]}}


def _create(fn: Any) -> None:
    try:
        fn()
    except ApiException as exc:
        if exc.status != 409:
            raise


def uninstall(api: client.ApiClient) -> None:
    fc = client.FlowcontrolApiserverV1Api(api)
    for fs in fc.list_flow_schema().items:
        if fs.metadata.name.startswith(PREFIX):
            fc.delete_flow_schema(fs.metadata.name)
    try:
        fc.delete_priority_level_configuration(PRIORITY_LEVEL)
    except ApiException as exc:
        if exc.status != 404:
            raise


class ApiserverMetrics:
    """Scrapes kube-apiserver's /metrics with the admin client certificate."""

    def __init__(self, api: client.ApiClient) -> None:
        cfg = api.configuration
        self.url = cfg.host.rstrip("/") + "/metrics"
        self.ctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert)
        if cfg.cert_file:
            self.ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
        self.headers = {}
        token = (cfg.api_key or {}).get("authorization") or (cfg.api_key or {}).get("BearerToken")
        if token:
            self.headers["Authorization"] = token

    def text(self) -> str:
        req = urllib.request.Request(self.url, headers=self.headers)
        with urllib.request.urlopen(req, context=self.ctx, timeout=30) as resp:
            return resp.read().decode()

    def operator_counts(self) -> tuple[dict[str, float], dict[str, float]]:
        """(dispatched, rejected) requests per schema name of this module."""
        dispatched: dict[str, float] = {}
        rejected: dict[str, float] = {}
        for line in self.text().splitlines():
            if not line.startswith("apiserver_flowcontrol_"):
                continue
            m = _METRIC.match(line)
            if not m:
                continue
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
            fs = labels.get("flow_schema", "")
            if not fs.startswith(PREFIX):
                continue
            target = dispatched if m.group(1) == "dispatched" else rejected
            target[fs] = target.get(fs, 0.0) + float(m.group(3))
        return dispatched, rejected
