"""`python -m finetune_operator [run|estimate|crds]`."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    command = args.pop(0) if args and not args[0].startswith("-") else "run"
    if command == "estimate":
        from finetune_operator import estimate_cli

        return estimate_cli.main(args)
    if command == "crds":
        from finetune_operator import crdgen

        if args:
            print(f"crds takes no arguments (got {' '.join(args)}); it prints the CRD: "
                  "python -m finetune_operator crds > crd.yaml", file=sys.stderr)
            return 2
        return crdgen.main()
    if command == "run":
        return run(args)
    print(f"unknown command {command!r}; use run, estimate or crds", file=sys.stderr)
    return 2


def run(args: Sequence[str]) -> int:
    """Start the operator: validate configuration, then hand over to kopf."""
    import kopf
    import prometheus_client

    from finetune_operator import config as config_mod
    from finetune_operator import gpus, handlers, k8s

    try:
        cfg = config_mod.load()
        gpus.BUILTIN_CATALOG.with_entries(cfg.gpu_catalog)  # refuse a bad entry at start-up, not per job
    except (config_mod.ConfigError, ValueError) as exc:
        print(f"finetune-operator: {exc}", file=sys.stderr)
        return 2
    kopf.configure(log_format=kopf.LogFormat.JSON, verbose="--verbose" in args)
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    if "--verbose" not in args:
        # kopf logs "Handler … succeeded" per object per event: at thousands of events a minute
        # that is most of the operator's CPU. Failures are still logged (WARNING and up).
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    handlers.Runtime.config = cfg
    k8s.configure()
    prometheus_client.start_http_server(cfg.metrics_port, addr="0.0.0.0")
    namespaces = list(cfg.namespaces)
    asyncio.run(kopf.operator(
        clusterwide=not namespaces,
        namespaces=namespaces,
        standalone=True,  # one active replica is our Lease's job, not kopf peering's
        liveness_endpoint=f"http://0.0.0.0:{cfg.health_port}/healthz",
    ))
    return 0


if __name__ == "__main__":
    sys.exit(main())
