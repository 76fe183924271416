"""`finetune-trainer`: train (default), `inspect`, or `validate-data`.

    finetune-trainer --config train.yaml [--key value ...]
    finetune-trainer inspect --config train.yaml
    finetune-trainer validate-data FILE [--format F] [--tokenizer PATH] [--max-seq-length N] [--system-prompt TEXT]

Every failure ends in one exit code of the contract and a termination message; heavy libraries
(torch, transformers, trl) are imported only by the commands that need them.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from .errors import ExitCode, TrainerError, classify, write_termination

log = logging.getLogger("finetune_trainer")


def _validate_data(argv: list[str]) -> int:
    from .data import FORMATS, load_jsonl

    p = argparse.ArgumentParser(prog="finetune-trainer validate-data", description="Check a JSONL dataset.")
    p.add_argument("file")
    p.add_argument("--format", default="auto", choices=FORMATS)
    p.add_argument("--tokenizer", default="", help="tokenizer directory (enables token statistics)")
    p.add_argument("--max-seq-length", type=int, default=None)
    p.add_argument("--system-prompt", default="")
    p.add_argument("--validation-split", default="0.1")
    p.add_argument("--seed", type=int, default=42)
    a = p.parse_args(argv)
    count = None
    if a.tokenizer:
        from .job import load_tokenizer, token_counter

        tokenizer, _ = load_tokenizer(a.tokenizer)
        count = token_counter(tokenizer)
    loaded = load_jsonl(
        a.file,
        data_format=a.format,
        system_prompt=a.system_prompt,
        validation_split=float(a.validation_split),
        seed=a.seed,
        count_tokens=count,
        max_seq_length=a.max_seq_length,
    )
    print(json.dumps(loaded.report.to_json(), indent=2))
    return 0 if loaded.report.usable else int(ExitCode.DATA_ERROR)


def _run(argv: list[str]) -> int:
    if argv and argv[0] == "validate-data":
        return _validate_data(argv[1:])
    from .config import parse_config

    if argv and argv[0] == "inspect":
        from .inspection import run_inspection

        return run_inspection(parse_config(argv[1:]))
    if argv and argv[0] == "train":
        argv = argv[1:]
    from .launcher import launch, nproc_per_node

    nproc = nproc_per_node()
    if nproc > 1:
        return launch(argv, nproc)
    cfg = parse_config(argv)
    from .train import run_training

    return run_training(cfg, argv)


def main(argv: list[str] | None = None) -> int:
    """Run one command; return its exit code (never raise)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return _run(argv)
    except SystemExit as e:
        # argparse --help (0) or a usage error (2) in validate-data.
        code = e.code if isinstance(e.code, int) else 1
        return 0 if code == 0 else int(ExitCode.CONFIG_ERROR)
    except BaseException as e:  # noqa: BLE001 - every failure must become a contract exit code
        err: TrainerError = classify(e)
        if err.code == ExitCode.OTHER:
            log.exception("unexpected error")
        else:
            log.error("%s: %s", type(err).__name__, err.message)
        details: dict[str, Any] = dict(err.details)
        write_termination(err.code, err.message, **details)
        return int(err.code)
