"""`alignlab.evaluate`: the eval command from Python."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Union

from alignlab.api.inputs import DataLike, data_source, specs
from alignlab.api.keywords import build_config, nest
from alignlab.config.loading import update_config
from alignlab.errors import ConfigError


@contextlib.contextmanager
def quiet_loading():
    """transformers' per-load progress bars off while alignlab works, as the CLI has them."""
    from transformers.utils import logging as hf_logging

    from alignlab.engine.sharding import import_deepspeed_only_when_used

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    import_deepspeed_only_when_used()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def evaluate(model: Union[str, os.PathLike, Any], prompts: DataLike = None, pairs: DataLike = None, *,
             config: Any = None, **options) -> dict:
    """`alignlab eval`: task metrics on `prompts`, preference accuracy on `pairs` (or a DPO run's held-out
    pairs); the results as a dict, also written to the run's eval.json.

    >>> alignlab.evaluate("runs/grpo_tiny", prompts=test_rows, num_samples=4)["task"]["accuracy"]  # doctest: +SKIP
    """
    from alignlab.commands.evaluate import fill_from_run, run_eval

    model = getattr(model, "run_dir", model)  # a Run
    for key in ("rewards", "tools"):
        if key in options:
            options[key] = specs(options[key])
    eval_config = build_config("eval", config, **options)
    root = Path("runs").absolute()
    sources = {"model.name_or_path": str(model), "data.prompts": data_source(prompts, root, "prompts"),
               "data.pairs": data_source(pairs, root, "pairs")}
    update_config(eval_config, nest(eval_config, {k: v for k, v in sources.items() if v is not None}))
    notes, held_out = fill_from_run(eval_config)
    if not eval_config.data.prompts and not eval_config.data.pairs and held_out is None:
        raise ConfigError("nothing to evaluate: pass prompts= and/or pairs=")
    with quiet_loading():
        return run_eval(eval_config, notes, held_out)
