"""Tools a policy calls during its rollout: loading, JSON schemas, parsing calls, running them.

A tool is a plain typed Python function with a Google-style docstring. Its JSON schema comes from
the signature and docstring (transformers' `get_json_schema`) and reaches the model through the
tokenizer's chat template (`apply_chat_template(..., tools=schemas)`), so each model family's own
tool format is rendered by its own template. Calls are parsed from the model's text by a parser
(Qwen-style `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` built in, which Qwen2.5,
Qwen3 and Hermes-format models write; `grpo.tool_parser=module:function` names another).

A call never raises into the rollout: an unknown name, arguments that do not fit the function, an
exception inside it, or a time-out becomes an error message the model reads as the tool's result,
and is counted as a failure. User tools run in threads of this process (they are the user's own
code); model-written code only ever runs in the `python` tool's separate, limited process.
"""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Callable, Optional

from alignlab.errors import ConfigError
from alignlab.rewards import load_plugin
from alignlab.rewards.combine import RewardError


def multiply(a: int, b: int) -> int:
    """Multiply two integers.

    Args:
        a: The first factor.
        b: The second factor.
    """
    return int(a) * int(b)


def _builtin_tool(name: str) -> Callable:
    if name == "python":  # model-written code runs in a separate, limited process (generation/sandbox.py)
        from alignlab.generation.sandbox import check_python_sandbox, python

        check_python_sandbox()  # refused here, at setup, where it could not be isolated (grpo.python_sandbox)
        return python
    return multiply


BUILTIN_TOOLS = ("python", "multiply")


@dataclass
class ToolCall:
    name: str
    arguments: dict


@dataclass
class ParsedTurn:
    calls: list[ToolCall]  # well-formed calls, in the order written
    errors: list[str]  # one message per malformed call block (bad JSON, no name)


TOOL_CALL_BLOCK = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)


def parse_qwen_tool_calls(text: str) -> ParsedTurn:
    """Calls written as `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` (Qwen2.5/Qwen3/Hermes);
    an opening tag that is never closed counts as a malformed call."""
    calls, errors = [], []
    for block in TOOL_CALL_BLOCK.findall(text):
        try:
            payload = json.loads(block.strip())
        except json.JSONDecodeError as exc:
            errors.append(f"Error: the tool call is not valid JSON ({exc.msg} at character {exc.pos})")
            continue
        if not isinstance(payload, dict) or not isinstance(payload.get("name"), str):
            errors.append('Error: a tool call must be a JSON object {"name": ..., "arguments": {...}}')
            continue
        arguments = payload.get("arguments", {})
        if isinstance(arguments, str):  # some models write the arguments as a JSON string
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError:
                pass
        if not isinstance(arguments, dict):
            errors.append(f"Error: the arguments of tool '{payload['name']}' must be a JSON object")
            continue
        calls.append(ToolCall(payload["name"], arguments))
    if text.count("<tool_call>") > text.count("</tool_call>"):
        errors.append("Error: a <tool_call> was opened and never closed with </tool_call>")
    return ParsedTurn(calls, errors)


TOOL_PARSERS = {"qwen": parse_qwen_tool_calls, "hermes": parse_qwen_tool_calls}


def get_tool_parser(spec: str) -> Callable[[str], ParsedTurn]:
    if spec in TOOL_PARSERS:
        return TOOL_PARSERS[spec]
    try:
        return load_plugin(spec, "tool parser")
    except RewardError as exc:
        raise ConfigError(f"grpo.tool_parser: {exc} (built in: {', '.join(sorted(TOOL_PARSERS))})") from None


def load_tools(specs: list) -> dict[str, Callable]:
    """name -> function for each spec: a built-in name (python, multiply), `module:function`, or
    `path/to/file.py:function`; the tool's name is its function's name."""
    tools = {}
    for spec in specs:
        if callable(spec):
            fn = spec
        elif spec in BUILTIN_TOOLS:
            fn = _builtin_tool(spec)
        elif isinstance(spec, str) and ":" in spec:
            try:
                fn = load_plugin(spec, "tool")
            except RewardError as exc:
                raise ConfigError(f"grpo.tools: {exc}") from None
        else:
            raise ConfigError(f"grpo.tools: unknown tool {spec!r}; built in: {', '.join(BUILTIN_TOOLS)}, or give "
                              "'package.module:function' or 'path/to/file.py:function'")
        name = fn.__name__
        if name in tools:
            raise ConfigError(f"grpo.tools: two tools are named {name!r}")
        tools[name] = fn
    return tools


def tool_schemas(tools: dict[str, Callable]) -> list[dict]:
    """JSON schemas from signatures and docstrings, the format chat templates take as `tools=`."""
    from transformers.utils import get_json_schema

    schemas = []
    for name, fn in tools.items():
        try:
            schemas.append(get_json_schema(fn))
        except Exception as exc:  # missing type hints or docstring: say which tool and what is missing
            raise ConfigError(f"tool {name!r}: cannot build its JSON schema from the signature and docstring "
                              f"({exc}); every argument needs a type hint and an 'Args:' line") from None
    return schemas


