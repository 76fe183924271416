"""The trainer configuration (contract §1): TRL's ModelConfig + SFTConfig + our JobArguments.

Parsed with TRL's `TrlParser` from one flat YAML file (`--config train.yaml`); command-line
flags override the file, which is how the same command runs on a laptop. Unknown keys are a
configuration error.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from .data import FORMATS
from .errors import ConfigError

if TYPE_CHECKING:
    from trl import ModelConfig, SFTConfig, TrlParser

# ModelConfig.dtype's values. `auto` here means "the best the GPU runs": the base model is 4-bit, so
# TRL's "from the checkpoint's weights" has nothing to go by; the trainer resolves it on the node.
DTYPES = ("auto", "bfloat16", "float16", "float32")

# What a QLoRA trainer needs that TRL's own defaults do not give. Applied before the file,
# so any of them can still be set in it.
QLORA_DEFAULTS: dict[str, Any] = {
    "use_peft": True,
    "load_in_4bit": True,
    "bnb_4bit_quant_type": "nf4",
    "use_bnb_nested_quant": True,
    "lora_r": 16,
    "lora_alpha": 32,
    "lora_dropout": 0.05,
    "dtype": "auto",
    "activation_checkpointing": True,
    "report_to": "none",
    "logging_steps": 1,
    "save_strategy": "steps",
    "save_steps": 100,
    "eval_strategy": "no",
    "save_total_limit": 2,
}

# TrainingArguments keys that follow from the dtype and the hardware unless the file or the
# command line sets them; None marks "not set" (their __post_init__ checks them, so they are
# decided before the dataclass is built, never patched in after).
DEVICE_KEYS = ("bf16", "fp16", "use_cpu")


@dataclass
class JobArguments:
    """The FineTuneJob-specific part of the configuration (see docs/contract.md §1)."""

    job_uid: str = field(default="", metadata={"help": "FineTuneJob metadata.uid; part of every S3 key of the run."})
    job_name: str = field(default="local", metadata={"help": "FineTuneJob name (manifest, progress, run prefix)."})
    job_namespace: str = field(default="", metadata={"help": "FineTuneJob namespace (progress ConfigMap)."})
    base_model_uri: str = field(default="", metadata={"help": "hf://org/name, s3://bucket/prefix/ or a local path."})
    dataset_uri: str = field(default="", metadata={"help": "s3://bucket/key.jsonl, hf://datasets/org/name[/file] or a path."})
    validation_uri: str = field(default="", metadata={"help": "Optional validation JSONL, same forms."})
    validation_split: str = field(default="0.1", metadata={"help": "Hold-out fraction (decimal string) without validation_uri."})
    data_format: str = field(default="auto", metadata={"help": "auto, messages, prompt_completion or text."})
    system_prompt: str = field(default="", metadata={"help": "Injected into chat examples without one; recorded."})
    output_uri: str = field(default="", metadata={"help": "s3://bucket/prefix/ or a local directory."})
    s3_endpoint: str = field(default="", metadata={"help": "S3 endpoint URL (empty: AWS)."})
    s3_region: str = field(default="", metadata={"help": "S3 region."})
    s3_path_style: bool = field(default=False, metadata={"help": "Path-style S3 addressing."})
    s3_ca_bundle: str = field(default="", metadata={"help": "Path of a CA bundle for the S3 endpoint."})
    # boto3 retries and timeouts, from the operator's configuration (s3Retries)
    s3_retry_mode: str = field(default="standard", metadata={"help": "botocore retry mode: standard, adaptive or legacy."})
    s3_max_attempts: int = field(default=0, metadata={"help": "Attempts per S3 request (0: AWS_MAX_ATTEMPTS or 5)."})
    s3_connect_timeout_seconds: float = field(default=10.0, metadata={"help": "S3 connect timeout."})
    s3_read_timeout_seconds: float = field(default=60.0, metadata={"help": "S3 read timeout."})
    checkpoint_interval_steps: int = field(default=100, metadata={"help": "Checkpoint every N optimizer steps (0: off)."})
    checkpoint_interval_minutes: float = field(default=30.0, metadata={"help": "Checkpoint every N minutes (0: off)."})
    keep_checkpoints: int = field(default=2, metadata={"help": "Complete checkpoints kept in S3."})
    progress_configmap: str = field(default="", metadata={"help": "Progress ConfigMap name (empty: log only)."})
    progress_interval_seconds: float = field(default=5.0, metadata={"help": "Minimum seconds between progress writes."})
    wandb_project: str = field(default="", metadata={"help": "Weights & Biases project (key from WANDB_API_KEY)."})
    train_on_inputs: bool = field(default=False, metadata={"help": "Loss on every token (true) or only on what the model answers: assistant turns, completions (false)."})
    expect_gpus: int = field(default=0, metadata={"help": "GPUs the pod was given; with more than 0 and no CUDA device the run fails at once."})
    model_cache_dir: str = field(default="", metadata={"help": "Where s3:// models are cached (default under HF_HOME)."})

    @property
    def run_name(self) -> str:
        return f"{self.job_name}-{self.job_uid}" if self.job_uid else self.job_name

    @property
    def run_prefix(self) -> str:
        """`<output_uri><job_name>-<job_uid>/` (contract §2)."""
        base = self.output_uri if self.output_uri.endswith("/") else self.output_uri + "/"
        return f"{base}{self.run_name}/"

    @property
    def validation_fraction(self) -> float:
        return float(Decimal(self.validation_split or "0"))


@dataclass
class Config:
    """The parsed configuration: TRL's two dataclasses and ours, built once and then only read."""

    job: JobArguments
    sft: SFTConfig
    model: ModelConfig


