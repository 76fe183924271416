"""Hypothesis strategies for FineTuneJob specs, shared by the unit and integration tiers.

A spec starts from a valid one and gets a few mutations: a field set to a value near its bounds
(valid or not), a field set to arbitrary JSON, a required field removed, or an unknown key added.
Every value is plain JSON (no NaN or infinity, no surrogates), so the same document can go to the
pydantic models, to the ``estimate`` command as a file, and to the API server.

Imported by name (``tests/`` is on sys.path through its conftest); tests are not a package.
"""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

# Bounded and machine-independent: a fixed number of examples, derandomized (the same examples
# on every machine and run), no example database, no deadline (a slow CI runner is not a failure).
BOUNDED = settings(
    derandomize=True, database=None, deadline=None, print_blob=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

BASE: dict[str, Any] = {
    "baseModel": {"uri": "hf://meta-llama/Llama-3.1-8B-Instruct"},
    "dataset": {"trainUri": "s3://data/train.jsonl"},
    "training": {"maxSteps": 10},
    "output": {"uri": "s3://adapters/team/"},
}

# Printable text without the characters a regex is made of: a refusal that quotes the input back
# must still never look like a pattern, so the input must not look like one either.
_ALPHABET = st.characters(
    codec="utf-8", exclude_categories=("Cs", "Cc"), exclude_characters="^$\\[]{}|*+?",
)
TEXT = st.text(_ALPHABET, max_size=24)
KEYS = st.text(st.characters(codec="ascii", categories=("Ll", "Lu", "Nd"), include_characters="_-."), min_size=1, max_size=16)

JSON = st.recursive(
    st.none() | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=3),
    max_leaves=6,
)


def _near(*values: Any) -> st.SearchStrategy[Any]:
    return st.sampled_from(values)


