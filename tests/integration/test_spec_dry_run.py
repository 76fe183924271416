"""Generated FineTuneJob specs through the real API server (server-side dry run, strict field
validation, the CRD's schema and CEL rules), the pydantic models and the ``estimate`` command:
the three agree on accept/refuse for every generated spec, and the API server's refusals name the field.
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from kubernetes import client
from kubernetes.client.rest import ApiException
from spec_strategies import BOUNDED, estimate_schema_refusal, specs

from finetune_operator import api, estimate_cli
from localcluster.pytest_plugin import Kubectl

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "crds" / "finetunejobs.finetune.dev.yaml"


@pytest.fixture(scope="module")
def crd(kubectl: Kubectl) -> str:
    kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=test-spec-dry-run", "-f", str(CRD))
    kubectl("wait", "--for=condition=Established", f"crd/{api.CRD_NAME}", "--timeout=60s")
    return api.CRD_NAME


def _server_verdict(objects: client.CustomObjectsApi, namespace: str, spec: dict[str, Any]) -> tuple[bool, str]:
    body = {"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": {"name": "dry"}, "spec": spec}
    try:
        objects.create_namespaced_custom_object(
            api.GROUP, api.VERSION, namespace, api.PLURAL, body, dry_run="All", field_validation="Strict",
        )
    except ApiException as exc:
        if exc.status not in (400, 422):
            raise
        return False, json.loads(exc.body).get("message", "")
    return True, ""


def _estimate_accepts(spec: dict[str, Any]) -> bool:
    """The estimate command's schema verdict (a refusal that needs the model is not a schema refusal)."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "job.json"
        path.write_text(json.dumps({"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": {"name": "dry"}, "spec": spec}))
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
            status = estimate_cli.main([str(path)])
    return not estimate_schema_refusal(status, json.loads(out.getvalue()))


def test_api_server_models_and_estimate_agree(crd: str, k8s_api: client.ApiClient, namespace: str) -> None:
    objects = client.CustomObjectsApi(k8s_api)

    # a dry run creates nothing, so one namespace serves every example
    @settings(BOUNDED, max_examples=150, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(specs())
    def check(spec: dict[str, Any]) -> None:
        server_accepts, server_message = _server_verdict(objects, namespace, spec)
        errors = api.spec_errors(spec)
        assert server_accepts == (not errors), f"API server: {server_message or 'accepted'}; models: {errors or 'accepted'}"
        assert _estimate_accepts(spec) == server_accepts
        if not server_accepts:
            assert "spec." in server_message, server_message

    check()
