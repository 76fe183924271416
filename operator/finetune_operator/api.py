"""The FineTuneJob API: pydantic models of spec and status, the single source of the CRD.

Every field is snake_case in Python and camelCase on the wire (alias generator). The CEL rules
the API server enforces live next to the fields they guard (``Rule``), together with the Python
check that mirrors them, so the CRD (``crdgen``) and ``spec_errors`` cannot drift apart.

Non-integer numbers (learning rate, dropout, split fractions, losses) are decimal strings: they
round-trip exactly through YAML, JSON, etcd and Python's ``Decimal``, which floats do not.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Any, ClassVar, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

GROUP = "finetune.dev"
VERSION = "v1alpha1"
KIND = "FineTuneJob"
PLURAL = "finetunejobs"
SINGULAR = "finetunejob"
SHORT_NAMES = ("ftj",)
CRD_NAME = f"{PLURAL}.{GROUP}"
API_VERSION = f"{GROUP}/{VERSION}"

State = Literal["Validating", "Inspecting", "Queued", "Running", "Succeeded", "Failed", "Suspended"]
STATES: tuple[str, ...] = get_args(State)

# --- scalar types ---------------------------------------------------------------------------
# Bounds on every string, list and map keep the immutability rules (``self == oldSelf``) inside
# the API server's CEL cost budget, which otherwise assumes the largest possible request.

Fraction = Annotated[str, Field(pattern=r"^0(\.[0-9]{1,6})?$", max_length=8)]
"""A decimal string in [0, 1), e.g. "0.05"."""

PositiveDecimal = Annotated[
    str, Field(pattern=r"^[0-9]{1,6}(\.[0-9]{1,12})?([eE][-+]?[0-9]{1,2})?$", max_length=24)
]
"""A non-negative decimal string, optionally with an exponent, e.g. "2e-4" or "0.0002"."""

StatusDecimal = Annotated[str, Field(pattern=r"^-?[0-9]{1,12}(\.[0-9]{1,12})?([eE][-+]?[0-9]{1,3})?$|^NaN$|^[+-]?Inf$", max_length=40)]
"""A decimal string reported by the trainer (losses can be NaN or Inf)."""

DnsName = Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")]
SecretKey = Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")]
LabelValue = Annotated[str, Field(max_length=63)]
ModuleName = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.\-]+$")]
GpuProductName = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.\-]+$")]
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
Quantity = Annotated[int, Field(ge=0)] | Annotated[str, Field(max_length=64, pattern=QUANTITY_PATTERN)]
"""A Kubernetes resource quantity ("16Gi", "4", 4)."""

MODEL_URI_PATTERN = (
    r"^(hf://[A-Za-z0-9][A-Za-z0-9_.\-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.\-]{0,95}"
    r"|s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]/([^\s]*/)?"
    r"|pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/[^\s]*)?"
    r"|/[^\s]*)$"
)
DATA_URI_PATTERN = (
    r"^(hf://datasets/[A-Za-z0-9][A-Za-z0-9_.\-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.\-]{0,95}(/[^\s]+)?"
    r"|s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]/[^\s]+"
    r"|pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?/[^\s]+"
    r"|/[^\s]+)$"
)
OUTPUT_URI_PATTERN = r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]/([^\s]*/)?$"


@dataclass(frozen=True)
class Rule:
    """A CEL rule for the CRD and, where it is not a transition rule, its Python mirror.

    ``field_path`` is relative to the object the rule sits on (``.quantization.bits``); it makes
    the API server's message name the field, and ``spec_errors`` uses it the same way.
    """

    cel: str
    message: str
    field_path: str | None = None
    check: Callable[[Any], bool] | None = None

    def to_schema(self) -> dict[str, str]:
        out = {"rule": self.cel, "message": self.message}
        if self.field_path:
            out["fieldPath"] = self.field_path
        return out


def cel(*rules: Rule) -> dict[str, Any]:
    """The ``json_schema_extra`` that carries rules into the CRD."""
    return {"x-kubernetes-validations": [r.to_schema() for r in rules]}


def immutable(name: str) -> Rule:
    """A transition rule: the field cannot change once the job exists."""
    return Rule("self == oldSelf", f"{name} is immutable; delete and re-create the job to change it")


def defaulted_object(name: str) -> dict[str, Any]:
    """Schema extras for a sub-object that defaults to ``{}`` so its own defaults apply."""
    return {"default": {}, **cel(immutable(name))}


class _ApiModel(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        extra="forbid",
        frozen=True,
        use_attribute_docstrings=True,
    )

    rules: ClassVar[tuple[Rule, ...]] = ()

    @model_validator(mode="after")
    def _check_rules(self) -> Any:
        for rule in type(self).rules:
            if rule.check is not None and not rule.check(self):
                raise PydanticCustomError("rule", rule.message, {"field_path": rule.field_path or ""})
        return self

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: Any) -> Any:
        schema = handler(core_schema)
        if cls.rules:
            target = handler.resolve_ref_schema(schema)
            target.setdefault("x-kubernetes-validations", []).extend(r.to_schema() for r in cls.rules)
        return schema


# --- spec -----------------------------------------------------------------------------------


class SecretKeyRef(_ApiModel):
    """A key of a Secret in the job's namespace."""

    name: DnsName
    """Secret name."""
    key: SecretKey
    """Key inside the Secret."""


