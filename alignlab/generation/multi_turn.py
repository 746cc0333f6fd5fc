"""Multi-turn rollouts: the policy calls tools (or acts in an environment) while it generates.

A trajectory is ordinary GRPO's completion grown turn by turn (ReTool, Feng et al. 2025; RAGEN,
Wang et al. 2025): the model writes a turn up to its end-of-turn token; tool calls in it are run
(or the environment steps on it) and the result is appended as the template renders a `tool` (or
`user`) message, followed by the template's generation prompt for the next assistant turn; the
model continues from there. Choices, named:
- Tokens: the model's turns keep the exact ids it sampled (never decoded and re-encoded); only the
  text between turns (what the template writes after an end-of-turn token, the tool results or
  observation, the next generation prompt) is tokenised, so every model token is scored in the
  context it was sampled in. That text is the template's rendering of the new messages after a
  fixed dummy exchange (a user turn and an assistant reply), cut after the reply's end-of-turn
  token (`bridge_ids`), as TRL and verl do. So it never depends on how the template would render
  the earlier turns: templates that rewrite history (Qwen3 and the DeepSeek-R1 distills drop or
  empty the <think> block of earlier assistant turns) work, and what the model sees is its own
  turns as it wrote them, reasoning included, each followed by the template's tool or user turn
  and generation prompt (what TRL's qwen3_training.jinja renders, except that a turn written
  without a <think> block stays without one). Tool and environment text is tokenised as text: a
  tool that prints "<|im_end|>" gives the characters, not the control token (TRL parses them), while
  the template's own markers around it stay control tokens.
- Masks: `tool_mask` is 1 on those in-between tokens: attended, never trained. The loss covers
  every assistant turn, its tool-call text and its end-of-turn token.
- Budget: `max_completion_length` counts every token after the prompt, model and tool alike. A
  trajectory that would pass it, or that calls tools on turn `max_tool_turns` + 1, ends as
  truncated (`ended` False), as a completion cut at max length does. Lengths reported to rewards
  and metrics count the model's tokens only (`Rollout.loss_mask`), as TRL does.
- Batching: all trajectories advance together, turn by turn; the first turn shares each prompt's
  encoding across its G samples (the sampler's grouped path); later turns decode only the
  trajectories still going, each from its own context (with vLLM the engine's prefix cache reuses
  the context's keys and values). Under FSDP or ZeRO-3 (`lockstep`) every forward is a collective:
  all processes decode every turn until the last trajectory of any process is done, with the same
  number of contexts (a process with fewer pads with a copy of its first prompt, whose tokens are
  thrown away) and the same token limit, as the single-turn sampler steps until all are done.
- Prompts: `settings.prompt_limit` and `on_long` (GRPO: train.max_length - grpo.max_completion_length
  and data.on_long) hold each prompt once the environment's first observation has joined it, as the
  single-turn path holds its prompts (`fit_prompt`).
- Each ended turn: tool calls in it (or malformed ones) are run and answered; a turn without calls
  goes to the environment's `step`, if there is one; otherwise it is the final answer.
- Environment rewards: `step` may return a reward each turn; a trajectory's environment reward is
  their plain sum (no discount), added to the reward functions' total with weight
  `grpo.environment_reward_weight`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from alignlab.data.collate import pad_left, pad_right
from alignlab.errors import DataError
from alignlab.generation.sampler import Rollout
from alignlab.generation.tools import ParsedTurn, ToolResult, ToolRunner

log = logging.getLogger("alignlab")


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
    # data.on_long for prompts rendered at rollout time (`fit_prompt`); no limit when None
    prompt_limit: Optional[int] = None
    on_long: str = "truncate"


# generate_turn(contexts, num_generations, max_new_tokens, turn) -> Rollout: one turn of every context.
TurnGenerator = Callable[[list[list[int]], int, int, int], Rollout]


# lockstep(values) -> values: the elementwise max over every process (a collective), or None (one process,
# or a backend whose generation is no collective).
Lockstep = Callable[[list[int]], list[int]]


def process_max(device) -> Lockstep:
    """`Lockstep` over torch.distributed: every process must call it as often, with as many values."""

    def agree(values: list[int]) -> list[int]:
        tensor = torch.tensor(values, dtype=torch.long, device=device)
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
        return tensor.tolist()

    return agree


def fit_prompt(ids: list[int], where: str, settings: TurnSettings) -> list[int]:
    """data.on_long for a prompt rendered at rollout time, where an environment's first observation joins
    it: `error` names the row; `truncate` keeps the last `prompt_limit` tokens, as the single-turn path;
    `drop` truncates too (a drawn prompt can no longer leave its batch; the trainer dropped the prompts
    too long without an observation when it loaded them)."""
    limit = settings.prompt_limit
    if limit is None or len(ids) <= limit:
        return ids
    if settings.on_long == "error":
        raise DataError(f"{where}: the prompt (with the environment's first observation) has {len(ids)} tokens, more "
                        f"than train.max_length - grpo.max_completion_length = {limit} (set data.on_long=truncate)")
    if settings.on_long == "drop" and not _warned_truncation:
        _warned_truncation.append(where)
        log.warning("%s: the prompt with the environment's first observation has %d tokens, more than %d; "
                    "truncated from the left (data.on_long=drop cannot drop a prompt already drawn; said once)",
                    where, len(ids), limit)
    return ids[-limit:]  # the end: where the question, the observation and the generation prompt are


_warned_truncation: list[str] = []


def start_trajectories(templater, prompts: list, rows: list[dict], num_generations: int, settings: TurnSettings,
                       locations: Optional[list[str]] = None) -> tuple[list[Trajectory], list[list[int]]]:
    """G trajectories per prompt, and each prompt's ids; an environment's first observation joins the
    prompt (appended to its last user message), so it must be the same for the G trajectories of a row."""
    trajectories, prompt_ids = [], []
    for index, (prompt, row) in enumerate(zip(prompts, rows)):
        where = locations[index] if locations else f"prompt {index}"
        messages = templater.messages(prompt)
        group = []
        for _ in range(num_generations):
            environment = settings.environment() if settings.environment is not None else None
            first = environment.reset(**row) if environment is not None else None
            group.append((environment, first))
        if len({first for _, first in group}) > 1:
            raise DataError(f"{where}: the environment's reset() gave different first observations for the "
                            "same row; a group must share its prompt (draw randomness from a column of the row)")
        first = group[0][1]
        if first is not None:
            messages = _with_observation(messages, str(first))
        ids = templater.ids(templater.render(messages, settings.tool_schemas, add_generation_prompt=True))
        prompt_ids.append(fit_prompt(ids, where, settings))
        trajectories += [Trajectory(list(messages), len(messages), environment=env) for env, _ in group]
    return trajectories, prompt_ids


def _with_observation(messages: list[dict], observation: str) -> list[dict]:
    if messages and messages[-1]["role"] == "user":
        return messages[:-1] + [{**messages[-1], "content": f"{messages[-1]['content']}\n\n{observation}"}]
    return messages + [{"role": "user", "content": observation}]


def multi_turn_rollout(generate_turn: TurnGenerator, templater, prompts: list, rows: list[dict], *,
                       num_generations: int, settings: TurnSettings, locations: Optional[list[str]] = None,
                       lockstep: Optional[Lockstep] = None) -> Rollout:
    """Rows [i*G, (i+1)*G) are prompt i's trajectories, as `generate`; `rows`: each prompt's dataset
    columns (passed to the environment's reset); `locations`: each prompt's file and row, for errors;
    `lockstep`: under FSDP or ZeRO-3, keeps every process's turns together (see the module's docstring)."""
    trajectories, prompt_ids = start_trajectories(templater, prompts, rows, num_generations, settings, locations)
    budget = settings.max_completion_length
    turn_out = generate_turn(prompt_ids, num_generations, budget, 0)
    active = list(range(len(trajectories)))
    for turn in range(settings.max_tool_turns + 1):
        pending = _take_turn(templater.tokenizer, trajectories, active, turn_out, settings)
        active = _bridge(templater, trajectories, pending, settings, last_turn=turn == settings.max_tool_turns)
        rooms = [budget - len(trajectories[i].ids) for i in active]
        width, longest = len(active), max(rooms, default=1)
        if lockstep is not None:  # every process decodes this turn while any has a trajectory going
            width, longest = lockstep([width, longest])
        if not width:
            break
        contexts = [prompt_ids[i // num_generations] + trajectories[i].ids for i in active]
        contexts += [prompt_ids[0]] * (width - len(active))  # lockstep filler: decoded, never read
        turn_out = generate_turn(contexts, 1, longest, turn + 1)
    return assemble(trajectories, prompt_ids, num_generations, templater.tokenizer)


def _take_turn(tokenizer, trajectories: list[Trajectory], active: list[int], turn_out: Rollout,
               settings: TurnSettings) -> list[tuple[int, list[dict]]]:
    """Append each active trajectory's new turn (row i of `turn_out` is `active[i]`'s; rows past them are
    filler), run its tool calls or environment step; (trajectory, its next messages) for those going on."""
    budget = settings.max_completion_length
    pending: list[tuple[int, list[dict]]] = []
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
    return sorted(pending, key=lambda p: p[0])


def _bridge(templater, trajectories: list[Trajectory], pending: list[tuple[int, list[dict]]],
            settings: TurnSettings, *, last_turn: bool) -> list[int]:
    """Append the new messages' tokens to each pending trajectory that has room for another turn;
    the trajectories that go on."""
    active = []
    for index, messages in pending:
        trajectory = trajectories[index]
        if last_turn:
            trajectory.done = True  # still acting after the last allowed turn: truncated
            continue
        bridge = bridge_ids(templater, messages, settings.tool_schemas)
        if len(trajectory.ids) + len(bridge) >= settings.max_completion_length:
            trajectory.done = True  # no room left for the model's next turn: truncated
            continue
        trajectory.messages += messages
        trajectory.ids += bridge
        trajectory.tool_mask += [1] * len(bridge)
        trajectory.logps += [0.0] * len(bridge)
        active.append(index)
    return active


# The fixed exchange new messages are rendered after (bridge_ids); plain words no template rewrites.
DUMMY_EXCHANGE = [{"role": "user", "content": "alignlab dummy question"},
                  {"role": "assistant", "content": "alignlab dummy reply"}]
CONTENT_MARK = "alignlab message {} content"


def bridge_ids(templater, new_messages: list[dict], tool_schemas: Optional[list[dict]] = None) -> list[int]:
    """The ids between the model's end-of-turn token and its next turn: what the chat template writes
    after an assistant turn's end-of-turn token (e.g. a newline), the new messages, and the next
    generation prompt.

    Rendered after `DUMMY_EXCHANGE`, not after the trajectory's conversation: a template that rewrites
    earlier turns (Qwen3 drops the reasoning of assistant turns before the last user message and
    writes an empty <think> block only for the last) would otherwise render the sampled turns another
    way. The new messages' contents are tokenised as text, never as control tokens."""
    frame = _after_reply(templater, DUMMY_EXCHANGE + _marked(new_messages), tool_schemas)
    marks = [CONTENT_MARK.format(i) for i in range(len(new_messages))]
    pieces, contents = [], []  # the template's own text around each content; each content as the template writes it
    rest = frame
    for i, (mark, message) in enumerate(zip(marks, new_messages)):
        if frame.count(mark) != 1:
            raise DataError(f"the chat template does not write a {message['role']} message's content exactly once "
                            "after an assistant turn, so its tokens cannot be appended to the sampled ones")
        head, tail = frame.split(mark)
        alone = _after_reply(templater, DUMMY_EXCHANGE + _marked(new_messages, keep=i), tool_schemas)
        if not (alone.startswith(head) and alone.endswith(tail) and len(alone) >= len(head) + len(tail)):
            raise DataError(f"the chat template writes the text around a {message['role']} message differently "
                            "depending on its content, so its tokens cannot be appended to the sampled ones")
        contents.append(alone[len(head):len(alone) - len(tail)])
        before, rest = rest.split(mark)
        pieces.append(before)
    pieces.append(rest)
    text = "".join(p + c for p, c in zip(pieces, contents)) + pieces[-1]
    if all(_literal_ids(templater.tokenizer, c) == templater.ids(c) for c in contents):
        # Nothing in the contents reads as a control token: one pass over the whole text, as the
        # template's own tokenisation would split it.
        return templater.ids(text)
    ids = []
    for piece, content in zip(pieces, contents):
        ids += templater.ids(piece) + _literal_ids(templater.tokenizer, content)
    return ids + templater.ids(pieces[-1])


