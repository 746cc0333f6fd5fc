"""Multi-turn rollouts with tools and environments, driven by scripted turns (no model): masks,
bridges between turns, tool failures, turn and token limits, environment rewards."""

import time

import pytest
import torch

from alignlab.data.templates import Templater
from alignlab.errors import DataError
from alignlab.generation.multi_turn import TurnSettings, multi_turn_rollout, turn_settings
from alignlab.generation.tools import ToolRunner, load_tools, parse_qwen_tool_calls, tool_schemas
from alignlab.generation.vllm import to_rollout

CALL = '<tool_call>{"name": "multiply", "arguments": {"a": 12, "b": 34}}</tool_call>'


class Script:
    """generate_turn that writes, for each context, the next text of its script (by turn), ending
    at EOS, and records what it was asked for."""

    def __init__(self, tokenizer, turns: list[list[str]], eos: bool = True):
        self.tokenizer, self.turns, self.eos, self.calls = tokenizer, turns, eos, []

    def __call__(self, contexts, num_generations, max_new_tokens, turn):
        self.calls.append((len(contexts), num_generations, max_new_tokens, turn))
        texts = []
        for i in range(len(contexts) * num_generations):
            script = self.turns[i % len(self.turns)] if turn == 0 else self.turns[self.rows[i] % len(self.turns)]
            texts.append(script[min(turn, len(script) - 1)])
        if turn == 0:
            self.rows = list(range(len(contexts) * num_generations))
        ids = [self.tokenizer(t, add_special_tokens=False)["input_ids"][:max_new_tokens] for t in texts]
        ids = [x + [self.tokenizer.eos_token_id] if self.eos and len(x) < max_new_tokens else x for x in ids]
        logps = [[-0.5] * len(x) for x in ids]
        return to_rollout(contexts, ids, logps, num_generations, self.tokenizer, [self.tokenizer.eos_token_id],
                          self.tokenizer.pad_token_id)


def settings(tools=("multiply",), **kwargs):
    kwargs.setdefault("max_completion_length", 200)
    return turn_settings(list(tools), **kwargs)


def test_loss_mask_covers_exactly_the_models_tokens(tiny_tokenizer):
    tok = tiny_tokenizer
    turns = settings()
    templater = Templater(tok, tools=turns.tool_schemas, stop_ids=[tok.eos_token_id])
    script = Script(tok, [[CALL, "<answer>408</answer>"]])
    rollout = multi_turn_rollout(script, templater, ["12*34=?"], [{}], num_generations=2, settings=turns)

    messages = [{"role": "user", "content": "12*34=?"}, {"role": "assistant", "content": CALL},
                {"role": "tool", "content": "408"}, {"role": "assistant", "content": "<answer>408</answer>"}]
    whole = templater.render(messages)  # the template's text of the whole conversation
    for row in range(2):
        mask = rollout.completion_mask[row].bool()
        ids, tool = rollout.completion_ids[row][mask], rollout.tool_mask[row][mask].bool()
        text = tok.decode(torch.cat([rollout.prompt_ids[row][rollout.prompt_mask[row].bool()], ids]).tolist())
        assert whole.startswith(text) and whole[len(text):] == "\n"  # only the newline after the last EOS is left
        trained = tok.decode(ids[~tool].tolist())
        assert trained == CALL + "<|im_end|>" + "<answer>408</answer><|im_end|>"  # both turns, both end-of-turn tokens
        assert tok.decode(ids[tool].tolist()) == "\n<|im_start|>tool\n408<|im_end|>\n<|im_start|>assistant\n"
        assert torch.equal(rollout.loss_mask[row][mask], (~tool).long())
        assert (rollout.sampling_logps[row][mask][tool] == 0).all() and (rollout.sampling_logps[row][mask][~tool] == -0.5).all()
        record = rollout.trajectories[row]
        assert record["tool_calls"] == 1 and record["tool_failures"] == 0 and not record["truncated"]
        assert record["turns"] == [CALL, "<answer>408</answer>"]
    assert rollout.texts == ["<answer>408</answer>"] * 2 and rollout.ended.all()
    # the first turn shares the prompt over the group; the second decodes each trajectory from its own context
    assert script.calls[0][:2] == (1, 2) and script.calls[1][:2] == (2, 1)


