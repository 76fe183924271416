"""`finetune-trainer`: train (default), `inspect`, or `validate-data`.

    finetune-trainer --config train.yaml [--key value ...]
    finetune-trainer inspect --config train.yaml
    finetune-trainer validate-data FILE [--format F] [--tokenizer PATH] [--max-seq-length N] [--system-prompt TEXT]
    finetune-trainer --help

Every failure ends in one exit code of the contract and a termination message; heavy libraries
(torch, transformers, trl) are imported only by the commands that need them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

from .errors import ConfigError, ExitCode, TrainerError, classify, write_termination

log = logging.getLogger("finetune_trainer")

USAGE = """usage: finetune-trainer [COMMAND] [ARGS]

commands:
  train          (the default) QLoRA training: finetune-trainer [train] --config train.yaml [--key value ...]
  inspect        architecture and data report, no weights read: finetune-trainer inspect --config train.yaml
  validate-data  check a local JSONL file: finetune-trainer validate-data FILE [--format F] [--tokenizer DIR]

`finetune-trainer train --help` lists every configuration key, `validate-data --help` its options.
Exit codes (docs/contract.md section 3): 0 succeeded/usable, 10 data unusable, 11 configuration or
command-line error (also: a missing file or a URI given to validate-data), 12 CUDA out of memory,
13 interrupted, 14 S3 unreachable, 1 anything else.
"""


def _local_file(path: str, what: str) -> None:
    """validate-data reads local files only; say so instead of failing inside the reader."""
    if "://" in path:
        raise ConfigError(
            f"{what}: '{path.split('://', 1)[0]}://' URIs are not fetched by validate-data, which reads a local file: "
            "copy it first (e.g. aws s3 cp s3://bucket/key.jsonl data.jsonl), or run `finetune-trainer inspect` "
            "with dataset_uri set"
        )
    if not os.path.exists(path):
        raise ConfigError(f"{what}: {path}: no such file or directory")


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
    p.add_argument("--train-on-inputs", action="store_true", help="loss on every token (as train_on_inputs: true)")
    a = p.parse_args(argv)
    _local_file(a.file, "FILE")
    if os.path.isdir(a.file):
        raise ConfigError(f"FILE: {a.file} is a directory; give the JSONL file itself")
    count = check = None
    if a.tokenizer:
        _local_file(a.tokenizer, "--tokenizer")
        from .job import load_tokenizer, template_check, token_counter

        tokenizer, template = load_tokenizer(a.tokenizer)
        count, check = token_counter(tokenizer), template_check(tokenizer, template)
    loaded = load_jsonl(
        a.file,
        data_format=a.format,
        system_prompt=a.system_prompt,
        validation_split=float(a.validation_split),
        seed=a.seed,
        count_tokens=count,
        max_seq_length=a.max_seq_length,
        check_example=check,
    )
    out = loaded.report.to_json()
    if a.tokenizer:
        from .job import check_against_template, masking_report, zero_weight_messages

        template = check_against_template(loaded, template, tokenizer, a.train_on_inputs)
        out = loaded.report.to_json()
        zero = sum(zero_weight_messages(ex) for ex in loaded.train)
        out["chatTemplate"] = template.to_json()
        out["lossMasking"] = masking_report(loaded.report.format, template, a.train_on_inputs, zero)
    print(json.dumps(out, indent=2))
    return 0 if loaded.report.usable else int(ExitCode.DATA_ERROR)


def _run(argv: list[str]) -> int:
    if argv[:1] in (["-h"], ["--help"], ["help"]):
        print(USAGE, end="")
        return 0
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

    return run_training(cfg)


def main(argv: list[str] | None = None) -> int:
    """Run one command; return its exit code (never raise)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from_process = argv is None
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
        if err.code == ExitCode.INTERRUPTED and from_process:
            # The pod is being deleted and its grace period is the whole budget: on a busy node the
            # interpreter's teardown (torch, thread pools) has outlasted it, turning exit 13 (ignored
            # by the Job) into SIGKILL's 137 (a failure). The checkpoint and the message are written.
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(int(err.code))
        return int(err.code)
