"""The GRPO objective options (alignlab/losses/grpo.py) in a tiny-model run each: the option reaches the
advantages or the loss, and every metric stays finite; bad combinations fail at config load."""

from __future__ import annotations

import math

import pytest
import torch

import alignlab.trainers.grpo as grpo_module
from alignlab.losses.grpo import group_advantages
from conftest import base_args, run_cli, train_records

REWARDS = """
def sevens(completions, **_):
    return [c.count("7") / max(len(c), 1) for c in completions]

def short(completions, **_):
    return [1.0 if len(c) < 6 else 0.0 for c in completions]
"""

OPTIONS = {  # name: (overrides, what the advantages must be, from the completions' rewards [N, K])
    "gspo": (["grpo.importance_sampling_level=sequence", "grpo.loss_type=grpo", "grpo.num_iterations=2"], None),
    "cispo": (["grpo.loss_type=cispo", "grpo.num_iterations=2", "grpo.epsilon_high=1.0"], None),
    "rloo": (["grpo.advantage=rloo"], dict(estimator="rloo")),
    "reinforce_pp_baseline": (["grpo.advantage=reinforce_pp_baseline"], dict(estimator="reinforce_pp_baseline")),
    "gdpo": (["grpo.reward_aggregation=normalize_then_sum", "grpo.reward_weights=[1.0,0.5]"],
             dict(estimator="reinforce_pp_baseline", aggregation="normalize_then_sum", weights=[1.0, 0.5])),
}


@pytest.fixture(scope="module")
def reward_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("plugin") / "objective_rewards.py"
    path.write_text(REWARDS)
    return path


def _scores(texts: list[str]) -> torch.Tensor:
    sevens = [t.count("7") / max(len(t), 1) for t in texts]
    short = [1.0 if len(t) < 6 else 0.0 for t in texts]
    return torch.tensor([sevens, short]).T  # [N, 2]


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_objective_option_trains_with_finite_metrics(name, tmp_path, tiny_model_dir, prompts, reward_file, monkeypatch):
    overrides, expected = OPTIONS[name]
    seen = {"losses": [], "updates": []}
    real_loss, real_update = grpo_module.grpo_loss, grpo_module.GRPOTrainer._update

    def recording_loss(*args, **kwargs):
        seen["losses"].append(kwargs)
        return real_loss(*args, **kwargs)

    def recording_update(self, rollout, advantages, *args):
        seen["updates"].append((rollout.texts, advantages.clone()))
        return real_update(self, rollout, advantages, *args)

    monkeypatch.setattr(grpo_module, "grpo_loss", recording_loss)
    monkeypatch.setattr(grpo_module.GRPOTrainer, "_update", recording_update)
    out = tmp_path / name
    assert run_cli(base_args(
        "grpo", tiny_model_dir, prompts, out, "grpo.num_generations=8", "grpo.max_completion_length=8",
        "train.max_steps=6", "train.batch_size=2", "train.lr=5e-3",
        f"grpo.rewards=[{reward_file}:sevens,{reward_file}:short]", *overrides,
    )).code == 0
    records = train_records(out)
    assert len(records) == 6
    for record in records:
        assert all(math.isfinite(v) for v in record.values() if isinstance(v, float)), record
    assert any(r["loss"] != 0 for r in records)

    level = "sequence" if name == "gspo" else "token"
    assert {k["importance_sampling_level"] for k in seen["losses"]} == {level}
    assert {k["loss_type"] for k in seen["losses"]} == {"cispo" if name == "cispo" else "grpo" if name == "gspo" else "dapo"}
    if expected is None:
        return
    for texts, advantages in seen["updates"]:
        parts = _scores(texts)  # [N, 2]
        combined = parts if "aggregation" in expected else parts.sum(1)
        torch.testing.assert_close(advantages, group_advantages(combined, 8, "group", **expected))
    default = [group_advantages(_scores(t).sum(1), 8, "group") for t, _ in seen["updates"]]
    assert any(not torch.allclose(a, d) for (_, a), d in zip(seen["updates"], default))  # the option changed something


@pytest.mark.parametrize("overrides, message", [
    (["grpo.advantage=ppo"], "grpo.advantage must be one of group, rloo, reinforce_pp_baseline"),
    (["grpo.importance_sampling_level=seq"], "grpo.importance_sampling_level must be one of token, sequence"),
    (["grpo.reward_aggregation=mean"], "grpo.reward_aggregation must be one of"),
    (["grpo.advantage=rloo", "grpo.scale_rewards=batch"], "grpo.scale_rewards=batch only applies"),
    (["grpo.reward_aggregation=normalize_then_sum", "grpo.advantage=rloo"], "remove grpo.advantage=rloo"),
    (["grpo.loss_type=cispoo"], "grpo.loss_type must be one of"),
])
def test_bad_objective_choices_fail_with_the_key(overrides, message, tmp_path, tiny_model_dir, prompts, capsys):
    result = run_cli(base_args("grpo", tiny_model_dir, prompts, tmp_path / "bad", *overrides), capsys)
    assert result.code == 2
    assert message in result.err + result.out
    assert not (tmp_path / "bad").exists()