def test_failed_calls_become_error_messages_and_are_counted(tiny_tokenizer, tmp_path):
    tok = tiny_tokenizer
    plugin = tmp_path / "tools.py"
    plugin.write_text('''
import time

def boom(x: int) -> int:
    """Raises.

    Args:
        x: anything
    """
    raise ValueError("no luck")


def slow(x: int) -> int:
    """Sleeps.

    Args:
        x: anything
    """
    time.sleep(3)
    return x
''')
    turns = settings(["multiply", f"{plugin}:boom", f"{plugin}:slow"], tool_timeout=0.5)
    templater = Templater(tok, tools=turns.tool_schemas, stop_ids=[tok.eos_token_id])
    bad = [
        '<tool_call>{"name": "boom", "arguments": {"x": 1}}</tool_call>',
        '<tool_call>{"name": "slow", "arguments": {"x": 1}}</tool_call>',
        '<tool_call>{"name": "multiply", "arguments": {"a": 1</tool_call>',
        '<tool_call>{"name": "divide", "arguments": {"a": 1, "b": 2}}</tool_call>',
        '<tool_call>{"name": "multiply", "arguments": {"c": 1}}</tool_call>',
    ]
    script = Script(tok, [[b, "<answer>0</answer>"] for b in bad])
    start = time.monotonic()
    rollout = multi_turn_rollout(script, templater, ["q"], [{}], num_generations=5, settings=turns)
    assert time.monotonic() - start < 2.5  # the slow call was not waited for
    results = [r["messages"][1] for r in rollout.trajectories]
    assert all(m["role"] == "tool" and m["content"].startswith("Error:") for m in results)
    assert "ValueError: no luck" in results[0]["content"]
    assert "timed out after 0.5 s" in results[1]["content"]
    assert "not valid JSON" in results[2]["content"]
    assert "unknown tool 'divide'" in results[3]["content"] and "multiply" in results[3]["content"]
    assert "bad arguments for tool 'multiply'" in results[4]["content"]
    assert [r["tool_failures"] for r in rollout.trajectories] == [1] * 5
    assert all(r["turns"][-1] == "<answer>0</answer>" for r in rollout.trajectories)  # the model went on


def test_max_tool_turns_ends_a_looping_trajectory_as_truncated(tiny_tokenizer):
    tok = tiny_tokenizer
    turns = settings(max_tool_turns=2)
    templater = Templater(tok, tools=turns.tool_schemas, stop_ids=[tok.eos_token_id])
    script = Script(tok, [[CALL]])  # calls the tool forever
    rollout = multi_turn_rollout(script, templater, ["q"], [{}], num_generations=2, settings=turns)
    record = rollout.trajectories[0]
    assert len(record["turns"]) == 3 and record["tool_calls"] == 2 and record["truncated"]
    assert not rollout.ended.any()
    assert [c[3] for c in script.calls] == [0, 1, 2]
    # the last turn's calls are not run: the trajectory ends with the model's turn, no tool tokens after it
    last = rollout.completion_mask[0].sum() - 1
    assert rollout.tool_mask[0][last] == 0


def test_the_token_budget_counts_tool_tokens_and_truncates(tiny_tokenizer):
    tok = tiny_tokenizer
    turns = settings(max_completion_length=100)
    templater = Templater(tok, tools=turns.tool_schemas, stop_ids=[tok.eos_token_id])
    script = Script(tok, [[CALL, "<answer>" + "4" * 80 + "</answer>"]])
    rollout = multi_turn_rollout(script, templater, ["q"], [{}], num_generations=2, settings=turns)
    assert int(rollout.completion_mask[0].sum()) == 100  # tool-call turn + bridge + the cut answer
    assert rollout.trajectories[0]["truncated"] and not rollout.ended[0]
    bridge = int(rollout.tool_mask[0].sum())
    assert script.calls[1][2] == 100 - (len(tok(CALL, add_special_tokens=False)["input_ids"]) + 1 + bridge)


