"""Network reach: link-local and cloud metadata endpoints are refused unless allow-listed; the
Hugging Face endpoint and boto3's retries come from the operator's configuration, never the job."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from finetune_operator import builders, cache, reach, reconcile
from finetune_operator.api import FineTuneJobSpec
from finetune_operator.config import OperatorConfig

DNS = {"metadata.evil.example": ["169.254.169.254"], "s3.internal": ["10.2.3.4"], "dual.example": ["10.0.0.1", "fe80::1"],
       "v6meta.example": ["fd00:ec2::254"]}


def fake_resolve(host: str) -> list[str]:
    return DNS.get(host, [])


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://169.254.169.254/latest/", "'169.254.169.254' is a cloud metadata service address"),
        ("http://169.254.10.20:8333", "'169.254.10.20' is a link-local address"),
        ("http://[fd00:ec2::254]/", "'fd00:ec2::254' is a cloud metadata service address"),
        ("http://[fe80::1]:9000", "'fe80::1' is a link-local address"),
        ("http://[::ffff:169.254.169.254]/", "is a cloud metadata service address"),
        ("http://metadata.evil.example:8333", "'metadata.evil.example' is a cloud metadata service address (it resolves to 169.254.169.254)"),
        ("http://dual.example", "is a link-local address (it resolves to 10.0.0.1, fe80::1)"),
        ("https://v6meta.example", "is a cloud metadata service address"),
    ],
)
def test_link_local_and_metadata_endpoints_are_refused_in_words(url: str, says: str) -> None:
    error = reach.endpoint_error("spec.output.endpoint", url, (), fake_resolve)
    assert error is not None and error.startswith("spec.output.endpoint: the host ") and says in error, error
    assert "network.allowedLinkLocalHosts" in error


@pytest.mark.parametrize("url", ["http://10.2.3.4:8333", "http://192.168.1.5", "http://172.16.0.9", "http://127.0.0.1:8333",
                                 "http://s3.internal:8333", "https://s3.us-east-1.amazonaws.com", "http://[fd12::5]:80"])
def test_private_ranges_and_ordinary_hosts_stay_allowed(url: str) -> None:
    assert reach.endpoint_error("spec.output.endpoint", url, (), fake_resolve) is None


def test_an_allow_listed_link_local_host_or_range_is_accepted() -> None:
    assert reach.endpoint_error("f", "http://169.254.10.20:8333", ["169.254.10.0/24"], fake_resolve) is None
    assert reach.endpoint_error("f", "http://metadata.evil.example", ["metadata.evil.example"], fake_resolve) is None
    # a range that covers only some of the host's addresses is not enough
    assert reach.endpoint_error("f", "http://dual.example", ["10.0.0.0/8"], fake_resolve) is not None


def test_the_operator_refuses_a_job_whose_allowed_endpoint_resolves_to_metadata(body: dict[str, Any]) -> None:
    config = OperatorConfig.model_validate({"s3": {"endpoint": "http://s3.internal:8333",
                                                   "allowed_endpoints": ["http://metadata.evil.example:8333"]}})
    body["spec"]["output"]["endpoint"] = "http://metadata.evil.example:8333"
    spec = FineTuneJobSpec.model_validate(body["spec"])
    (error,) = reconcile.policy_errors(spec, config, fake_resolve)
    assert error.startswith("spec.output.endpoint: the host 'metadata.evil.example' is a cloud metadata service address")
    allowed = config.model_copy(update={"network": config.network.model_copy(
        update={"allowed_link_local_hosts": ["169.254.169.254/32"]})})
    assert reconcile.policy_errors(spec, allowed, fake_resolve) == []
    # the operator's own default endpoint is held to the same rule
    del body["spec"]["output"]["endpoint"]
    bad_default = OperatorConfig.model_validate({"s3": {"endpoint": "http://169.254.169.254"}})
    (error,) = reconcile.policy_errors(FineTuneJobSpec.model_validate(body["spec"]), bad_default, fake_resolve)
    assert error.startswith("the operator's s3.endpoint: the host '169.254.169.254'")


def test_names_are_looked_up_before_launch_not_on_every_visit_of_a_running_job(body: dict[str, Any]) -> None:
    config = OperatorConfig.model_validate({"s3": {"endpoint": "http://s3.internal:8333",
                                                   "allowed_endpoints": ["http://metadata.evil.example:8333"]}})
    body["spec"]["output"]["endpoint"] = "http://metadata.evil.example:8333"
    looked_up: list[str] = []

    def resolve(host: str) -> list[str]:
        looked_up.append(host)
        return fake_resolve(host)

    new = reconcile.plan(reconcile.Observed(body=body, resolve=resolve), config).status_data()
    assert new["state"] == "Failed" and new["failure"]["reason"] == "InvalidSpec"
    assert looked_up == ["metadata.evil.example"]
    # the same spec with its training Job running (launched before the name changed its answer)
    job = cache.job_facts({"metadata": {"name": "llama-chat-train", "uid": "j1"}, "spec": {"suspend": False},
                           "status": {"active": 1}})
    body["status"] = {"state": "Running", "attempts": 1, "observedGeneration": 1}
    running = reconcile.plan(reconcile.Observed(body=body, job=job, resolve=resolve), config).status_data()
    assert running["state"] != "Failed", running
    assert looked_up == ["metadata.evil.example"], "a running job's endpoint was looked up again"


def test_hf_endpoint_and_s3_retries_come_from_the_operator_configuration(body: dict[str, Any]) -> None:
    config = OperatorConfig.model_validate({"s3": {"endpoint": "http://s3.local:8333"},
                                            "network": {"hf_endpoint": "https://hf-mirror.internal"},
                                            "s3_retries": {"mode": "adaptive", "max_attempts": 7,
                                                           "connect_timeout_seconds": 3, "read_timeout_seconds": 20}})
    spec = FineTuneJobSpec.model_validate(body["spec"])
    affinity: dict[str, Any] = {}
    resolved = {"loraAlpha": 32, "targetModules": ["q_proj"], "computeDtype": "bf16", "microBatchSize": 1,
                "gradientAccumulation": 1}
    job = builders.training_job(body, spec, config, affinity, resolved)
    env = {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["HF_ENDPOINT"] == "https://hf-mirror.internal"
    cfg = yaml.safe_load(builders.rendered_config(body, spec, config, resolved))
    assert (cfg["s3_retry_mode"], cfg["s3_max_attempts"]) == ("adaptive", 7)
    assert (cfg["s3_connect_timeout_seconds"], cfg["s3_read_timeout_seconds"]) == (3.0, 20.0)
    # without the setting the trainer gets no HF_ENDPOINT at all (huggingface.co), whatever the job says
    plain = builders.training_job(body, spec, OperatorConfig.model_validate({"s3": {"endpoint": "http://s3.local:8333"}}),
                                  affinity, resolved)
    assert "HF_ENDPOINT" not in {e["name"] for e in plain["spec"]["template"]["spec"]["containers"][0]["env"]}