# (path, values near the field's rules: valid ones and ones just past a bound)
FIELDS: list[tuple[tuple[str, ...], st.SearchStrategy[Any]]] = [
    (("baseModel", "uri"), _near("hf://meta-llama/Llama-3.1-8B-Instruct", "hf://meta-llama/Llama-3.1-8B-Instruct/extra",
                                  "s3://models/llama/", "s3://Models/llama", "http://example.com/model", "hf://x")),
    (("baseModel", "revision"), _near("main", "0123abcd", "release/v1", "", "has space")),
    (("baseModel", "trustRemoteCode"), _near(True, False, "true", 1)),
    (("baseModel", "credentialsSecret"), _near({"name": "hf"}, {"name": "hf", "key": "TOKEN"}, {"name": "HF"}, {}, "hf")),
    (("dataset", "trainUri"), _near("s3://data/train.jsonl", "/data/train.jsonl", "hf://datasets/org/name", "s3://data/",
                                    "data.jsonl", "pvc://claim/train.jsonl")),
    (("dataset", "validationUri"), _near("s3://data/val.jsonl", "s3://d/", None)),
    (("dataset", "validationSplit"), _near("0", "0.1", "0.999999", "0.9999999", "1", "0.5", 0.1, 0, "-0.1")),
    (("dataset", "format"), _near("auto", "messages", "prompt_completion", "text", "chatml", "")),
    (("dataset", "maxSeqLength"), _near(16, 15, 2048, 131072, 262144, 262145, 2048.0, "2048", -1)),
    (("dataset", "packing"), _near(True, False, "yes", 0)),
    (("dataset", "trainOnInputs"), _near(True, False, None)),
    (("dataset", "systemPrompt"), TEXT),
    (("method",), _near("qlora", "lora", "full", "QLoRA")),
    (("quantization", "bits"), _near(4, 8, 16, 4.0, "4", None)),
    (("quantization", "type"), _near("nf4", "fp4", "int4")),
    (("quantization", "doubleQuant"), _near(True, False, "false")),
    (("quantization", "computeDtype"), _near("auto", "bf16", "fp16", "fp32")),
    (("lora", "r"), _near(1, 0, 16, 256, 257, 8.5, "16")),
    (("lora", "alpha"), _near(1, 0, 32, 4096, 4097, None)),
    (("lora", "dropout"), _near("0", "0.05", "0.999999", "1", "1.0", 0.05, "5%")),
    (("lora", "targetModules"), _near(["auto"], ["all-linear"], ["q_proj", "v_proj"], ["auto", "q_proj"], [], "auto",
                                      ["c_attn"], ["q proj"], ["q_proj"] * 65)),
    (("lora", "useDora"), _near(True, False)),
    (("lora", "useRslora"), _near(True, False, "no")),
    (("training", "epochs"), _near(1, 0, 1000, 1001, None)),
    (("training", "maxSteps"), _near(1, 0, 10, 10_000_000, 10_000_001, 10.0, "10", None)),
    (("training", "microBatchSize"), _near(1, "auto", 0, 4, 1024, 1025, "2", "Auto")),
    (("training", "gradientAccumulation"), _near(1, 0, 4, 4096, 4097)),
    (("training", "batchSize"), _near(1, 0, 6, 16, 65536, 65537)),
    (("training", "learningRate"), _near("2e-4", "0.0002", "1", "0", "0.999", "1e-9", "2E-4", 2e-4, 0.0002, "abc", "1e100")),
    (("training", "scheduler"), _near("linear", "cosine", "constant", "constant_with_warmup", "polynomial")),
    (("training", "warmupRatio"), _near("0", "0.03", "1", 0.03)),
    (("training", "weightDecay"), _near("0", "0.01", "-0.01", 0)),
    (("training", "gradientCheckpointing"), _near(True, False)),
    (("training", "attentionImplementation"), _near("sdpa", "eager", "flash_attention_2", "flash")),
    (("training", "seed"), _near(0, -1, 42, 2147483647, 2147483648)),
    (("training", "checkpoint"), _near({}, {"everySteps": 5}, {"everySteps": 0}, {"everyMinutes": 1441}, {"keep": 0},
                                       {"keep": 100}, {"every_steps": 5}, None)),
    (("training", "evalSteps"), _near(1, 0, 10)),
    (("resources", "gpus"), _near(0, 1, 2, 8, 16, 17, -1, "1")),
    (("resources", "allowedGpuProducts"), _near(["NVIDIA-A100-SXM4-40GB"], [], ["has space"], "nvidia-l4")),
    (("resources", "minGpuMemory"), _near("40Gi", "500Mi", 4, "4", "lots", -1, "1.5Ti", 40.5)),
    (("resources", "cpu"), _near("4", "500m", 4, "four")),
    (("resources", "memory"), _near("32Gi", "1e3", "32 Gi", 0)),
    (("resources", "nodeSelector"), _near({"pool": "gpu"}, {"pool": 1}, {}, ["pool"])),
    (("resources", "tolerations"), _near([{"key": "k", "operator": "Exists"}], [{"operator": "Maybe"}],
                                         [{"tolerationSeconds": 300}], [{"tolerationSeconds": 2**63}], [{"tolerationSeconds": 2**70}])),
    (("resources", "priorityClassName"), _near("high", "")),
    (("resources", "kueueQueue"), _near("team-a", "")),
    (("output", "uri"), _near("s3://adapters/team/", "s3://adapters/", "s3://adapters/team", "s3://Adapters/team/",
                              "gs://adapters/team/", "s3://ab/")),
    (("output", "endpoint"), _near("http://127.0.0.1:8333", "https://s3.example.com", "ftp://s3.example.com", "s3.example.com")),
    (("output", "region"), _near("us-east-1", "US-EAST-1", "")),
    (("output", "credentialsSecret"), _near({"name": "s3"}, {"name": "s3", "accessKeyIdKey": "id"}, {"accessKeyIdKey": "id"})),
    (("tracking",), _near({}, {"wandb": {"project": "p", "apiKeySecret": {"name": "w", "key": "k"}}},
                          {"wandb": {"project": "", "apiKeySecret": {"name": "w", "key": "k"}}}, {"wandb": {"project": "p"}})),
    (("runPolicy", "backoffLimit"), _near(0, 3, 100, 101, -1)),
    (("runPolicy", "activeDeadlineSeconds"), _near(1, 0, 31_536_000, 31_536_001)),
    (("runPolicy", "suspend"), _near(True, False)),
    (("runPolicy", "ttlSecondsAfterFinished"), _near(0, 60, -1)),
    (("runPolicy", "waitForCapacity"), _near(True, False, "false")),
]

