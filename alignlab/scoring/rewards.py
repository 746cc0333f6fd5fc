"""Reward specs -> reward functions, reward models included: `rm:PATH` (a run of `alignlab rm`, a model
directory or a hub id of a one-output sequence classifier) beside the names `alignlab.rewards` resolves.

`alignlab.rewards` imports only the standard library, so the specs that need a model are resolved here,
one layer up; GRPO, iterate, pairs and eval all call `resolve_rewards`.

A reward model as a reward (`RMReward`): completions arrive as text and are scored with the reward
model's own tokenizer and chat template (`RewardModel.score`), never as the policy's token ids, so a
policy and a reward model with different tokenizers work together. Tool-using trajectories (a
`trajectory` column) are scored as the conversation. Scoring is batched, in eval mode, without
gradients, on the given device (the policy's). Memory: the reward model is a second model held
whole beside the policy (its weights, plus activations of one scoring batch); a LoRA reward model is
merged into a full copy when it loads, so sharing the policy's base weights is not done.

Options (the `rm` section of a GRPO / iterate config):
- `rm.normalize`: scores become (s - mean) / std over every score seen so far in training (running
  statistics, Welford), so the reward's scale does not depend on the reward model's arbitrary offset
  and spread. Eval scores stay raw: `eval/rewards/rm/mean` is the mean reward-model score. The running
  statistics are not saved in checkpoints: a resumed run restarts them.
- `rm.clip`: scores (after normalisation) are clipped to [-clip, clip].

Reward hacking (`hacking_warning`): when a run also has a gold check (a `*_correct` reward, e.g.
answer_correct, as an eval-only reward), every eval logs it beside the reward model's score; the run
warns when, between two evals, the mean reward-model score rises while the gold accuracy falls by
HACKING_DROP (5 points) or more: the policy is then learning what the reward model likes rather than
what it was meant to measure.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable, Optional

log = logging.getLogger("alignlab")

RM_PREFIX = "rm:"
HACKING_DROP = 0.05  # a fall in gold accuracy between evals (0-1 scale) that, with a rising RM score, warns


def is_rm_spec(spec: Any) -> bool:
    return isinstance(spec, str) and spec.strip().startswith(RM_PREFIX)


class RMReward:
    """A `RewardModel` as a reward function: fn(completions, prompts=..., trajectory=None, **_) -> list[float]."""

    def __init__(self, reward_model, *, normalize: bool = False, clip: Optional[float] = None, name: str = "rm"):
        self.reward_model, self.normalize, self.clip = reward_model, normalize, clip
        self.__name__ = name
        self.count, self.mean, self.m2 = 0, 0.0, 0.0  # running statistics of raw scores (Welford)

    def raw(self, completions: list[str], prompts=None, trajectory=None) -> list[float]:
        if trajectory is not None and all(trajectory):
            return self.reward_model.score_conversations(trajectory)
        if prompts is None:
            raise ValueError("a reward model needs the prompts: call it with prompts=[...], one per completion")
        return self.reward_model.score(list(prompts), list(completions))

    def __call__(self, completions: list[str], prompts=None, trajectory=None, **_) -> list[float]:
        scores = self.raw(completions, prompts, trajectory)
        if self.normalize:
            for value in scores:
                self.count += 1
                delta = value - self.mean
                self.mean += delta / self.count
                self.m2 += delta * (value - self.mean)
            std = math.sqrt(self.m2 / self.count) if self.count > 1 else 1.0
            scores = [(s - self.mean) / max(std, 1e-6) for s in scores]
        if self.clip:
            scores = [min(max(s, -self.clip), self.clip) for s in scores]
        return scores

    def raw_copy(self) -> "RMReward":
        """The same reward model without normalisation or clipping (eval reports raw scores)."""
        return RMReward(self.reward_model, name=self.__name__)


def load_rm_reward(spec: str, settings=None, device=None, name: str = "rm") -> RMReward:
    """`rm:PATH` -> an RMReward on `device`; `settings`: the config's `rm` section (normalize, clip, batch size)."""
    from alignlab.scoring.reward_model import RewardModel

    path = spec.strip()[len(RM_PREFIX):]
    reward_model = RewardModel.load(path, device=device, batch_size=getattr(settings, "scoring_batch_size", 32))
    log.info("reward model %s loaded for scoring (%s parameters)", path,
             f"{sum(p.numel() for p in reward_model.model.parameters()):,}")
    return RMReward(reward_model, normalize=getattr(settings, "normalize", False), clip=getattr(settings, "clip", None),
                    name=name)


