"""The judge where rewards and labels are made: `judge` as a GRPO / iterate reward, ranking responses
for `alignlab pairs --judge`, and the position-swapped win rate of `alignlab eval eval.judge=...`.

All three use one `JudgeClient` (alignlab/scoring/judge.py), so they share its cache, limits and metrics.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Optional, Sequence

from alignlab.errors import ConfigError
from alignlab.scoring.judge import JudgeClient

log = logging.getLogger("alignlab")
JUDGE_SPEC = "judge"


def is_judge_spec(spec: Any) -> bool:
    return isinstance(spec, str) and spec.strip() == JUDGE_SPEC


class JudgeReward:
    """`judge` as a reward function: fn(completions, prompts=..., **columns) -> list[float | None] in [0, 1].

    Group mode judges each run of `group_size` rows (GRPO's G completions of one prompt) in one request.
    `step_metrics()` gives judge/* since the last call; the trainer logs them with the step.
    """

    __name__ = JUDGE_SPEC

    def __init__(self, client: JudgeClient, group_size: Optional[int] = None):
        self.client, self.group_size = client, group_size

    def __call__(self, completions: list[str], prompts: Optional[list] = None, **columns: Any) -> list[Optional[float]]:
        if prompts is None:
            raise ValueError("the judge needs the prompts: call it with prompts=[...], one per completion")
        answers = columns.get(self.client.settings.answer_column)
        return self.client.score(prompts, completions, answers, group_size=self.group_size)

    def step_metrics(self) -> dict[str, float]:
        return self.client.step_metrics()


def judge_client(settings, *, preflight: bool = True) -> JudgeClient:
    """A client for the `judge` section; with `preflight`, one request proves the server, model and key work."""
    client = JudgeClient(settings)
    if preflight:
        client.preflight()
    return client


def load_judge_reward(settings, group_size: Optional[int] = None, *, preflight: bool = True) -> JudgeReward:
    if settings is None:
        raise ConfigError("the `judge` reward needs a `judge` section (judge.base_url, judge.model) in this config")
    return JudgeReward(judge_client(settings, preflight=preflight), group_size)


def step_metrics(reward_fns: Sequence[tuple[str, Any]]) -> dict[str, float]:
    """judge/* (and any other reward's step_metrics()) for a trainer's step."""
    metrics: dict[str, float] = {}
    for _, fn in reward_fns:
        if callable(getattr(fn, "step_metrics", None)):
            metrics.update(fn.step_metrics())
    return metrics


# ------------------------------------------------------------------ alignlab pairs --judge


def judge_settings(overrides: list[str]):
    """A `judge` section from `judge.KEY=VALUE` words (`alignlab pairs ... --judge judge.base_url=URL ...`),
    checked as a config file's would be."""
    from alignlab.config.sections import GRPORunConfig
    from alignlab.config.loading import _nest, _set_section, parse_overrides
    from alignlab.config.validation import check_ranges, validate_judge

    bad = [o for o in overrides if not o.startswith("judge.")]
    if bad:
        raise ConfigError(f"--judge takes judge.KEY=VALUE settings (e.g. judge.base_url=URL judge.model=NAME), "
                          f"got '{bad[0]}'")
    holder = GRPORunConfig()  # any config with a judge section: its keys, types and ranges
    _set_section(holder, _nest(parse_overrides(overrides)), "")
    check_ranges(holder)
    validate_judge(holder)
    return holder.judge


def judged_rows(rows: list, settings) -> list:
    """Rows of `alignlab pairs` input (prompt, responses) -> the same rows with the judge's `scores`
    (any given scores or ranks replaced; None where the judge's reply could not be read). Pointwise and
    group modes rate each response (group: a row's responses in one request); pairwise rates each against
    the row's `judge.answer_column`."""
    from alignlab.data.io import Row
    from alignlab.data.ranked_pairs import row_responses

    client = judge_client(settings)
    try:
        prompts, texts, answers, spans = [], [], [], []
        for row in rows:
            prompt, responses = row_responses(row)
            spans.append((len(texts), len(texts) + len(responses)))
            prompts += [prompt] * len(responses)
            texts += responses
            answers += [row.values.get(settings.answer_column)] * len(responses)
        flat = client.score(prompts, texts, answers if all(a is not None for a in answers) else None)
        metrics = client.step_metrics()
    finally:
        client.close()
    log.info("judged %d responses of %d prompts: %d requests, %d cached, %d unscored, %.1f s",
             len(texts), len(rows), metrics["judge/requests"], metrics["judge/cache_hits"],
             metrics["judge/unparsed"], metrics["judge/seconds"])
    out = []
    for row, (start, end) in zip(rows, spans):
        values = {k: v for k, v in row.values.items() if k not in ("scores", "ranks")}
        out.append(Row({**values, "scores": flat[start:end]}, row.source, row.index))
    return out


# ------------------------------------------------------------------ alignlab eval: win rate


def win_rate(settings, rubric: str, prompts: Sequence[Any], answers: Sequence[str],
             baseline_answers: Sequence[str]) -> dict[str, float]:
    """Judged win rate of `answers` over `baseline_answers` on the same prompts.

    Each pair is judged twice with the answers' positions swapped (pairwise mode, `rubric`); a pair
    scores the mean of its readable verdicts (1 win, 0.5 tie, 0 loss), so two orders that disagree
    (the judge preferred a position, not an answer) score 0.5. win_rate is the mean pair score (with
    every pair a clean win, tie or loss: (wins + ties / 2) / judged); a pair scoring above 0.5 counts as
    a win, below as a loss, at 0.5 as a tie; pairs with no readable verdict are counted and left out."""
    pairwise = dataclasses.replace(settings, mode="pairwise", rubric=rubric)
    client = judge_client(pairwise)
    try:
        scores = client.score(list(prompts), list(answers), list(baseline_answers))
        metrics = client.step_metrics()
    finally:
        client.close()
    judged = [s for s in scores if s is not None]
    wins, losses = sum(s > 0.5 for s in judged), sum(s < 0.5 for s in judged)
    return {"judge/win_rate": sum(judged) / len(judged) if judged else float("nan"),
            "judge/wins": wins, "judge/ties": len(judged) - wins - losses, "judge/losses": losses,
            "judge/unjudged": len(scores) - len(judged), "judge/pairs": len(scores),
            **{k: int(v) for k, v in metrics.items() if k in ("judge/requests", "judge/cache_hits", "judge/tokens")}}