def resolve_dtype(name: str) -> str:
    """`auto`: bfloat16 on compute capability >= 8.0, float16 below, float32 on the CPU."""
    import torch

    if name != "auto":
        return name
    if not torch.cuda.is_available():
        return "float32"
    major, _ = torch.cuda.get_device_capability()
    return "bfloat16" if major >= 8 else "float16"


def device_flags(dtype: str) -> dict[str, bool]:
    """Mixed precision and device flags that follow from a resolved dtype and the hardware."""
    import torch

    return {"bf16": dtype == "bfloat16", "fp16": dtype == "float16", "use_cpu": not torch.cuda.is_available()}


def work_dir(job: JobArguments) -> str:
    """The run's local scratch directory: downloads, TRL's output_dir, the adapter before upload."""
    base = os.environ.get("FINETUNE_WORK_DIR") or os.path.join(os.environ.get("TMPDIR", "/tmp"), "finetune")
    return os.path.join(base, job.run_name)


def run_settings(job: JobArguments) -> dict[str, Any]:
    """SFTConfig keys the trainer owns, over the file and the command line: scratch output, no TRL
    checkpoints (CheckpointSync takes them, by steps or minutes), the run's name and its tracker."""
    settings: dict[str, Any] = {
        "output_dir": os.path.join(work_dir(job), "trainer"),
        "save_strategy": "no",
        "save_total_limit": 1,
        "run_name": job.run_name,
    }
    if job.wandb_project:
        settings["report_to"] = "wandb"
    return settings


def make_parser() -> TrlParser:
    """A TrlParser over (JobArguments, SFTConfig, ModelConfig) with the QLoRA defaults applied."""
    from trl import ModelConfig, SFTConfig, TrlParser

    parser = TrlParser((JobArguments, SFTConfig, ModelConfig), prog="finetune-trainer")
    parser.set_defaults(**QLORA_DEFAULTS, **dict.fromkeys(DEVICE_KEYS))
    return parser


def _read_yaml(path: str) -> dict[str, Any]:
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as e:
        raise ConfigError(f"--config {path}: cannot read ({e.strerror})") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"--config {path}: not valid YAML ({e})") from e
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: must be a YAML mapping of keys to values")
    return {str(k): v for k, v in data.items()}


def _split_config_flag(argv: list[str]) -> tuple[dict[str, Any], list[str]]:
    """(the --config file's keys, the remaining command line)."""
    if "--config" not in argv:
        return {}, list(argv)
    i = argv.index("--config")
    if i + 1 >= len(argv):
        raise ConfigError("--config needs a file path")
    return _read_yaml(argv[i + 1]), argv[:i] + argv[i + 2 :]


def _keys_of(types: tuple[type[Any], ...]) -> set[str]:
    return {f.name for t in types for f in dataclasses.fields(t) if f.init}


