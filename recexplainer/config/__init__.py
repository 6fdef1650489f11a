"""Configuration: typed schemas registered with Hydra (:mod:`.schema`) and the start-up checks
(:mod:`.validate`)."""

from recexplainer.config.schema import (
    AlignerConfig,
    AlignmentConfig,
    AmazonDataset,
    Config,
    EvaluationConfig,
    ExplainConfig,
    JudgeConfig,
    LLMConfig,
    RecboleAtomicDataset,
    SyntheticDataset,
    TaskConfig,
    cpu_precision,
    register_configs,
)
from recexplainer.config.validate import ConfigError, validate

__all__ = [
    "AlignerConfig",
    "AlignmentConfig",
    "AmazonDataset",
    "Config",
    "ConfigError",
    "EvaluationConfig",
    "ExplainConfig",
    "JudgeConfig",
    "LLMConfig",
    "RecboleAtomicDataset",
    "SyntheticDataset",
    "TaskConfig",
    "cpu_precision",
    "register_configs",
    "validate",
]