class HfTokenSecret(_ApiModel):
    """The Secret holding a Hugging Face token (mounted as HF_TOKEN)."""

    name: DnsName
    key: SecretKey = "HF_TOKEN"


class BaseModelSpec(_ApiModel):
    """Where the base model comes from."""

    uri: Annotated[str, Field(max_length=1024, pattern=MODEL_URI_PATTERN)]
    """hf://org/name, s3://bucket/prefix/, pvc://claim/path or an absolute path in the image."""
    revision: Annotated[str, Field(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9_.\-/]+$")] | None = None
    """Hub revision (commit sha, tag or branch); only for hf:// models. Pin a commit for reproducibility."""
    trust_remote_code: bool = False
    """Run the model repository's own Python code; refused unless the operator's configuration allows it."""
    credentials_secret: HfTokenSecret | None = None
    """Secret with a Hugging Face token for gated or private models (also used for hf:// datasets)."""

    rules = (
        Rule(
            "!has(self.revision) || self.uri.startsWith('hf://')",
            "revision applies only to hf:// models",
            ".revision",
            lambda m: m.revision is None or m.uri.startswith("hf://"),
        ),
    )


DataFormat = Literal["auto", "messages", "prompt_completion", "text"]


class DatasetSpec(_ApiModel):
    """Training and validation data (JSONL)."""

    train_uri: Annotated[str, Field(max_length=1024, pattern=DATA_URI_PATTERN)]
    """s3://bucket/key.jsonl, hf://datasets/org/name[/file], pvc://claim/path or an absolute path."""
    validation_uri: Annotated[str, Field(max_length=1024, pattern=DATA_URI_PATTERN)] | None = None
    """Optional validation data; when absent, validationSplit of the training data is held out."""
    validation_split: Fraction = "0.1"
    """Fraction held out for validation when validationUri is absent ("0" disables evaluation)."""
    format: DataFormat = "auto"
    """Example format: chat messages, prompt/completion pairs, plain text, or auto-detected."""
    system_prompt: Annotated[str, Field(max_length=32768)] | None = None
    """Injected into examples without one; use the same system prompt at inference (recorded in the adapter manifest)."""
    max_seq_length: Annotated[int, Field(ge=16, le=262144)] = 2048
    """Tokens per sequence; longer examples are truncated. Drives the activation and logits memory."""
    packing: bool = False
    """Pack several short examples into one sequence of maxSeqLength tokens."""
    train_on_inputs: bool = False
    """Loss on every token (true), or only on what the model answers (false: assistant turns through a
    chat template with generation markers, completions of prompt/completion data). With false, chat data
    whose model template cannot mark assistant turns is refused at inspection rather than trained on the prompts."""


Method = Literal["qlora", "lora"]
ComputeDtype = Literal["auto", "bf16", "fp16"]


class QuantizationSpec(_ApiModel):
    """How the frozen base weights are stored, and the dtype LoRA computes in."""

    bits: Literal[4, 8] | None = None
    """4 (qlora, the default there) or 8 (lora on an 8-bit base). Unset with lora: no quantization."""
    type: Literal["nf4", "fp4"] = "nf4"
    """4-bit data type."""
    double_quant: bool = True
    """Quantize the quantization constants too (≈0.127 instead of 0.5 bit per parameter)."""
    compute_dtype: ComputeDtype = "auto"
    """auto picks bf16 on GPUs with compute capability ≥ 8.0 and fp16 below."""


TARGET_PRESETS = ("auto", "all-linear")


class LoraSpec(_ApiModel):
    """LoRA adapter settings."""

    r: Annotated[int, Field(ge=1, le=256)] = 16
    """Rank of the update matrices."""
    alpha: Annotated[int, Field(ge=1, le=4096)] | None = None
    """Scaling numerator (effective scale alpha/r); unset resolves to 2·r, recorded in status."""
    dropout: Fraction = "0.05"
    """Dropout on the LoRA input, a decimal string in [0, 1)."""
    target_modules: Annotated[list[ModuleName], Field(min_length=1, max_length=64)] = ["auto"]
    """Module names, or a single preset: [auto] (PEFT's default for the architecture) or [all-linear]."""
    use_dora: bool = False
    """Weight-decomposed LoRA (DoRA)."""
    use_rslora: bool = False
    """Rank-stabilised scaling alpha/sqrt(r)."""

    rules = (
        Rule(
            "size(self.targetModules) > 0",
            "targetModules must not be empty; list module names or use [auto]",
            ".targetModules",
            lambda m: len(m.target_modules) > 0,
        ),
        Rule(
            "size(self.targetModules) == 1 || !self.targetModules.exists(m, m == 'auto' || m == 'all-linear')",
            "auto and all-linear must be the only entry of targetModules",
            ".targetModules",
            lambda m: len(m.target_modules) == 1 or not set(m.target_modules) & set(TARGET_PRESETS),
        ),
    )


# An int-or-string in the CRD: the converter turns the branches' bounds into node-level
# minimum/maximum (checked for integers only) and pattern (checked for strings only).
MicroBatchSize = Annotated[int, Field(ge=1, le=1024)] | Literal["auto"]


class CheckpointSpec(_ApiModel):
    """When checkpoints are written to S3 (whichever interval comes first)."""

    every_steps: Annotated[int, Field(ge=1, le=10_000_000)] | None = None
    """Checkpoint every N optimizer steps."""
    every_minutes: Annotated[int, Field(ge=0, le=1440)] = 30
    """Checkpoint at least every N minutes of training (0 disables the time trigger)."""
    keep: Annotated[int, Field(ge=1, le=100)] = 2
    """Complete checkpoints kept in S3; older ones are deleted."""


def _both_set(m: Any, a: str, b: str) -> bool:
    return getattr(m, a) is not None and getattr(m, b) is not None


class TrainingSpec(_ApiModel):
    """Optimisation settings."""

    epochs: Annotated[int, Field(ge=1, le=1000)] | None = None
    """Passes over the training data; set exactly one of epochs and maxSteps."""
    max_steps: Annotated[int, Field(ge=1, le=10_000_000)] | None = None
    """Optimizer steps; set exactly one of epochs and maxSteps."""
    micro_batch_size: MicroBatchSize = 1
    """Sequences per GPU per forward pass, or auto: the largest power of two that fits (needs batchSize)."""
    gradient_accumulation: Annotated[int, Field(ge=1, le=4096)] | None = None
    """Micro-batches per optimizer step; alternatively give batchSize."""
    batch_size: Annotated[int, Field(ge=1, le=65536)] | None = None
    """Effective sequences per optimizer step per GPU (micro-batch × accumulation)."""
    learning_rate: PositiveDecimal = "2e-4"
    """Decimal string, e.g. "2e-4"."""
    scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    warmup_ratio: Fraction = "0.03"
    """Fraction of steps spent warming up, a decimal string in [0, 1)."""
    weight_decay: PositiveDecimal = "0"
    gradient_checkpointing: bool = True
    """Recompute activations in the backward pass: much less memory for ≈30% more compute."""
    attention_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    """sdpa (PyTorch's fused attention) or eager, which materialises the attention matrix (memory grows with the square of the sequence). flash_attention_2 is refused: the trainer image has no flash-attn."""
    seed: Annotated[int, Field(ge=0, le=2147483647)] = 42
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec, json_schema_extra={"default": {}})
    eval_steps: Annotated[int, Field(ge=1, le=10_000_000)] | None = None
    """Evaluate every N steps (default: at the end of each epoch and of training)."""

    rules = (
        Rule(
            "has(self.epochs) != has(self.maxSteps)",
            "set exactly one of epochs and maxSteps",
            ".epochs",
            lambda m: (m.epochs is None) != (m.max_steps is None),
        ),
        Rule(
            "type(self.microBatchSize) != string || has(self.batchSize)",
            "microBatchSize auto needs batchSize (the effective batch to split into micro-batches)",
            ".batchSize",
            lambda m: m.micro_batch_size != "auto" or m.batch_size is not None,
        ),
        Rule(
            "!(has(self.gradientAccumulation) && has(self.batchSize))",
            "set gradientAccumulation or batchSize, not both",
            ".gradientAccumulation",
            lambda m: not _both_set(m, "gradient_accumulation", "batch_size"),
        ),
        Rule(
            "!has(self.batchSize) || type(self.microBatchSize) == string || self.batchSize % int(self.microBatchSize) == 0",
            "batchSize must be a multiple of microBatchSize",
            ".batchSize",
            lambda m: m.batch_size is None or m.micro_batch_size == "auto" or m.batch_size % m.micro_batch_size == 0,
        ),
        Rule(
            "self.attentionImplementation != 'flash_attention_2'",
            "attentionImplementation flash_attention_2 is not available: the trainer image has no flash-attn package; "
            "use sdpa (PyTorch's fused attention, which also avoids the quadratic attention matrix)",
            ".attentionImplementation",
            lambda m: m.attention_implementation != "flash_attention_2",
        ),
        Rule(
            "double(self.learningRate) > 0.0 && double(self.learningRate) < 1.0",
            "learningRate must be a decimal string greater than 0 and less than 1, e.g. \"2e-4\"",
            ".learningRate",
            lambda m: Decimal(0) < Decimal(m.learning_rate) < Decimal(1),
        ),
    )


