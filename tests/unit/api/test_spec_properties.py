"""Generated FineTuneJob specs through the pydantic models and the ``estimate`` command.

Never a traceback; every refusal names a spec field in words; the models and the command agree on
accept/refuse for every generated spec (the API server's side is tests/integration/test_spec_dry_run.py).
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from spec_strategies import BOUNDED, SEMANTIC_REASONS, estimate_schema_refusal, refusal_problems, specs

from finetune_operator import api, estimate_cli


def _estimate(spec: dict[str, Any], directory: Path) -> tuple[int, dict[str, Any], str]:
    """The estimate command in this process (as ``main`` runs it): status, JSON document, stderr."""
    path = directory / "job.json"
    path.write_text(json.dumps({"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": {"name": "p"}, "spec": spec}),
                    encoding="utf-8")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = estimate_cli.main([str(path)])
    return status, json.loads(out.getvalue()), err.getvalue()


@settings(BOUNDED, max_examples=400)
@given(specs())
def test_spec_errors_never_raise_and_name_a_field_in_words(spec: dict[str, Any]) -> None:
    errors = api.spec_errors(spec)
    for line in errors:
        assert not refusal_problems(line), (line, refusal_problems(line))


@settings(BOUNDED, max_examples=300)
@given(specs())
def test_estimate_agrees_with_the_models(spec: dict[str, Any]) -> None:
    errors = api.spec_errors(spec)
    with tempfile.TemporaryDirectory() as d:
        status, doc, stderr = _estimate(spec, Path(d))
    assert status in (estimate_cli.EXIT_FITS, estimate_cli.EXIT_NO_FIT, estimate_cli.EXIT_INVALID)
    assert estimate_schema_refusal(status, doc) == bool(errors), (errors, doc)
    if errors:
        for line in stderr.splitlines():
            assert line.startswith("error: spec"), stderr
            assert not refusal_problems(line.removeprefix("error: ")), line
        return
    # the schema accepts: the command refuses only for what needs the model or the operator's configuration
    if status == estimate_cli.EXIT_INVALID:
        for line in [doc["message"]] if doc.get("reason") in SEMANTIC_REASONS else doc["errors"]:
            assert not refusal_problems(line), line