def _marked(messages: list[dict], keep: Optional[int] = None) -> list[dict]:
    """`messages` with each content (but message `keep`'s) replaced by its CONTENT_MARK."""
    return [m if i == keep else {**m, "content": CONTENT_MARK.format(i)} for i, m in enumerate(messages)]


def _after_reply(templater, messages: list[dict], tool_schemas) -> str:
    """The template's text of `messages` (the dummy exchange first) with the generation prompt, from
    just after the dummy reply's end-of-turn token."""
    text = templater.render(messages, tool_schemas, add_generation_prompt=True)
    reply = text.find(DUMMY_EXCHANGE[1]["content"])
    stops = [t for t in templater.tokenizer.convert_ids_to_tokens(sorted(templater.stop_ids)) if t]
    ends = [text.find(stop, reply) + len(stop) for stop in stops if reply >= 0 and text.find(stop, reply) >= 0]
    first_content = text.find(CONTENT_MARK.format(0))
    if not ends or (first_content >= 0 and min(ends) > first_content):
        raise DataError(f"the chat template writes no end-of-turn token ({', '.join(stops)}) after an assistant turn "
                        "before the next message, so tool and environment turns cannot follow the sampled tokens "
                        "(the end-of-turn tokens are the tokenizer's EOS and the generation config's eos_token_id)")
    return text[min(ends):]


def _literal_ids(tokenizer, text: str) -> list[int]:
    """`text`'s ids with special-token strings in it kept as characters (a tool printing <|im_end|>)."""
    return tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]


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
                  environment: Optional[str] = None, max_completion_length: int, max_length: Optional[int] = None,
                  on_long: str = "truncate") -> Optional[TurnSettings]:
    """The multi-turn settings a config asks for; None when it names no tool and no environment.
    `max_length` (GRPO's train.max_length) and `on_long` hold prompts to max_length - max_completion_length."""
    from alignlab.generation.tools import get_tool_parser, load_environment, load_tools, tool_schemas

    if not tools and not environment:
        return None
    loaded = load_tools(tools) if tools else {}
    return TurnSettings(
        max_completion_length=max_completion_length, max_tool_turns=max_tool_turns,
        runner=ToolRunner(loaded, tool_timeout) if loaded else None,
        parser=get_tool_parser(tool_parser) if loaded else None,
        environment=load_environment(environment), tool_schemas=tool_schemas(loaded) if loaded else None,
        prompt_limit=max_length - max_completion_length if max_length is not None else None, on_long=on_long,
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
