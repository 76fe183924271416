"""The scale bench's machinery at toy size: kwok GPU nodes, the trainer simulator, the operator's
own FlowSchemas and every lifecycle check, end to end on a cluster of its own.

The figures are the bench's business (``make bench-scale``); this test only proves that the
pieces work together: kwok nodes become Ready and run pods, the simulator plays inspection and
training through the contract, the operator's requests are counted by verb and resource, and every
job ends Succeeded with one attempt. kwok is built (cached) on first use; a missing Go toolchain
or module proxy fails the test with the reason, never skips it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from localcluster.cluster import down

REPO = Path(__file__).resolve().parents[2]


def test_scale_bench_smoke(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    argv = [sys.executable, str(REPO / "bench" / "scale_bench.py"), "--nodes", "4", "--cpu-nodes", "1",
            "--jobs", "5", "--burst", "5", "--train-seconds", "12", "--progress-interval", "3",
            "--inspect-seconds", "1", "--timeout", "90", "--lease-seconds", "6", "--sample-seconds", "2",
            "--flow-seconds", "2", "--out", str(out), "--state-dir", str(tmp_path / "cluster")]
    # The bench bounds every wait itself (nodes Ready, leadership, the level's --timeout); the
    # outer limit only catches a hang, and the cluster is stopped whatever happened.
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=1200)
    finally:
        left = down(tmp_path / "cluster")
        assert not left, f"localcluster down left processes running: {left}"
    assert proc.returncode == 0, f"scale bench failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    result = json.loads((out / "scale-results.json").read_text())
    assert (out / "scale.png").stat().st_size > 0
    assert "/operator/finetune_operator/" in result["operator_imported_from"]
    run = result["runs"][0]
    assert run["finished"] and run["checks_ok"], json.dumps(run["checks"], indent=1)
    lat = run["latency_s"]
    for key in ("create_to_inspection_pod", "inspection_done_to_training_job", "create_to_training_job",
                "job_done_to_terminal_status"):
        assert lat[key]["n"] == 5, (key, lat[key])
    # the whole way contains both steps and the inspection's own run, job by job
    assert lat["create_to_training_job"]["max"] >= lat["create_to_inspection_pod"]["max"]
    assert lat["create_to_training_job"]["max"] >= lat["inspection_done_to_training_job"]["max"]
    # Four writes per trainer (12 s every 3 s), every one acknowledged and matched against the status.
    assert run["progress"]["writes"] == 20
    assert lat["progress_write_to_status"]["n"] == 20
    assert run["progress"]["jobs_last_write_never_shown"] == 0
    requests = run["requests"]["whole_run"]["by_verb_resource_per_s"]
    assert any("finetunejobs/status" in key for key in requests), requests
    assert any(key.startswith("create ") and "jobs" in key for key in requests), requests
    assert run["requests"]["rejected"] == 0
    assert run["operator"]["rss_max_mib"] > 0 and run["operator"]["events"] > 0
    assert run["simulator"]["progress_writes"] == 20 and run["simulator"]["finished"] == 10
    assert "cpu_s" in run["simulator"] and "kwok_cpu_s" in run
    # Where the reconciles' time went, from the operator's own histograms: every job was taken from
    # the queue at least once, and its children were created (POST) with their answer times counted.
    split = run["latency_split"]
    assert set(split) == {"all_jobs_created", "end"}, split
    waits = split["end"]["finetune_workqueue_queue_duration_seconds"]
    assert waits["count"] >= 5 and waits["mean_s"] is not None, waits
    posts = split["end"]["finetune_api_request_duration_seconds{POST}"]
    assert posts["count"] >= 10 and posts["total_s"] > 0, posts