def resolve_rewards(specs: list, settings=None, device=None, *, judge=None, group_size=None,
                    preflight: bool = True) -> list[tuple[str, Callable]]:
    """[(metric name, function)] for reward specs: registered names, module:function, file.py:function,
    in-process callables (`alignlab.rewards.get_reward`), `rm:PATH` reward models (named rm, rm2, ...), and
    `judge`, an LLM judge (`judge`: the config's judge section; `group_size`: GRPO's G, for judge.mode=group;
    `preflight`: one request proves the judge server answers)."""
    from alignlab.rewards import get_reward
    from alignlab.scoring.judge_reward import is_judge_spec, load_judge_reward

    resolved, models = [], 0
    for spec in specs:
        if is_judge_spec(spec):
            resolved.append(("judge", load_judge_reward(judge, group_size, preflight=preflight)))
        elif is_rm_spec(spec):
            models += 1
            name = "rm" if models == 1 else f"rm{models}"
            resolved.append((name, load_rm_reward(spec, settings, device, name)))
        else:
            # Metric names use a plugin's function name, not its file path.
            resolved.append((spec.rsplit(":", 1)[-1] if isinstance(spec, str) else getattr(spec, "__name__", "reward"),
                             get_reward(spec)))
    return resolved


def eval_rewards(reward_fns: list[tuple[str, Callable]]) -> list[tuple[str, Callable]]:
    """The rewards an eval scores with: reward models raw (no running normalisation, no clipping)."""
    return [(name, fn.raw_copy() if isinstance(fn, RMReward) else fn) for name, fn in reward_fns]


def hacking_warning(previous: Optional[dict], current: dict, rm_key: str = "rewards/rm/mean",
                    gold_key: str = "accuracy") -> Optional[str]:
    """The reward-hacking warning, or None: the reward model's mean score rose since the previous eval while
    the gold accuracy fell by at least HACKING_DROP.

    >>> hacking_warning({"rewards/rm/mean": 1.0, "accuracy": 0.5}, {"rewards/rm/mean": 1.4, "accuracy": 0.4}) is not None
    True
    >>> hacking_warning({"rewards/rm/mean": 1.0, "accuracy": 0.5}, {"rewards/rm/mean": 1.4, "accuracy": 0.48}) is None
    True
    """
    if not previous or any(k not in d for d in (previous, current) for k in (rm_key, gold_key)):
        return None
    rose = current[rm_key] > previous[rm_key]
    fell = previous[gold_key] - current[gold_key] >= HACKING_DROP
    if not (rose and fell):
        return None
    return (f"possible reward hacking: the reward model's mean score rose {previous[rm_key]:.3g} -> {current[rm_key]:.3g} "
            f"while the gold {gold_key} fell {previous[gold_key]:.3g} -> {current[gold_key]:.3g}; the policy may be "
            "exploiting the reward model. Look at samples.jsonl; consider a KL penalty (grpo.beta), fewer steps, "
            "rm.normalize/rm.clip, or a better reward model")


class EvalRewards:
    """What an eval scores with: the run's rewards (reward models raw) plus eval-only gold checks
    (weight 0: logged as rewards/<name>/mean and, for *_correct, as accuracy; never trained on), and the
    reward-hacking check between consecutive evals."""

    def __init__(self, reward_fns, weights, gold_specs=()):
        gold = resolve_rewards(list(gold_specs))
        self.fns = eval_rewards(reward_fns) + gold
        self.weights = list(weights) + [0.0] * len(gold)
        self.previous: Optional[dict] = None

    def check(self, metrics: dict) -> Optional[str]:
        """Warn (and return the warning) when the reward model's score rose while the gold accuracy fell."""
        warning = hacking_warning(self.previous, metrics)
        if warning:
            log.warning("%s", warning)
        self.previous = dict(metrics)
        return warning
