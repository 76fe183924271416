"""``python -m localcluster up|down|status|nodes|supervise`` — the local test cluster's CLI."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from localcluster.cluster import DEFAULT_BUCKETS, default_state_dir, down, status, up
from localcluster.controlplane import ControlPlaneError


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``localcluster`` console script."""
    p = argparse.ArgumentParser(prog="localcluster", description=__doc__)
    p.add_argument("--state-dir", type=Path, default=None,
                   help="state directory (default $FTO_STATE_DIR or ~/.cache/finetune-operator/cluster)")
    sub = p.add_subparsers(dest="cmd", required=True)
    pu = sub.add_parser("up", help="start control plane, simulated GPU nodes, pod runner (and S3)")
    pu.add_argument("--fleet", type=Path, default=None, help="fleet YAML (default: localcluster/fleet.yaml)")
    pu.add_argument("--images", type=Path, default=None, help="image table YAML (default: localcluster/images.yaml)")
    pu.add_argument("--with-s3", action="store_true", help="also start SeaweedFS S3 on 127.0.0.1")
    pu.add_argument("--bucket", action="append", default=None, help=f"bucket to create (default {list(DEFAULT_BUCKETS)})")
    pu.add_argument("--port", type=int, default=None, help="kube-apiserver port (default: a free one)")
    sub.add_parser("down", help="stop everything `up` started")
    sub.add_parser("status", help="show which processes run")
    pn = sub.add_parser("nodes", help="print the fleet's Node objects as a kind: List (for `finetune_operator estimate --nodes`)")
    pn.add_argument("--fleet", type=Path, default=None, help="fleet YAML (default: localcluster/fleet.yaml)")
    sub.add_parser("supervise", help="(internal) run node heartbeats and the pod runner")
    for sp in sub.choices.values():
        sp.add_argument("--state-dir", type=Path, default=argparse.SUPPRESS)
    a = p.parse_args(argv)
    state = (a.state_dir or default_state_dir()).resolve()

    if a.cmd == "supervise":
        from localcluster.supervisor import supervise

        supervise(state)
        return 0
    if a.cmd == "up":
        try:
            info = up(state, a.fleet, a.images, a.with_s3, tuple(a.bucket or DEFAULT_BUCKETS), a.port)
        except ControlPlaneError as e:
            print(f"localcluster up failed: {e}", file=sys.stderr)
            return 1
        print(f"kubeconfig:  {info.kubeconfig}")
        print(f"api server:  {info.server}")
        if info.s3_endpoint:
            print(f"s3 endpoint: {info.s3_endpoint}  access key: {info.s3_access_key}  secret key: {info.s3_secret_key}")
        print(f"environment: source {state / 'env'}")
        print(f"ready in {info.timings['total']:.1f}s ({', '.join(f'{k} {v:.1f}s' for k, v in info.timings.items())})")
        return 0
    if a.cmd == "nodes":
        import yaml

        from localcluster.fleet import FleetError, load_fleet, node_objects

        try:
            items = node_objects(load_fleet(a.fleet))
        except (OSError, FleetError) as e:
            print(f"localcluster nodes: {e}", file=sys.stderr)
            return 1
        sys.stdout.write(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": items}, sort_keys=False))
        return 0
    if a.cmd == "down":
        left = down(state)
        if left:
            print(f"localcluster down: still running: {', '.join(left)}", file=sys.stderr)
            return 1
        print(f"stopped everything started from {state}")
        return 0
    print(json.dumps(status(state), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