class Toleration(_ApiModel):
    """A core/v1 Toleration."""

    key: Annotated[str, Field(max_length=316)] | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: LabelValue | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


class ResourcesSpec(_ApiModel):
    """Compute for the training pod (all GPUs on one node)."""

    gpus: Annotated[int, Field(ge=0, le=16)] = 1
    """GPUs on one node; each holds a full replica (data parallel). 0 trains on CPU (demo models only)."""
    allowed_gpu_products: Annotated[list[GpuProductName], Field(max_length=32)] | None = None
    """Restrict to these products (node label values, e.g. NVIDIA-A100-SXM4-40GB or nvidia-l4)."""
    min_gpu_memory: Quantity | None = None
    """Only GPUs with at least this much memory, e.g. 40Gi."""
    cpu: Quantity | None = None
    memory: Quantity | None = None
    ephemeral_storage: Quantity | None = None
    """Scratch space for the model and dataset downloads."""
    node_selector: Annotated[dict[str, LabelValue], Field(max_length=32)] | None = None
    tolerations: Annotated[list[Toleration], Field(max_length=32)] | None = None
    priority_class_name: Annotated[str, Field(max_length=253)] | None = None
    kueue_queue: Annotated[LabelValue, Field(min_length=1)] | None = None
    """Kueue LocalQueue; the Job is created suspended and Kueue admits it."""


