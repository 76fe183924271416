"""`finetune-trainer inspect`: architecture and data report, before any GPU is held (CPU only)."""

from __future__ import annotations

import json
import logging
from typing import Any

from .architecture import describe_model, summary_architecture
from .config import Config
from .errors import DataError, ExitCode, write_termination
from .job import masking_report, prepare, zero_weight_messages

log = logging.getLogger("finetune_trainer.inspect")

REPORT_KEY = "reports/inspection.json"


def run_inspection(cfg: Config) -> int:
    """Write the full report to the run prefix and the summary to the termination log."""
    prep = prepare(cfg, meta_only=True)
    arch = describe_model(prep.model.path, bool(cfg.sft.trust_remote_code))
    report = prep.data.report
    zero_weight = sum(zero_weight_messages(ex) for ex in prep.data.train)
    loss = masking_report(report.format, prep.template, cfg.job.train_on_inputs, zero_weight)
    full: dict[str, Any] = {
        "jobUid": cfg.job.job_uid,
        "jobName": cfg.job.job_name,
        "baseModel": {"uri": prep.model.uri, "revision": prep.model.revision, "contentHash": prep.model.content_hash},
        "architecture": arch,
        "chatTemplate": prep.template.to_json(),
        "lossMasking": loss,
        "data": report.to_json(),
        "verdict": "usable" if report.usable else "unusable",
    }
    prep.store.put_bytes(REPORT_KEY, json.dumps(full, indent=2).encode())
    uri = prep.store.uri(REPORT_KEY)
    log.info("inspection report written to %s: %s", uri, full["verdict"])
    summary = {"reportUri": uri, "architecture": summary_architecture(arch), "data": report.summary(),
               "lossMasking": loss}
    if not report.usable:
        raise DataError(_unusable_message(report.fatal, report.errors_total), **summary)
    write_termination(ExitCode.SUCCEEDED, "inspection passed: data usable", **summary)
    return 0


def _unusable_message(fatal: list[str], errors_total: int) -> str:
    parts = list(fatal[:2])
    if errors_total:
        parts.append(f"{errors_total} lines have errors (first ones in data.errors)")
    return "data unusable: " + "; ".join(parts)
