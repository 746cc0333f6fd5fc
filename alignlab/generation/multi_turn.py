"""Multi-turn rollouts: the policy calls tools (or acts in an environment) while it generates.

A trajectory is ordinary GRPO's completion grown turn by turn (ReTool, Feng et al. 2025; RAGEN,
Wang et al. 2025): the model writes a turn up to its end-of-turn token; tool calls in it are run
(or the environment steps on it) and the result is appended as the template renders a `tool` (or
`user`) message, followed by the template's generation prompt for the next assistant turn; the
model continues from there. Choices, named:
- Tokens: the model's turns keep the exact ids it sampled (never decoded and re-encoded); only the
  text between turns (tool results, observations, the next generation prompt) is tokenised, as
  the chat template renders it after the conversation so far. So every model token is scored in
  the context it was sampled in.
- Masks: `tool_mask` is 1 on those in-between tokens: attended, never trained. The loss covers
  every assistant turn, its tool-call text and its end-of-turn token.
- Budget: `max_completion_length` counts every token after the prompt, model and tool alike. A
  trajectory that would pass it, or that calls tools on turn `max_tool_turns` + 1, ends as
  truncated (`ended` False), as a completion cut at max length does.
- Batching: all trajectories advance together, turn by turn; the first turn shares each prompt's
  encoding across its G samples (the sampler's grouped path); later turns decode only the
  trajectories still going, each from its own context (with vLLM the engine's prefix cache reuses
  the context's keys and values).
- Each ended turn: tool calls in it (or malformed ones) are run and answered; a turn without calls
  goes to the environment's `step`, if there is one; otherwise it is the final answer.
- Environment rewards: `step` may return a reward each turn; a trajectory's environment reward is
  their plain sum (no discount), added to the reward functions' total with weight
  `grpo.environment_reward_weight`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from alignlab.data.collate import pad_left, pad_right
from alignlab.errors import DataError
from alignlab.generation.sampler import Rollout
from alignlab.generation.tools import ParsedTurn, ToolResult, ToolRunner


@dataclass
class Trajectory:
    messages: list[dict]  # the conversation so far, prompt included
    prompt_length: int  # how many of `messages` are the prompt
    ids: list[int] = field(default_factory=list)  # every token after the prompt
    tool_mask: list[int] = field(default_factory=list)  # 1: from a tool or the environment
    logps: list[float] = field(default_factory=list)  # the sampler's log-prob of each model token (0 elsewhere)
    turns: list[str] = field(default_factory=list)  # the text of each model turn
    tool_calls: int = 0
    tool_failures: int = 0
    environment_reward: float = 0.0
    ended: bool = False  # finished on its own (False: cut by the budget or the turn limit)
    done: bool = False
    environment: object = None

    def record(self) -> dict:
        """What rewards, samples.jsonl and the report see."""
        return {"messages": self.messages[self.prompt_length:], "turns": list(self.turns),
                "tool_calls": self.tool_calls, "tool_failures": self.tool_failures,
                "environment_reward": self.environment_reward, "truncated": not self.ended}


@dataclass
class TurnSettings:
    max_completion_length: int
    max_tool_turns: int = 4
    runner: Optional[ToolRunner] = None  # tools, if any
    parser: Optional[Callable[[str], ParsedTurn]] = None
    environment: Optional[Callable] = None  # a class or factory: a fresh instance per trajectory
    tool_schemas: Optional[list[dict]] = None  # rendered by the chat template


# generate_turn(contexts, num_generations, max_new_tokens, turn) -> Rollout: one turn of every context.
TurnGenerator = Callable[[list[list[int]], int, int, int], Rollout]


def start_trajectories(templater, prompts: list, rows: list[dict], num_generations: int,
                       settings: TurnSettings, locations: Optional[list[str]] = None) -> tuple[list[Trajectory], list[list[int]]]:
    """G trajectories per prompt, and each prompt's ids; an environment's first observation joins the
    prompt (appended to its last user message), so it must be the same for the G trajectories of a row."""
    trajectories, prompt_ids = [], []
    for index, (prompt, row) in enumerate(zip(prompts, rows)):
        messages = templater.messages(prompt)
        group = []
        for _ in range(num_generations):
            environment = settings.environment() if settings.environment is not None else None
            first = environment.reset(**row) if environment is not None else None
            group.append((environment, first))
        if len({first for _, first in group}) > 1:
            where = locations[index] if locations else f"prompt {index}"
            raise DataError(f"{where}: the environment's reset() gave different first observations for the "
                            "same row; a group must share its prompt (draw randomness from a column of the row)")
        first = group[0][1]
        if first is not None:
            messages = _with_observation(messages, str(first))
        prompt_ids.append(templater.ids(templater.render(messages, settings.tool_schemas, add_generation_prompt=True)))
        trajectories += [Trajectory(list(messages), len(messages), environment=env) for env, _ in group]
    return trajectories, prompt_ids


def _with_observation(messages: list[dict], observation: str) -> list[dict]:
    if messages and messages[-1]["role"] == "user":
        return messages[:-1] + [{**messages[-1], "content": f"{messages[-1]['content']}\n\n{observation}"}]
    return messages + [{"role": "user", "content": observation}]


def multi_turn_rollout(generate_turn: TurnGenerator, templater, prompts: list, rows: list[dict], *,
                       num_generations: int, settings: TurnSettings, locations: Optional[list[str]] = None) -> Rollout:
    """Rows [i*G, (i+1)*G) are prompt i's trajectories, as `generate`; `rows`: each prompt's dataset
    columns (passed to the environment's reset); `locations`: each prompt's file and row, for errors."""
    tokenizer = templater.tokenizer
    trajectories, prompt_ids = start_trajectories(templater, prompts, rows, num_generations, settings, locations)
    budget = settings.max_completion_length
    turn_out = generate_turn(prompt_ids, num_generations, budget, 0)
    active = list(range(len(trajectories)))
    for turn in range(settings.max_tool_turns + 1):
        pending: list[tuple[int, list[dict]]] = []  # (trajectory, its next messages)
        calls: list[tuple[int, ParsedTurn]] = []
        for row, index in enumerate(active):
            trajectory = trajectories[index]
            keep = turn_out.completion_mask[row].bool()
            new = turn_out.completion_ids[row][keep].tolist()
            logps = turn_out.sampling_logps[row][keep].tolist() if turn_out.sampling_logps is not None else [0.0] * len(new)
            ended = bool(turn_out.ended[row])
            room = budget - len(trajectory.ids)
            if len(new) > room:  # decoded to the longest remaining budget of the batch: cut to this one's
                new, logps, ended = new[:room], logps[:room], False
            text = tokenizer.decode(new, skip_special_tokens=True)
            trajectory.ids += new
            trajectory.tool_mask += [0] * len(new)
            trajectory.logps += logps
            trajectory.turns.append(text)
            trajectory.messages.append({"role": "assistant", "content": text})
            if not ended:
                trajectory.done = True  # cut by the budget: truncated
                continue
            parsed = settings.parser(text) if settings.runner is not None else ParsedTurn([], [])
            if parsed.calls or parsed.errors:
                calls.append((index, parsed))
            elif trajectory.environment is not None:
                observation, reward, finished = trajectory.environment.step(text)
                trajectory.environment_reward += float(reward or 0.0)
                if finished or observation is None:
                    trajectory.done, trajectory.ended = True, True
                else:
                    pending.append((index, [{"role": "user", "content": str(observation)}]))
            else:
                trajectory.done, trajectory.ended = True, True  # a final answer
        if calls:  # every trajectory's calls of this turn, run together
            results = iter(settings.runner.run([c for _, parsed in calls for c in parsed.calls]))
            for index, parsed in calls:
                outcome = [next(results) for _ in parsed.calls]
                outcome += [ToolResult("", message, True) for message in parsed.errors]
                trajectories[index].tool_calls += len(outcome)
                trajectories[index].tool_failures += sum(r.failed for r in outcome)
                pending.append((index, [{"role": "tool", "name": r.name, "content": r.content} for r in outcome]))
        active = []
        for index, messages in sorted(pending, key=lambda p: p[0]):
            trajectory = trajectories[index]
            if turn == settings.max_tool_turns:
                trajectory.done = True  # still acting after the last allowed turn: truncated
                continue
            bridge = bridge_ids(templater, trajectory.messages, messages, settings)
            if len(trajectory.ids) + len(bridge) >= budget:
                trajectory.done = True  # no room left for the model's next turn: truncated
                continue
            trajectory.messages += messages
            trajectory.ids += bridge
            trajectory.tool_mask += [1] * len(bridge)
            trajectory.logps += [0.0] * len(bridge)
            active.append(index)
        if not active:
            break
        contexts = [prompt_ids[i // num_generations] + trajectories[i].ids for i in active]
        turn_out = generate_turn(contexts, 1, max(budget - len(trajectories[i].ids) for i in active), turn + 1)
    return assemble(trajectories, prompt_ids, num_generations, tokenizer)


def bridge_ids(templater, conversation: list[dict], new_messages: list[dict], settings: TurnSettings) -> list[int]:
    """The ids between the model's end-of-turn token and its next turn: what the chat template writes
    after the assistant turn (e.g. a newline), the new messages, and the next generation prompt."""
    tokenizer = templater.tokenizer
    before = templater.render(conversation, settings.tool_schemas)
    after = templater.render(conversation + new_messages, settings.tool_schemas, add_generation_prompt=True)
    if not after.startswith(before):
        raise DataError("the chat template renders the conversation differently once a tool or environment message "
                        "follows it (it rewrites earlier turns), so the next turn cannot continue the sampled tokens")
    stops = [t for t in tokenizer.convert_ids_to_tokens(sorted(templater.stop_ids)) if t]
    last_stop = max((before.rfind(s) + len(s) for s in stops if before.rfind(s) >= 0), default=len(before))
    return templater.ids(before[last_stop:] + after[len(before):])


def assemble(trajectories: list[Trajectory], prompt_ids: list[list[int]], num_generations: int, tokenizer) -> Rollout:
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    prompts = [prompt_ids[i // num_generations] for i in range(len(trajectories))]
    ids = [t.ids or [pad_id] for t in trajectories]
    present = [[1] * len(t.ids) or [0] for t in trajectories]
    return Rollout(
        pad_left(prompts, pad_id), pad_left([[1] * len(p) for p in prompts], 0),
        pad_right(ids, pad_id), pad_right(present, 0),
        [t.turns[-1] if t.turns else "" for t in trajectories],
        torch.tensor([t.ended for t in trajectories]),
        pad_right([t.logps or [0.0] for t in trajectories], 0.0, dtype=torch.float32),
        pad_right([t.tool_mask or [0] for t in trajectories], 0),
        [t.record() for t in trajectories],
    )


def turn_settings(tools: list, *, tool_parser: str = "qwen", max_tool_turns: int = 4, tool_timeout: float = 10.0,
                  environment: Optional[str] = None, max_completion_length: int) -> Optional[TurnSettings]:
    """The multi-turn settings a config asks for; None when it names no tool and no environment."""
    from alignlab.generation.tools import get_tool_parser, load_environment, load_tools, tool_schemas

    if not tools and not environment:
        return None
    loaded = load_tools(tools) if tools else {}
    return TurnSettings(
        max_completion_length=max_completion_length, max_tool_turns=max_tool_turns,
        runner=ToolRunner(loaded, tool_timeout) if loaded else None,
        parser=get_tool_parser(tool_parser) if loaded else None,
        environment=load_environment(environment), tool_schemas=tool_schemas(loaded) if loaded else None,
    )


def trajectory_columns(rollout: Rollout) -> dict[str, list]:
    """Columns reward functions may name: the whole trajectory and its counts, one value per completion."""
    records = rollout.trajectories or []
    return {
        "trajectory": [r["messages"] for r in records],
        "turns": [r["turns"] for r in records],
        "tool_calls": [r["tool_calls"] for r in records],
        "tool_failures": [r["tool_failures"] for r in records],
        "environment_reward": [r["environment_reward"] for r in records],
    }
