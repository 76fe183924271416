"""Plot scale-bench results: latency (p50/p99) and operator request rate against job count.

    .venv/bin/python bench/scale_plot.py OUT.png RESULTS.json [MORE.json ...]
    .venv/bin/python bench/scale_plot.py --table RESULTS.json [MORE.json ...]   # the README's markdown table

Several result files (e.g. the design before and after) share the axes, one line style each.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

LATENCIES = (
    ("create_to_inspection_pod", "create → inspection pod"),
    ("inspection_done_to_training_job", "inspection done → Job"),
    ("job_done_to_terminal_status", "Job done → terminal status"),
    ("progress_write_to_status", "progress write → status"),
)


def plot(results: list[Path], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_lat, ax_req) = plt.subplots(1, 2, figsize=(13, 5))
    styles = ["-", "--", ":", "-."]
    for k, path in enumerate(results):
        data: dict[str, Any] = json.loads(path.read_text())
        runs = sorted(data.get("runs") or [], key=lambda r: r["jobs"])
        if not runs:
            continue
        design = data.get("design") or path.stem
        ls = styles[k % len(styles)]
        xs = [r["jobs"] for r in runs]
        for i, (key, title) in enumerate(LATENCIES):
            color = f"C{i}"
            for q, marker in (("p50", "o"), ("p99", "^")):
                ys = [r["latency_s"][key].get(q) for r in runs]
                ax_lat.plot(xs, ys, ls, marker=marker, color=color, label=f"{title} {q} ({design})")
        for i, (key, title) in enumerate((("total_per_s", "all requests"),
                                          ("excluding_status_patches_per_s", "excluding status patches"))):
            ys = [(r["requests"]["steady_state"] or r["requests"]["whole_run"]).get(key) for r in runs]
            ax_req.plot(xs, ys, ls, marker="o", color=f"C{i}", label=f"{title} ({design})")
    nodes = {r.get("nodes") for p in results for r in json.loads(p.read_text()).get("runs") or []}
    ax_lat.set(xlabel="FineTuneJobs", ylabel="seconds", title=f"Latency ({', '.join(map(str, sorted(nodes)))} nodes)",
               yscale="log")
    ax_req.set(xlabel="FineTuneJobs", ylabel="requests / s", title="Operator API requests (steady state)")
    ax_req.set_ylim(bottom=0)
    for ax in (ax_lat, ax_req):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def _pq(s: dict[str, Any]) -> str:
    return f"{s['p50']:.2f} / {s['p99']:.2f}" if s.get("n") else "—"


def _steady(lat: dict[str, Any]) -> str:
    s = lat.get("progress_write_to_status_steady") or {}
    return f" (steady state {_pq(s)})" if s.get("n") else ""


def table(results: list[Path]) -> str:
    """One markdown row per design × job count."""
    head = ("| design | nodes × jobs | create → insp. pod p50/p99 s | insp. done → Job | Job done → terminal | "
            "progress → status | writes never shown / lost jobs | operator req/s (excl. status patches) | "
            "top requests/s | RSS MiB | CPU s / 1k events | checks |")
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for path in results:
        data = json.loads(path.read_text())
        for r in sorted(data.get("runs") or [], key=lambda r: r["jobs"]):
            lat = r["latency_s"]
            req = r["requests"]["steady_state"] or r["requests"]["whole_run"]
            window = "steady" if r["requests"]["steady_state"] else "whole run"
            top = ", ".join(f"{k} {v:.1f}" for k, v in list(req.get("by_verb_resource_per_s", {}).items())[:4])
            rows.append(
                f"| {data.get('design')} | {r['nodes']} × {r['jobs']} | {_pq(lat['create_to_inspection_pod'])} | "
                f"{_pq(lat['inspection_done_to_training_job'])} | {_pq(lat['job_done_to_terminal_status'])} | "
                f"{_pq(lat['progress_write_to_status'])}{_steady(lat)} | {r['progress']['never_shown_exactly']} of "
                f"{r['progress']['writes']} / {r['progress']['jobs_last_write_never_shown']} | "
                f"{req.get('total_per_s', 0):.1f} ({req.get('excluding_status_patches_per_s', 0):.1f}), {window} | "
                f"{top} | {r['operator']['rss_max_mib']:.0f} | {r['operator']['cpu_s_per_1000_events']} | "
                f"{'pass' if r['checks_ok'] else 'FAIL'} |")
    return "\n".join(rows)


def main() -> int:
    if len(sys.argv) >= 3 and sys.argv[1] == "--table":
        print(table([Path(p) for p in sys.argv[2:]]))
        return 0
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    plot([Path(p) for p in sys.argv[2:]], Path(sys.argv[1]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
