"""A model ready to generate, from what a user types: a hub id, a local model or adapter dir, or a run dir.

Shared by `alignlab eval`, `chat` and `compare`: each loads the policy in eval mode with its own
tokenizer and templater (models may differ in vocabulary and chat template), on the GPU when there is one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class LoadedModel:
    label: str  # short name for tables: the run dir's or model dir's name, or the hub id
    path: str  # what was asked for
    model: object
    tokenizer: object
    templater: object


def pick_dtype(dtype: str) -> str:
    """`auto` = bfloat16 on a GPU, float32 on CPU (CPU half precision is slow and lossy)."""
    if dtype != "auto":
        return dtype
    return "bfloat16" if torch.cuda.is_available() else "float32"


def model_label(name_or_path: str) -> str:
    path = Path(name_or_path)
    if path.exists():
        name = path.resolve().name
        return path.resolve().parent.name if name == "final" else name
    return name_or_path


def load_for_inference(name_or_path: str, *, dtype: str = "auto", trust_remote_code: bool = False,
                       use_chat_template: bool = True, system_prompt=None, device=None) -> LoadedModel:
    from alignlab.config import ModelConfig
    from alignlab.data.templates import Templater
    from alignlab.model.loading import load_model, load_tokenizer, stop_token_ids

    config = ModelConfig(name_or_path=name_or_path, dtype=pick_dtype(dtype), trust_remote_code=trust_remote_code)
    tokenizer = load_tokenizer(name_or_path, trust_remote_code=trust_remote_code)
    model = load_model(config, None, for_training=False)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device).eval().requires_grad_(False)
    templater = Templater(tokenizer, use_chat_template=use_chat_template, system_prompt=system_prompt,
                          stop_ids=stop_token_ids(tokenizer, model.generation_config))
    return LoadedModel(model_label(name_or_path), name_or_path, model, tokenizer, templater)