class OutputCredentials(_ApiModel):
    """Secret with S3 credentials; absent means workload identity."""

    name: DnsName
    access_key_id_key: SecretKey = "AWS_ACCESS_KEY_ID"
    secret_access_key_key: SecretKey = "AWS_SECRET_ACCESS_KEY"


class OutputSpec(_ApiModel):
    """Where checkpoints and the adapter go (also the credentials used for s3:// inputs)."""

    uri: Annotated[str, Field(max_length=1024, pattern=OUTPUT_URI_PATTERN)]
    """s3://bucket/prefix/ (trailing slash); the run lives under <uri><job>-<uid>/."""
    credentials_secret: OutputCredentials | None = None
    endpoint: Annotated[str, Field(max_length=512, pattern=r"^https?://[^\s]+$")] | None = None
    """S3 endpoint URL when not AWS (defaults from the operator's configuration)."""
    region: Annotated[str, Field(max_length=64, pattern=r"^[a-z0-9\-]+$")] | None = None


class WandbSpec(_ApiModel):
    """Weights & Biases reporting."""

    project: Annotated[str, Field(min_length=1, max_length=128)]
    entity: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    api_key_secret: SecretKeyRef


class TrackingSpec(_ApiModel):
    """Experiment tracking."""

    wandb: WandbSpec | None = None


