"""The FineTuneJob trainer: inspection, data checks, QLoRA training, checkpoints and adapters in S3."""

__version__ = "0.1.0"
