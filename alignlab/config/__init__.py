"""Typed, closed run configs: the only home of defaults.

A config is a dataclass of sections (`model`, `data`, `train`, `lora`, plus `dpo` or `grpo`).
It is built from a YAML file and `a.b=c` overrides; an unknown key fails before any work with the
closest valid key, and a value of the wrong type names the key and the type expected.
This package imports nothing from alignlab but the error type: `sections` (the dataclasses),
`loading` (YAML and overrides into them), `validation` (ranges and choices, checked at load).
"""

from __future__ import annotations

from alignlab.config.sections import (
    DATA_FORMATS, DPOConfig, DPORunConfig, DataConfig, EvalConfig, EvalDataConfig, EvalRunConfig, GRPOConfig, GRPORunConfig, IterateConfig, IterateRunConfig, LoraConfig, ModelConfig, RUN_CONFIGS, SFTRunConfig, TrainConfig, config_sections,
)
from alignlab.config.loading import (
    infer_command, load_config, parse_overrides, parse_value, to_dict, to_yaml, was_set,
)
from alignlab.config.validation import (
    RANGES, check_ranges, in_range, validate, validate_eval,
)

__all__ = [
    "DATA_FORMATS",
    "DPOConfig",
    "DPORunConfig",
    "DataConfig",
    "EvalConfig",
    "EvalDataConfig",
    "EvalRunConfig",
    "GRPOConfig",
    "GRPORunConfig",
    "IterateConfig",
    "IterateRunConfig",
    "LoraConfig",
    "ModelConfig",
    "RANGES",
    "RUN_CONFIGS",
    "SFTRunConfig",
    "TrainConfig",
    "check_ranges",
    "config_sections",
    "in_range",
    "infer_command",
    "load_config",
    "parse_overrides",
    "parse_value",
    "to_dict",
    "to_yaml",
    "validate",
    "validate_eval",
    "was_set",
]
