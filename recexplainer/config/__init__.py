"""Configuration: typed schemas registered with Hydra (:mod:`.schema`) and the start-up checks
(:mod:`.validate`)."""

from recexplainer.config.schema import (
    AlignerConfig,
    AmazonDataset,
    Config,
    EvaluationConfig,
    ExplainConfig,
    JudgeConfig,
    LLMConfig,
    PromptConfig,
    RecboleAtomicDataset,
    SyntheticDataset,
    TaskConfig,
    cpu_precision,
    register_configs,
)
from recexplainer.config.validate import ConfigError, validate

__all__ = [
    "AlignerConfig",
    "AmazonDataset",
    "Config",
    "ConfigError",
    "EvaluationConfig",
    "ExplainConfig",
    "JudgeConfig",
    "LLMConfig",
    "PromptConfig",
    "RecboleAtomicDataset",
    "SyntheticDataset",
    "TaskConfig",
    "cpu_precision",
    "register_configs",
    "validate",
]
