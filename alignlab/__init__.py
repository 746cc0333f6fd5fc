"""alignlab: post-train language models with SFT, DPO and GRPO, from the command line or from Python.

>>> import alignlab
>>> sft = alignlab.sft(model="tiny", data=rows, max_steps=200)                      # doctest: +SKIP
>>> dpo = alignlab.dpo(model=sft, data=pairs_df, beta=0.1, max_steps=50)             # doctest: +SKIP
>>> grpo = alignlab.grpo(model=sft, data=prompts, rewards=["answer_format", my_reward])  # doctest: +SKIP
>>> grpo.metrics, grpo.eval(prompts=test_rows), grpo.chat("37+48=?")                  # doctest: +SKIP

Names are imported on first use, so `import alignlab` does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "sft": "alignlab.api", "dpo": "alignlab.api", "grpo": "alignlab.api", "evaluate": "alignlab.api",
    "build_config": "alignlab.api", "rm": "alignlab.api", "distill": "alignlab.api", "RewardModel": "alignlab.scoring.reward_model",
    "Run": "alignlab.api",
    "AlignlabError": "alignlab.errors", "ConfigError": "alignlab.errors", "DataError": "alignlab.errors",
    "SFTRunConfig": "alignlab.config.sections", "DPORunConfig": "alignlab.config.sections",
    "GRPORunConfig": "alignlab.config.sections", "EvalRunConfig": "alignlab.config.sections",
}
__all__ = ["AlignlabError", "ConfigError", "DPORunConfig", "DataError", "EvalRunConfig", "GRPORunConfig",
           "RewardModel", "Run", "SFTRunConfig", "build_config", "distill", "dpo", "evaluate", "grpo", "rm",
           "sft"]  # = sorted(_EXPORTS), a test checks

if TYPE_CHECKING:
    from alignlab.api import Run, build_config, distill, dpo, evaluate, grpo, rm, sft
    from alignlab.scoring.reward_model import RewardModel
    from alignlab.config.sections import DPORunConfig, EvalRunConfig, GRPORunConfig, SFTRunConfig
    from alignlab.errors import AlignlabError, ConfigError, DataError


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'alignlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
