"""`alignlab.sft / dpo / grpo / rm`: the same run config the CLI builds, the same trainers, a `Run` back."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from alignlab.api.inputs import DataLike, callable_spec, data_source, model_source, runs_root, specs
from alignlab.api.keywords import build_config, nest
from alignlab.api.evaluation import quiet_loading
from alignlab.api.run import Run
from alignlab.config.loading import update_config
from alignlab.errors import DataError, Interrupted


def _train(command: str, model, data, eval_data, config, tokenizer, values: dict) -> Run:
    import importlib

    from alignlab.engine.run_dir import default_run_dir
    from alignlab.trainers import TRAINERS

    for key in ("rewards", "tools"):
        if key in values:
            values[key] = specs(values[key])
    if callable(values.get("environment")):
        values["environment"] = callable_spec(values["environment"], 0)
    run_config = build_config(command, config, **values)
    root = runs_root(run_config)
    sources = {"model.name_or_path": model_source(model, tokenizer, root),
               "data.train": data_source(data, root, "train"), "data.eval": data_source(eval_data, root, "eval")}
    update_config(run_config, nest(run_config, {k: v for k, v in sources.items() if v is not None}))
    if not run_config.train.output_dir:  # fixed now, so the Run knows where the trainer writes
        run_config.train.output_dir = str(default_run_dir(command, run_config))
    module, function = TRAINERS[command]
    trainer = getattr(importlib.import_module(module), function)
    try:
        with quiet_loading():
            trained = trainer(run_config)
    except Interrupted as exc:
        print(f"alignlab.{command}: {exc}")
        return Run(Path(run_config.train.output_dir), command, interrupted=True)
    except DataError as exc:
        raise _in_memory_rows(exc, {"data": sources["data.train"], "eval_data": sources["data.eval"]},
                              {"data": data, "eval_data": eval_data}) from None
    return Run(trained.run_dir, command)


def _in_memory_rows(exc: DataError, files: dict, given: dict) -> DataError:
    """A bad row of in-memory data named as the user knows it (`data= row 3`), not by the file it was written to."""
    message = str(exc)
    for argument, path in files.items():
        if path is None or isinstance(given[argument], (str, os.PathLike)):
            continue
        message = re.sub(rf"{re.escape(path)}, line (\d+)", lambda m: f"{argument}= row {int(m.group(1)) - 1}", message)
        message = message.replace(path, f"{argument}= (written to {path})")
    return DataError(message)


def sft(model: Any = None, data: DataLike = None, *, eval_data: DataLike = None, config: Any = None,
        tokenizer: Any = None, **options) -> Run:
    """Supervised fine-tuning; returns the `Run`.

    >>> run = alignlab.sft(model="Qwen/Qwen2.5-0.5B-Instruct", data=rows, max_steps=200, lora=True)  # doctest: +SKIP
    """
    return _train("sft", model, data, eval_data, config, tokenizer, options)


def dpo(model: Any = None, data: DataLike = None, *, eval_data: DataLike = None, config: Any = None,
        tokenizer: Any = None, **options) -> Run:
    """Direct Preference Optimization on prompt/chosen/rejected rows (or any format `alignlab dpo` reads).

    >>> run = alignlab.dpo(model=sft_run.final, data=pairs_df, beta=0.1, max_steps=50)  # doctest: +SKIP
    """
    return _train("dpo", model, data, eval_data, config, tokenizer, options)


def grpo(model: Any = None, data: DataLike = None, *, eval_data: DataLike = None, config: Any = None,
         tokenizer: Any = None, **options) -> Run:
    """GRPO on prompt rows; `rewards=` and `tools=` take names, import paths and Python callables.

    >>> run = alignlab.grpo(model=sft_run, data=prompts, rewards=["answer_format", my_reward],
    ...                     num_generations=8)  # doctest: +SKIP
    """
    return _train("grpo", model, data, eval_data, config, tokenizer, options)


def rm(model: Any = None, data: DataLike = None, *, eval_data: DataLike = None, config: Any = None,
       tokenizer: Any = None, **options) -> Run:
    """A Bradley-Terry reward model on preference rows (any format `alignlab rm` reads); score with
    `alignlab.RewardModel.load(run)`, or use it in GRPO as `rewards=[f"rm:{run.run_dir}"]`.

    >>> run = alignlab.rm(model=sft_run.final, data=pairs_df, lora=True, max_steps=100)  # doctest: +SKIP
    """
    return _train("rm", model, data, eval_data, config, tokenizer, options)


def distill(model: Any = None, data: DataLike = None, *, teacher: Any = None, eval_data: DataLike = None,
            config: Any = None, tokenizer: Any = None, **options) -> Run:
    """On-policy distillation: the student (`model`) samples completions of the prompt rows and the
    `teacher` (a path, hub id or a Run of the same tokenizer) grades every token.

    >>> run = alignlab.distill(model=small_sft.final, teacher=grpo_run, data=prompts, max_steps=60)  # doctest: +SKIP
    """
    if teacher is not None:
        options["distill.teacher"] = str(getattr(teacher, "run_dir", teacher))  # a Run: its directory
    return _train("distill", model, data, eval_data, config, tokenizer, options)