@dataclass
class ToolResult:
    name: str
    content: str  # what the model reads in the tool message
    failed: bool


def format_result(value: Any) -> str:
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return str(value)


class ToolRunner:
    """Runs parsed calls with a time limit each; a batch of calls (one turn of every trajectory) runs
    concurrently on a thread pool. A call's limit counts from the moment a worker starts it, not from
    when the batch was submitted: with more calls than workers (8 prompts x 8 samples on 32 workers)
    the later ones wait for a free worker, and that wait is not theirs to pay. The whole batch is
    bounded separately (`batch_timeout`, by default the time every wave of calls would take if each
    used its full limit), so calls that never get a worker (the pool held by earlier calls that ran
    past their limit) are reported as failed instead of stalling the rollout. A call past its limit is
    reported as failed; its thread cannot be stopped and finishes on its own (the `python` tool
    enforces its limits in its own process)."""

    def __init__(self, tools: dict[str, Callable], timeout: float = 10.0, workers: int = 32,
                 batch_timeout: Optional[float] = None):
        self.tools, self.timeout, self.workers, self.batch_timeout = tools, timeout, workers, batch_timeout
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="alignlab-tool")

    def _call(self, call: ToolCall) -> ToolResult:
        fn = self.tools.get(call.name)
        if fn is None:
            return ToolResult(call.name, f"Error: unknown tool '{call.name}' (tools: {', '.join(self.tools)})", True)
        try:
            return ToolResult(call.name, format_result(fn(**call.arguments)), False)
        except TypeError as exc:  # arguments that do not fit the signature
            return ToolResult(call.name, f"Error: bad arguments for tool '{call.name}': {exc}", True)
        except Exception as exc:  # the tool raised: the model reads what went wrong
            return ToolResult(call.name, f"Error: tool '{call.name}' raised {type(exc).__name__}: {exc}", True)

    def run(self, calls: list[ToolCall]) -> list[ToolResult]:
        started: list[Optional[float]] = [None] * len(calls)  # set by the worker when the call begins

        def timed(index: int, call: ToolCall) -> ToolResult:
            started[index] = time.monotonic()
            return self._call(call)

        futures = [self.pool.submit(timed, i, call) for i, call in enumerate(calls)]
        waves = -(-len(calls) // self.workers)
        batch_limit = self.batch_timeout if self.batch_timeout is not None else waves * self.timeout
        batch_deadline = time.monotonic() + batch_limit
        results: list[Optional[ToolResult]] = [None] * len(calls)
        pending = set(range(len(calls)))
        while pending:
            now = time.monotonic()
            for i in sorted(pending):
                result = self._settle(calls[i], futures[i], started[i], now, now >= batch_deadline, batch_limit)
                if result is not None:
                    results[i] = result
                    pending.discard(i)
            if pending:  # sleep until a call ends or the next limit is due; a call that starts meanwhile
                # has its limit at least `timeout` from now, so waking by then never misses one
                due = [started[i] + self.timeout for i in pending if started[i] is not None]
                wake = min(due + [now + self.timeout, batch_deadline])
                wait([futures[i] for i in pending], timeout=max(0.0, wake - time.monotonic()),
                     return_when=FIRST_COMPLETED)
        return results

    def _settle(self, call: ToolCall, future, start: Optional[float], now: float, batch_over: bool,
                batch_limit: float) -> Optional[ToolResult]:
        """The call's result if it has one now (finished, past its own limit, or the batch is over)."""
        if future.done():
            return future.result()
        if start is not None and now >= start + self.timeout:
            return ToolResult(call.name, f"Error: tool '{call.name}' timed out after {self.timeout:g} s", True)
        if not batch_over:
            return None
        if future.cancel():  # never started: every worker stayed busy for the whole batch
            return ToolResult(call.name, f"Error: tool '{call.name}' did not run: all {self.workers} tool workers "
                              f"were busy for the batch's {batch_limit:g} s", True)
        return ToolResult(call.name, f"Error: tool '{call.name}' was stopped at the batch's limit of "
                          f"{batch_limit:g} s", True)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def load_environment(spec: Optional[str]):
    """The environment class (or factory) a `module:Class` / `file.py:Class` spec names, or None."""
    if not spec:
        return None
    try:
        factory = load_plugin(spec, "environment")
    except RewardError as exc:
        raise ConfigError(f"grpo.environment: {exc}") from None
    for method in ("reset", "step"):
        if isinstance(factory, type) and not callable(getattr(factory, method, None)):
            raise ConfigError(f"grpo.environment {spec!r}: the class has no {method}() method (an environment "
                              "needs reset(**row) -> str and step(text) -> (observation, reward, done))")
    return factory