class Countdown:
    """Says a number; the model must answer it; rewards each correct turn with 1, ends after 2 turns."""

    def reset(self, start, **_):
        self.target, self.turn = int(start), 0
        return f"say {self.target}"

    def step(self, text):
        self.turn += 1
        reward = 1.0 if text.strip() == str(self.target) else 0.0
        self.target -= 1
        if self.turn == 2:
            return None, reward, True
        return f"say {self.target}", reward, False


def test_environment_turns_sum_their_rewards(tiny_tokenizer):
    tok = tiny_tokenizer
    turns = TurnSettings(max_completion_length=200, environment=Countdown)
    templater = Templater(tok, stop_ids=[tok.eos_token_id])
    script = Script(tok, [["5", "4"], ["5", "9"], ["1", "1"]])
    rollout = multi_turn_rollout(script, templater, ["count down"], [{"start": 5}], num_generations=3, settings=turns)
    assert [r["environment_reward"] for r in rollout.trajectories] == [2.0, 1.0, 0.0]
    assert all(len(r["turns"]) == 2 and not r["truncated"] for r in rollout.trajectories)
    # the first observation joined the prompt; the second is a user turn the model does not train on
    prompt = tok.decode(rollout.prompt_ids[0][rollout.prompt_mask[0].bool()].tolist())
    assert "count down\n\nsay 5" in prompt
    mask = rollout.completion_mask[0].bool()
    assert "say 4" in tok.decode(rollout.completion_ids[0][mask][rollout.tool_mask[0][mask].bool()].tolist())


def test_an_environment_whose_first_observation_differs_within_a_group_is_refused(tiny_tokenizer):
    import itertools

    counter = itertools.count()

    class Random:
        def reset(self, **_):
            return f"obs {next(counter)}"

        def step(self, text):
            return None, 0.0, True

    tok = tiny_tokenizer
    with pytest.raises(DataError, match="different first observations"):
        multi_turn_rollout(Script(tok, [["x"]]), Templater(tok), ["p"], [{}], num_generations=2,
                           settings=TurnSettings(max_completion_length=20, environment=Random))


def test_tool_call_parser_and_schemas():
    parsed = parse_qwen_tool_calls('think <tool_call>\n{"name": "f", "arguments": "{\\"x\\": 2}"}\n</tool_call> and '
                                   '<tool_call>{"name": "g", "arguments": {}}</tool_call><tool_call>[1]</tool_call>'
                                   '<tool_call>{"name": "h"')
    assert [(c.name, c.arguments) for c in parsed.calls] == [("f", {"x": 2}), ("g", {})]
    assert len(parsed.errors) == 2 and "never closed" in parsed.errors[1]
    schema = tool_schemas(load_tools(["multiply"]))[0]["function"]
    assert schema["name"] == "multiply" and schema["parameters"]["required"] == ["a", "b"]
    assert ToolRunner(load_tools(["multiply"])).run(parse_qwen_tool_calls(CALL).calls)[0].content == "408"


def test_tiny_template_lists_tools_and_renders_tool_turns(tiny_tokenizer):
    text = Templater(tiny_tokenizer, tools=settings().tool_schemas).render(
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": CALL}, {"role": "tool", "content": "408"}],
        add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\nTools: multiply(a, b)<|im_end|>\n")
    assert text.endswith("<|im_start|>tool\n408<|im_end|>\n<|im_start|>assistant\n")
    assert "Tools:" not in Templater(tiny_tokenizer).render([{"role": "user", "content": "q"}])  # no tools, no block