REQUIRED = [("baseModel",), ("baseModel", "uri"), ("dataset",), ("dataset", "trainUri"), ("training",), ("output",), ("output", "uri")]
OBJECTS = [("baseModel",), ("dataset",), ("quantization",), ("lora",), ("training",), ("resources",), ("output",), ("runPolicy",), ()]


def _set(spec: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = spec
    for key in path[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[path[-1]] = value


def _delete(spec: dict[str, Any], path: tuple[str, ...]) -> None:
    node: Any = spec
    for key in path[:-1]:
        node = node.get(key) if isinstance(node, dict) else None
    if isinstance(node, dict):
        node.pop(path[-1], None)


@st.composite
def _mutation(draw: st.DrawFn) -> tuple[str, tuple[str, ...], Any]:
    kind = draw(st.sampled_from(["near"] * 6 + ["junk", "delete", "unknown"]))
    if kind == "near":
        path, values = draw(st.sampled_from(FIELDS))
        return "set", path, draw(values)
    if kind == "junk":
        path = draw(st.sampled_from([p for p, _ in FIELDS] + [o for o in OBJECTS if o]))
        return "set", path, draw(JSON)
    if kind == "delete":
        return "delete", draw(st.sampled_from(REQUIRED)), None
    where = draw(st.sampled_from(OBJECTS))
    return "set", (*where, draw(st.sampled_from(["epochs_", "max_steps", "learning_rate", "extra", "Uri"]) | KEYS)), draw(JSON)


@st.composite
def specs(draw: st.DrawFn, max_mutations: int = 4) -> dict[str, Any]:
    """A FineTuneJob spec (a JSON-compatible dict), valid or not."""
    spec = copy.deepcopy(BASE)
    for op, path, value in draw(st.lists(_mutation(), min_size=1, max_size=max_mutations)):
        if op == "set":
            _set(spec, path, value)
        else:
            _delete(spec, path)
    return spec


# The placement refusals the API server cannot make: they need the model's architecture (module
# names, context length) or the operator's configuration. The estimate command and the operator
# make them; the schema accepts such a spec.
SEMANTIC_REASONS = {"TrustRemoteCodeNotAllowed", "SequenceTooLong", "UnknownTargetModule"}
UNKNOWN_MODEL = "is not in the built-in catalog; pass --model-config"


def estimate_schema_refusal(status: int, doc: dict[str, Any]) -> bool:
    """Whether the estimate command refused the spec as the schema does (exit 2 for the spec itself,
    not for a model it does not know or a rule that needs the model's architecture)."""
    if status != 2:
        return False
    if doc.get("reason") in SEMANTIC_REASONS:
        return False
    return not any(UNKNOWN_MODEL in e for e in doc.get("errors") or [])

# What a user-facing refusal must never contain: a regex, or a pydantic internal type or message.
INTERNALS = ("constrained-", "function-", "Input should", "pydantic", "type=", "errors.pydantic.dev",
             "literal[", "union[", "str_type", "int_type", "string_type", "model_type", "dict_type", "^", "(?")


def refusal_problems(line: str) -> list[str]:
    """Why one refusal line fails the contract: it must name a spec field in words."""
    problems = []
    if not line.startswith("spec") or ": " not in line:
        problems.append("does not start with the field path (spec.…: …)")
    problems += [f"contains {bad!r}" for bad in INTERNALS if bad in line]
    return problems
