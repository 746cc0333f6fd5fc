"""`alignlab eval MODEL eval.judge=RUBRIC eval.baseline=MODEL`: a judged win rate against a baseline.

Both models answer every prompt of data.prompts greedily (the model's answers are the task eval's, when it
ran); the `judge` section's server compares each pair of answers twice, with their positions swapped,
under the pairwise form of eval.judge (`alignlab.scoring.judge_reward.win_rate`). The result is the
table's `judge` section and eval.json's "judge": win_rate, wins, ties, losses, unjudged.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from alignlab.errors import ConfigError


def check_judged_eval(config) -> None:
    """Before any model loads: the settings a win rate needs, and one request to the judge server."""
    ev = config.eval
    if ev.judge is None:
        return
    if not ev.baseline:
        raise ConfigError("eval.judge needs eval.baseline=MODEL: the model whose answers are compared")
    if not config.data.prompts:
        raise ConfigError("eval.judge needs data.prompts=FILE: the prompts both models answer")
    from alignlab.scoring.judge_reward import judge_client

    judge_client(dataclasses.replace(config.judge, mode="pairwise", rubric=ev.judge)).close()


def greedy_answers(loaded, items: list, config) -> list[str]:
    from alignlab.generation.prompt_eval import evaluate_prompts

    result = evaluate_prompts(loaded.model, loaded.tokenizer, loaded.templater, items, [], None,
                              max_new_tokens=config.eval.max_new_tokens, batch_size=config.eval.batch_size)
    return [sample["completion"] for sample in result.samples]


def judged_win_rate(loaded, config, answers: Optional[list[str]] = None) -> dict:
    """The model's (`loaded`) win rate over eval.baseline on data.prompts; `answers`: its greedy answers
    when already made (one per prompt, in order)."""
    from alignlab.data.prompts import load_prompt_items
    from alignlab.model.inference import load_for_inference
    from alignlab.scoring.judge_reward import win_rate

    data = config.data
    items, _ = load_prompt_items(data.prompts, split=data.split, columns=data.columns, max_rows=data.max_rows,
                                 skip_bad_rows=data.skip_bad_rows, label=f"data.prompts ({data.prompts})")
    answers = answers if answers is not None and len(answers) == len(items) else greedy_answers(loaded, items, config)
    baseline = load_for_inference(config.eval.baseline, dtype=config.model.dtype,
                                  trust_remote_code=config.model.trust_remote_code,
                                  use_chat_template=data.chat_template, system_prompt=data.system_prompt)
    baseline_answers = greedy_answers(baseline, items, config)
    del baseline
    metrics = win_rate(config.judge, config.eval.judge, [item.prompt for item in items], answers, baseline_answers)
    return {"baseline": config.eval.baseline, "rubric": config.eval.judge, **metrics}