class RunPolicySpec(_ApiModel):
    """Retries, deadlines and lifecycle. Only suspend may change after creation."""

    backoff_limit: Annotated[int, Field(ge=0, le=100)] = 3
    """Retries after failures that are not the job's fault (preemptions are not counted)."""
    active_deadline_seconds: Annotated[int, Field(ge=1, le=31_536_000)] | None = None
    suspend: bool = False
    """Stop the training pod (a checkpoint is saved) and keep the job; set back to false to resume."""
    ttl_seconds_after_finished: Annotated[int, Field(ge=0, le=31_536_000)] | None = None
    wait_for_capacity: bool = False
    """When no GPU fits, wait (state Queued) instead of failing at once."""

    rules = (
        Rule("self.backoffLimit == oldSelf.backoffLimit", "runPolicy.backoffLimit is immutable", ".backoffLimit"),
        Rule("self.waitForCapacity == oldSelf.waitForCapacity", "runPolicy.waitForCapacity is immutable", ".waitForCapacity"),
        Rule(
            "has(self.activeDeadlineSeconds) == has(oldSelf.activeDeadlineSeconds)"
            " && (!has(self.activeDeadlineSeconds) || self.activeDeadlineSeconds == oldSelf.activeDeadlineSeconds)",
            "runPolicy.activeDeadlineSeconds is immutable",
            ".activeDeadlineSeconds",
        ),
        Rule(
            "has(self.ttlSecondsAfterFinished) == has(oldSelf.ttlSecondsAfterFinished)"
            " && (!has(self.ttlSecondsAfterFinished) || self.ttlSecondsAfterFinished == oldSelf.ttlSecondsAfterFinished)",
            "runPolicy.ttlSecondsAfterFinished is immutable",
            ".ttlSecondsAfterFinished",
        ),
    )


def _quant_bits(m: FineTuneJobSpec) -> int | None:
    return m.quantization.bits if m.quantization is not None else None


class FineTuneJobSpec(_ApiModel):
    """A LoRA/QLoRA fine-tuning run. Immutable once created except runPolicy.suspend."""

    base_model: BaseModelSpec = Field(json_schema_extra=cel(immutable("baseModel")))
    dataset: DatasetSpec = Field(json_schema_extra=cel(immutable("dataset")))
    method: Method = "qlora"
    """qlora: 4-bit base (default); lora: base in the compute dtype (or 8-bit with quantization.bits 8)."""
    quantization: QuantizationSpec | None = Field(default=None, json_schema_extra=cel(immutable("quantization")))
    lora: LoraSpec = Field(default_factory=LoraSpec, json_schema_extra=defaulted_object("lora"))
    training: TrainingSpec = Field(json_schema_extra=cel(immutable("training")))
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec, json_schema_extra=defaulted_object("resources"))
    output: OutputSpec = Field(json_schema_extra=cel(immutable("output")))
    tracking: TrackingSpec | None = Field(default=None, json_schema_extra=cel(immutable("tracking")))
    run_policy: RunPolicySpec = Field(default_factory=RunPolicySpec, json_schema_extra={"default": {}})
    trainer_image: Annotated[str, Field(min_length=1, max_length=512, pattern=r"^[^\s]+$")] | None = None
    """This job's trainer image instead of the operator's; must be the operator's trainerImage or on its allowedTrainerImages."""

    rules = (
        Rule(
            "self.method != 'qlora' || !has(self.quantization) || !has(self.quantization.bits) || self.quantization.bits == 4",
            "method qlora needs 4-bit quantization: set quantization.bits to 4, or method to lora for an 8-bit base",
            ".quantization.bits",
            lambda m: m.method != "qlora" or _quant_bits(m) in (None, 4),
        ),
        Rule(
            "self.method != 'lora' || !has(self.quantization) || !has(self.quantization.bits) || self.quantization.bits == 8",
            "method lora with 4-bit quantization is qlora: set method to qlora, or quantization.bits to 8",
            ".quantization.bits",
            lambda m: m.method != "lora" or _quant_bits(m) in (None, 8),
        ),
        Rule("self.method == oldSelf.method", "method is immutable; delete and re-create the job to change it", ".method"),
        Rule(
            "has(self.quantization) == has(oldSelf.quantization)",
            "quantization is immutable; delete and re-create the job to change it",
            ".quantization",
        ),
        Rule(
            "has(self.tracking) == has(oldSelf.tracking)",
            "tracking is immutable; delete and re-create the job to change it",
            ".tracking",
        ),
        Rule(
            "has(self.trainerImage) == has(oldSelf.trainerImage)"
            " && (!has(self.trainerImage) || self.trainerImage == oldSelf.trainerImage)",
            "trainerImage is immutable; delete and re-create the job to change it",
            ".trainerImage",
        ),
    )

    def quantization_bits(self) -> int | None:
        """4 for qlora, 8 or None (unquantized) for lora."""
        bits = _quant_bits(self)
        return 4 if self.method == "qlora" and bits is None else bits

    def effective_quantization(self) -> QuantizationSpec:
        return self.quantization if self.quantization is not None else QuantizationSpec()


# --- status ---------------------------------------------------------------------------------


