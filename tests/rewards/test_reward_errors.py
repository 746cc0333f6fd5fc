"""A reward function that raises is reported with the file and line in the user's code where it failed,
and with the setting that scores such rows None instead (grpo.reward_errors=none)."""

from __future__ import annotations

import pytest

from conftest import base_args

REWARDS = '''import json


def _check(text):
    if "7" in text:
        raise ValueError(f"cannot score {text!r}")
    return 1.0


def boom(completions, **_):
    return [_check(c) for c in completions]


def parses(completions, **_):
    return [float(json.loads(c)["score"]) for c in completions]


class Scorer:
    def __call__(self, completions, **_):
        return [_check(c) for c in completions]
'''


@pytest.fixture
def rewards_file(tmp_path):
    path = tmp_path / "my_rewards.py"
    path.write_text(REWARDS)
    return path


def line_of(path, text: str) -> int:
    return next(n for n, line in enumerate(path.read_text().splitlines(), start=1) if text in line)


def raised(path, name: str, completions, **options) -> str:
    from alignlab.rewards import RewardError, get_reward, score_completions

    with pytest.raises(RewardError) as error:
        score_completions([(name, get_reward(f"{path}:{name}"))], None, completions, **options)
    return str(error.value)


def test_the_message_points_at_the_line_in_the_users_code(rewards_file):
    message = raised(rewards_file, "boom", ["1", "17", "3"])
    where = f"{rewards_file}:{line_of(rewards_file, 'raise ValueError')} in _check"
    assert "reward function 'boom' raised on row 1" in message
    assert where in message and "raise ValueError(f\"cannot score {text!r}\")" in message
    assert "ValueError: cannot score '17'" in message
    assert "grpo.reward_errors=none" in message


def test_a_library_error_points_at_the_users_call_not_into_the_library(rewards_file):
    message = raised(rewards_file, "parses", ['{"score": 1}', "not json"])
    assert f"{rewards_file}:{line_of(rewards_file, 'json.loads')} in " in message
    assert "json/decoder.py" not in message and "JSONDecodeError" in message and "raised on row 1" in message


def test_a_callable_object_is_traced_to_its_file(rewards_file):
    from alignlab.rewards import RewardError, get_reward, score_completions

    scorer = get_reward(f"{rewards_file}:Scorer")()
    with pytest.raises(RewardError) as error:
        score_completions([("scorer", scorer)], None, ["7"], on_error_option="on_error='none'")
    assert f"{rewards_file}:{line_of(rewards_file, 'raise ValueError')} in _check" in str(error.value)
    assert "set on_error='none'" in str(error.value)


def test_rows_scored_none_keep_where_they_failed(rewards_file):
    from alignlab.rewards import get_reward, score_completions

    scores = score_completions([("boom", get_reward(f"{rewards_file}:boom"))], None, ["1", "7"], on_error="none")
    assert scores.per_function["boom"] == [1.0, None]
    assert f"{rewards_file}:{line_of(rewards_file, 'raise ValueError')} in _check" in scores.errors[0]


def test_a_grpo_run_stops_with_the_users_frame(cli, tmp_path, tiny_model_dir, prompts, rewards_file):
    """Every completion of the tiny model fails `parses` (none is JSON): the run stops at its first rollout."""
    result = cli(base_args("grpo", tiny_model_dir, prompts, tmp_path / "run", f"grpo.rewards=[{rewards_file}:parses]",
                           "train.max_steps=1", "train.batch_size=2", "grpo.num_generations=2",
                           "grpo.max_completion_length=4"))
    assert result.code == 2 and "Traceback" not in result.err
    assert f"{rewards_file}:{line_of(rewards_file, 'json.loads')}" in result.err
    assert "reward function 'parses' raised on row 0" in result.err and "grpo.reward_errors=none" in result.err