def parse_config(argv: list[str]) -> Config:
    """Parse `--config FILE [--key value ...]` once into a validated Config; raise ConfigError on any problem.

    The file's keys become parser defaults, so command-line flags override them; the dataclasses
    are built once, after the dtype and the keys the trainer owns are settled.
    """
    from trl import ModelConfig, SFTConfig

    types: tuple[type[Any], ...] = (JobArguments, SFTConfig, ModelConfig)
    data, rest = _split_config_flag(argv)
    # TrlParser would export an `env:` mapping into the process environment; the contract's
    # file is flat, so refuse it rather than let configuration change the environment.
    if "env" in data:
        raise ConfigError("env: not a trainer configuration key (the file is flat; see docs/contract.md)")
    unknown = sorted(set(data) - _keys_of(types))
    if unknown:
        raise ConfigError(f"unknown configuration keys: {', '.join(unknown)} (see docs/contract.md §1 for the accepted keys)")
    parser = make_parser()
    parser.set_defaults(**data)
    try:
        namespace, extra = parser.parse_known_args(args=rest)
    except SystemExit as e:  # argparse: bad flag or value (it already printed why), or --help
        if e.code in (0, None):
            raise
        raise ConfigError(f"invalid command line or configuration value (argparse exit {e.code})") from e
    if extra:
        raise ConfigError(f"unknown command-line arguments: {' '.join(extra)} (see docs/contract.md §1 for the accepted keys)")
    values = vars(namespace)
    if values["dtype"] not in DTYPES:
        raise ConfigError(f"dtype: must be one of {', '.join(DTYPES)}")
    values["dtype"] = resolve_dtype(values["dtype"])
    for key, flag in device_flags(values["dtype"]).items():
        if values[key] is None:
            values[key] = flag
    job = JobArguments(**{k: values[k] for k in _keys_of((JobArguments,))})
    if not job.base_model_uri and values["model_name_or_path"]:
        job.base_model_uri = values["model_name_or_path"]
    validate_job(job)
    values.update(run_settings(job))
    try:
        sft = SFTConfig(**{k: values[k] for k in _keys_of((SFTConfig,))})
        model = ModelConfig(**{k: values[k] for k in _keys_of((ModelConfig,))})
    except ValueError as e:  # TrainingArguments' and ModelConfig's own cross-field checks
        raise ConfigError(str(e)) from e
    validate(sft, model)
    return Config(job=job, sft=sft, model=model)


def validate_job(job: JobArguments) -> None:
    """Checks of our own keys, before TRL's dataclasses are built from them."""
    if not job.base_model_uri:
        raise ConfigError("base_model_uri: required (hf://org/name, s3://bucket/prefix/ or a local path)")
    if not job.dataset_uri:
        raise ConfigError("dataset_uri: required (s3://bucket/key.jsonl, hf://datasets/org/name or a local path)")
    if job.data_format not in FORMATS:
        raise ConfigError(f"data_format: must be one of {', '.join(FORMATS)}")
    try:
        frac = Decimal(job.validation_split or "0")
    except InvalidOperation as e:
        raise ConfigError("validation_split: must be a decimal string such as \"0.1\"") from e
    if not Decimal(0) <= frac < Decimal(1):
        raise ConfigError("validation_split: must be at least 0 and below 1")
    if job.output_uri.startswith("s3://") and not job.job_uid:
        raise ConfigError("job_uid: required when output_uri is in S3 (the run prefix includes it)")
    if job.expect_gpus < 0:
        raise ConfigError("expect_gpus: must not be negative")
    if job.keep_checkpoints < 1:
        raise ConfigError("keep_checkpoints: must be at least 1")
    if job.checkpoint_interval_steps < 0 or job.checkpoint_interval_minutes < 0:
        raise ConfigError("checkpoint_interval_steps / checkpoint_interval_minutes: must not be negative")
    for uri_field in ("base_model_uri", "dataset_uri", "validation_uri", "output_uri"):
        value = getattr(job, uri_field)
        if value.startswith(("http://", "https://", "gs://")):
            raise ConfigError(f"{uri_field}: '{value}' uses an unsupported scheme; use s3://, hf:// or a local path")


def validate(sft: SFTConfig, model: ModelConfig) -> None:
    """Cross-field checks of TRL's keys that name the key and what to do."""
    if model.load_in_4bit and not model.use_peft:
        raise ConfigError("use_peft: a 4-bit base model can only be trained with LoRA; set use_peft: true")
    if sft.max_length is not None and sft.max_length < 8:
        raise ConfigError("max_length: must be at least 8 tokens")


def default_cache_dir() -> str:
    hf_home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "/tmp"), "huggingface")
    return os.path.join(hf_home, "finetune-models")