class Condition(_ApiModel):
    """A metav1.Condition."""

    type: Annotated[str, Field(max_length=316, pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$")]
    status: Literal["True", "False", "Unknown"]
    observed_generation: Annotated[int, Field(ge=0)] | None = None
    last_transition_time: Annotated[str, Field(json_schema_extra={"format": "date-time"})]
    reason: Annotated[str, Field(min_length=1, max_length=1024, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")]
    message: Annotated[str, Field(max_length=32768)]


Timestamp = Annotated[str, Field(json_schema_extra={"format": "date-time"})]


class ResolvedStatus(_ApiModel):
    """Values the operator resolved from the spec; the trainer uses exactly these, also on resume."""

    lora_alpha: int | None = None
    target_modules: list[str] | None = None
    quantization: Literal["nf4", "fp4", "int8", "none"] | None = None
    compute_dtype: Literal["bf16", "fp16", "fp32", "auto"] | None = None
    """auto while the eligible GPUs differ (bf16 on compute capability ≥ 8.0, fp16 below); set to the dtype used once the pod is placed."""
    target_parameters: list[str] | None = None
    """Fused expert parameters adapted through PEFT's target_parameters (MoE models), a subset of targetModules."""
    micro_batch_size: int | None = None
    gradient_accumulation: int | None = None
    effective_batch_size: int | None = None
    """Sequences per optimizer step over all GPUs: microBatchSize × gradientAccumulation × resources.gpus."""


class EstimateBreakdown(_ApiModel):
    """Bytes per GPU at the training peak, by term."""

    linear_weights: int = 0
    """Frozen decoder Linear weights in their storage format (NF4/int8, or the compute dtype for lora) with quantization constants."""
    expert_weights: int = 0
    """Mixture-of-experts: all routed experts and routers, in the compute dtype (transformers 5.24 stores experts as fused 3-D parameters, which bitsandbytes does not quantize); 0 for dense models."""
    embedding_weights: int = 0
    """Embeddings, LM head, norms (and a vision tower), kept in the compute dtype."""
    adapter: int = 0
    """LoRA parameters, gradients and AdamW states (fp32)."""
    activations: int = 0
    """Saved activations (checkpointed or not) plus one layer's recompute."""
    logits: int = 0
    """Logits and loss: batch × sequence × vocabulary in bf16 and the fp32 upcast, with its gradient."""
    overhead: int = 0
    """CUDA context, cuBLAS workspace, dequantization buffers and allocator slack."""
    safety_margin: int = 0
    """Added while the estimate is not calibrated against our own stack."""


class EstimateStatus(_ApiModel):
    """The VRAM estimate per GPU."""

    total_bytes: int | None = None
    total: Annotated[str, Field(max_length=32)] | None = None
    """Human-readable total, e.g. "46.2Gi"."""
    breakdown: EstimateBreakdown | None = None
    trainable_params: int | None = None
    total_params: int | None = None
    trainable_percent: StatusDecimal | None = None
    calibrated: bool | None = None
    safety_margin: StatusDecimal | None = None
    """Fraction added to the computed peak while uncalibrated."""


class PlacementStatus(_ApiModel):
    """Where the job can run and where it runs."""

    eligible_products: list[str] | None = None
    """Products the job may run on, in order of preference (cheapest first with gpuPrices, else smallest memory)."""
    warnings: Annotated[list[Annotated[str, Field(max_length=1024)]], Field(max_length=16)] | None = None
    """Caveats of the placement, e.g. GPU nodes whose driver version cannot be checked."""
    gpu_product: str | None = None
    """The product of the node the pod was scheduled to."""
    node: str | None = None
    pod: Annotated[str, Field(max_length=253)] | None = None
    """The current training pod; a new name means a new attempt (the old pod may be gone already)."""


class ProgressStatus(_ApiModel):
    """Training progress copied from the trainer's progress ConfigMap."""

    phase: Literal["baseline", "training", "checkpointing", "uploading", "done"] | None = None
    step: int | None = None
    total_steps: int | None = None
    epoch: StatusDecimal | None = None
    train_loss: StatusDecimal | None = None
    eval_loss: StatusDecimal | None = None
    tokens_per_second: StatusDecimal | None = None
    percent: Annotated[int, Field(ge=0, le=100)] | None = None
    eta_seconds: int | None = None
    updated_at: Timestamp | None = None


class CheckpointStatus(_ApiModel):
    step: int
    uri: str
    time: Timestamp | None = None


class AdapterStatus(_ApiModel):
    """The trained adapter in S3."""

    uri: str
    size_bytes: int | None = None
    sha256: Annotated[str, Field(pattern=r"^[a-f0-9]{64}$")] | None = None
    manifest_uri: str | None = None


class DisruptionStatus(_ApiModel):
    """The last preemption, eviction, interruption or lost node of the training pod."""

    reason: str
    message: str | None = None
    time: Timestamp | None = None
    pod: str | None = None
    """The training pod it happened to (each pod's disruption is counted once)."""


class FailureStatus(_ApiModel):
    reason: str
    message: str | None = None


class DataStatus(_ApiModel):
    """Dataset statistics from inspection."""

    examples: int | None = None
    train: int | None = None
    validation: int | None = None
    tokens_p50: int | None = None
    tokens_p95: int | None = None
    tokens_max: int | None = None
    truncated_fraction: StatusDecimal | None = None
    warnings: Annotated[list[Annotated[str, Field(max_length=1024)]], Field(max_length=32)] | None = None
    loss_masking: Annotated[str, Field(max_length=64)] | None = None
    """What the loss covers, as the inspection decided: assistant_only, completion_only or none (trainOnInputs)."""
    chat_template: Annotated[str, Field(max_length=128)] | None = None
    """The chat template the trainer renders with (a marked variant's name, or the model's own)."""


class FineTuneJobStatus(_ApiModel):
    """Observed state, written by the operator through the status subresource."""

    observed_generation: int | None = None
    state: State | None = None
    conditions: list[Condition] | None = Field(
        default=None,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    resolved: ResolvedStatus | None = None
    estimate: EstimateStatus | None = None
    placement: PlacementStatus | None = None
    progress: ProgressStatus | None = None
    data: DataStatus | None = None
    baseline_eval_loss: StatusDecimal | None = None
    final_eval_loss: StatusDecimal | None = None
    last_checkpoint: CheckpointStatus | None = None
    adapter: AdapterStatus | None = None
    attempts: int | None = None
    disruptions: int | None = None
    """Attempts ended by a disruption (preemption, eviction, deletion, lost node): not failures."""
    last_disruption: DisruptionStatus | None = None
    job_name: str | None = None
    start_time: Timestamp | None = None
    completion_time: Timestamp | None = None
    failure: FailureStatus | None = None


# --- user-facing validation -----------------------------------------------------------------


def prune_nulls(value: Any) -> Any:
    """The spec as the API server stores it: a field set to null is dropped (no field of the schema is
    nullable), so its default applies; nulls inside lists stay (and are refused)."""
    if isinstance(value, dict):
        return {k: prune_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [prune_nulls(v) for v in value]
    return value


def spec_errors(spec: Any) -> list[str]:
    """Every problem with a spec dict, as ``spec.<camelCase path>: <what to do>`` lines.

    As strict as the API server: camelCase keys only, and no coercion (an unquoted 2e-4 is a
    number, not the string learningRate needs; "4" is not an integer). The estimate command and the
    operator both call this, so both accept exactly what the CRD accepts.
    """
    found: list[Any] = []
    try:
        FineTuneJobSpec.model_validate(prune_nulls(spec), strict=True, by_alias=True, by_name=False)
    except ValidationError as exc:
        found = exc.errors(include_url=False)
    if spec != prune_nulls(spec):
        # strict decoding refuses an unknown field even when it is null, before nulls are dropped
        try:
            FineTuneJobSpec.model_validate(spec, strict=True, by_alias=True, by_name=False)
        except ValidationError as exc:
            seen = {tuple(e["loc"]) for e in found}
            found += [e for e in exc.errors(include_url=False) if e["type"] == "extra_forbidden" and tuple(e["loc"]) not in seen]
    return _format_errors(found)


# What each pattern accepts, in words (messages never show the regex).
_PATTERN_WORDS: dict[str, str] = {
    MODEL_URI_PATTERN: "hf://org/name, s3://bucket/prefix/ (trailing slash), pvc://claim/path or an absolute path",
    DATA_URI_PATTERN: "s3://bucket/key.jsonl, hf://datasets/org/name[/file], pvc://claim/path or an absolute path",
    OUTPUT_URI_PATTERN: "s3://bucket/prefix/ with a lowercase bucket name (3-63 letters, digits, '.' or '-') and a trailing slash",
    QUANTITY_PATTERN: "a Kubernetes quantity such as 16Gi, 500Mi or 4",
    r"^0(\.[0-9]{1,6})?$": 'a quoted decimal from 0 up to (not including) 1 with at most 6 decimals, e.g. "0.05"',
    r"^[0-9]{1,6}(\.[0-9]{1,12})?([eE][-+]?[0-9]{1,2})?$": 'a quoted non-negative decimal, e.g. "2e-4" or "0.0002"',
    r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$": "a lowercase DNS name (letters, digits, '-' and '.', starting and ending with a letter or digit)",
    r"^[-._a-zA-Z0-9]+$": "letters, digits, '-', '_' and '.'",
    r"^[A-Za-z0-9_.\-]+$": "letters, digits, '_', '.' and '-' (a module or product name, no spaces or slashes)",
    r"^[A-Za-z0-9_.\-/]+$": "a commit sha, tag or branch (letters, digits, '_', '.', '-' and '/')",
    r"^https?://[^\s]+$": "an http:// or https:// URL",
    r"^[a-z0-9\-]+$": "a region name such as us-east-1 (lowercase letters, digits and '-')",
    r"^[^\s]+$": "an image reference without spaces, e.g. registry.example/team/trainer:1.2.0",
}
_TYPE_ERRORS = {"string_type", "int_type", "int_parsing", "int_from_float", "bool_type", "bool_parsing", "dict_type",
                "model_type", "model_attributes_type", "list_type", "float_type", "literal_error"}


def _format_errors(errors: Iterable[Any]) -> list[str]:
    by_path: dict[str, list[tuple[str, str]]] = {}
    for err in errors:
        path = _path(err["loc"])
        if err["type"] == "rule":
            path += err.get("ctx", {}).get("field_path", "")
        entry = (err["type"], _message(err))
        if entry[1] not in [m for _, m in by_path.setdefault(path, [])]:
            by_path[path].append(entry)
    out = []
    for path, entries in by_path.items():
        # a union (int or quantity string) reports each member: the type mismatch of the other
        # member says nothing the pattern's words do not
        if len(entries) > 1 and any(kind not in _TYPE_ERRORS for kind, _ in entries):
            entries = [e for e in entries if e[0] not in _TYPE_ERRORS]
        out.append(f"{path}: {' or '.join(m for _, m in entries)}")
    return out


def _is_member_tag(part: str) -> bool:
    return "[" in part or part in ("int", "str", "bool") or part.startswith(("constrained-", "function-", "literal"))


def _path(loc: Sequence[int | str]) -> str:
    out = "spec"
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _is_member_tag(part):
            continue  # a union member tag, not a field
        else:
            out += f".{part}"
    return out


def _field_name(err: Any) -> str:
    names = [p for p in err["loc"] if isinstance(p, str) and not _is_member_tag(p)]
    return names[-1] if names else "value"


def _yaml_scalar(value: Any) -> str:
    return "true" if value is True else "false" if value is False else str(value)


def _message(err: Any) -> str:
    kind, ctx, got = err["type"], err.get("ctx", {}), err.get("input")
    name = _field_name(err)
    if kind == "rule":
        return str(err["msg"])
    if kind == "missing":
        return "required"
    if kind == "extra_forbidden":
        camel = to_camel(str(err["loc"][-1])) if err["loc"] else ""
        if camel and camel != err["loc"][-1]:
            return f"unknown field; fields are camelCase: write {camel}"
        return "unknown field; check its spelling and indentation"
    if kind in ("less_than_equal", "less_than"):
        op = "≤" if kind == "less_than_equal" else "<"
        return f"must be {op} {ctx.get('le', ctx.get('lt'))} (got {got!r})"
    if kind in ("greater_than_equal", "greater_than"):
        op = "≥" if kind == "greater_than_equal" else ">"
        return f"must be {op} {ctx.get('ge', ctx.get('gt'))} (got {got!r})"
    if kind == "string_pattern_mismatch":
        words = _PATTERN_WORDS.get(str(ctx.get("pattern")), "a value of the documented form (see docs/api.md)")
        return f"must be {words} (got {got!r})"
    if kind == "string_type":
        if isinstance(got, float | int) and not isinstance(got, bool):
            what = "decimals" if isinstance(got, float) else "this number"
            return f'must be a string: quote {what}, e.g. {name}: "{_yaml_scalar(got)}"'
        return f"must be a string (got {got!r})"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        if isinstance(got, str):
            return f"must be a whole number without quotes, e.g. {name}: {got.strip() or 1} (got the string {got!r})"
        return f"must be a whole number (got {got!r})"
    if kind in ("bool_type", "bool_parsing"):
        return f"must be true or false without quotes (got {got!r})"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return f"must be a mapping of fields (got {got!r})"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')} (got {got!r})"
    if kind in ("too_long", "string_too_long"):
        return f"too long (at most {ctx.get('max_length')})"
    if kind in ("too_short", "string_too_short"):
        return f"too short (at least {ctx.get('min_length')})"
    if kind == "list_type":
        return f"must be a list (got {got!r}); write presets as [auto] or [all-linear]" if isinstance(got, str) else "must be a list"
    return f"{err['msg']} (got {got!r})"
