"""Evaluation: task accuracy on prompts (greedy, sampled, pass@k) and preference accuracy on pairs.

Definitions (what the numbers mean):
- accuracy: share of completions whose correctness rewards (functions named `*_correct`) are all > 0;
- format_rate: share whose format rewards (`*_format`) are all > 0;
- pass@k: share of prompts with at least one correct completion among k samples;
- reward: mean weighted total reward; rewards/<fn>/mean: each function's mean;
- mean_length: mean completion length in tokens (EOS included; the model's tokens only, tools' left out);
- preference_accuracy: share of held-out pairs where the chosen response gets the higher implicit
  reward, beta * (log pi - log ref); without a reference, the higher log-prob (a different
  quantity: `alignlab eval` reports that one as reference_free/accuracy and reference_free/margin).
"""

from __future__ import annotations

import math

from dataclasses import dataclass, field, replace
from typing import Optional

import torch

from alignlab.rewards import score_completions
from alignlab.generation.multi_turn import TurnSettings, multi_turn_rollout, process_max, trajectory_columns
from alignlab.generation.sampler import generate
from alignlab.data.prompts import reward_columns


@dataclass
class EvalResult:
    metrics: dict
    samples: list[dict] = field(default_factory=list)


def _all_positive(per_fn: dict, suffix: str, n: int) -> Optional[list[bool]]:
    names = [k for k in per_fn if k.endswith(suffix)]
    if not names:
        return None
    return [all((per_fn[k][i] or 0.0) > 0 for k in names) for i in range(n)]


def evaluate_prompts(
    model,
    tokenizer,
    templater,
    items,
    reward_fns,
    weights,
    *,
    max_new_tokens: int,
    num_samples: int = 1,
    greedy: bool = True,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: Optional[int] = None,
    batch_size: int = 256,
    synced: bool = False,
    engine=None,
    turns: Optional[TurnSettings] = None,
) -> EvalResult:
    """Generate for each prompt item (greedy, or `num_samples` samples) and score with the rewards
    (`synced`: under FSDP or ZeRO-3, every process evaluates the same items together; `engine`: a
    vLLM engine holding the model's weights generates instead of our sampler; `turns`: tool-using or
    environment rollouts, `max_new_tokens` bounding each whole trajectory; `seed`: the engine's draw
    seed, None = its next; our sampler draws from torch's global generator, seeded by the caller)."""
    k = 1 if greedy else num_samples

    def generate_turn(prompt_ids, num_generations, new_tokens, turn=0):
        if engine is not None:
            return engine.generate(prompt_ids, num_generations=num_generations, max_new_tokens=new_tokens,
                                   greedy=greedy, temperature=temperature, top_p=top_p, seed=seed)
        return generate(model, tokenizer, prompt_ids, num_generations=num_generations, max_new_tokens=new_tokens,
                        greedy=greedy, temperature=temperature, top_p=top_p, batch_size=batch_size, synced=synced)

    if turns is None:
        rollout = generate_turn([templater.ids(templater.prompt_text(item.prompt)) for item in items], k, max_new_tokens)
    else:  # synced (our sampler): every process takes every turn, each forward being a collective
        lockstep = process_max(next(model.parameters()).device) if synced and engine is None else None
        rollout = multi_turn_rollout(generate_turn, templater, [item.prompt for item in items],
                                     [item.columns for item in items], num_generations=k,
                                     settings=replace(turns, max_completion_length=max_new_tokens, prompt_limit=None),
                                     lockstep=lockstep)
    columns = reward_columns(items, k)
    lengths = rollout.loss_mask.sum(1)  # the model's tokens: no tool or environment tokens
    columns["completion_lengths"] = lengths.tolist()
    if rollout.trajectories is not None:
        columns.update(trajectory_columns(rollout))
    scores = score_completions(reward_fns, weights, rollout.texts, columns, on_error="none")
    n = len(rollout.texts)
    metrics = {
        "reward": _mean([t for t in scores.total if not math.isnan(t)]),  # unscorable completions left out
        "mean_length": float(lengths.float().mean()),
        "prompts": len(items),
    }
    for name, values in scores.per_function.items():
        scored = [v for v in values if v is not None]
        metrics[f"rewards/{name}/mean"] = sum(scored) / len(scored) if scored else 0.0
    correct = _all_positive(scores.per_function, "_correct", n)
    formatted = _all_positive(scores.per_function, "_format", n)
    if correct is not None:
        metrics["accuracy"] = sum(correct) / n
        if k > 1:
            metrics[f"pass@{k}"] = sum(any(correct[i * k : (i + 1) * k]) for i in range(len(items))) / len(items)
    if formatted is not None:
        metrics["format_rate"] = sum(formatted) / n
    if rollout.trajectories is not None:
        records = rollout.trajectories
        calls = sum(r["tool_calls"] for r in records)
        metrics.update({"tools/call_frequency": calls / n,
                        "tools/failure_frequency": sum(r["tool_failures"] for r in records) / calls if calls else 0.0,
                        "turns/mean": sum(len(r["turns"]) for r in records) / n})
        if turns.environment is not None:
            metrics["environment/reward"] = sum(r["environment_reward"] for r in records) / n
    samples = [
        {"prompt": templater.prompt_text(items[i // k].prompt), "completion": rollout.texts[i], "reward": scores.total[i],
         **({"answer": items[i // k].columns["answer"]} if "answer" in items[i // k].columns else {}),
         **({"trajectory": rollout.trajectories[i]["messages"]} if rollout.trajectories is not None else {})}
        for i in range(n)
    ]
    return EvalResult(metrics, samples)


@torch.no_grad()
def preference_accuracy(model, tokenizer, pairs, *, ref_logps: Optional[torch.Tensor] = None, batch_size: int = 64,
                        beta: float = 1.0) -> dict:
    """Held-out preference accuracy and mean margin; `ref_logps` [N, 2] when a reference is given."""
    from alignlab.model.pair_logps import compute_all

    device = next(model.parameters()).device
    policy = compute_all(model, pairs, tokenizer.pad_token_id, device, batch_size=batch_size, chunk_size=0)  # [N, 2]
    ratios = policy - ref_logps if ref_logps is not None else policy  # [N, 2]
    margins = beta * (ratios[:, 0] - ratios[:, 1])  # [N]
    metrics = {
        "preference_accuracy": float((margins > 0).float().mean()),
        "margin": float(margins.mean()),
        "pairs": len(pairs),
    }
    if ref_logps is not None:  # DPO's implicit rewards, beta * (log pi - log ref), of each response
        metrics["rewards/chosen"] = float(beta * ratios[:, 0].mean())
        metrics["rewards/rejected"] = float(beta * ratios[:, 1].mean())
    return metrics


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")
