"""Reward functions for RL post-training: a registry, plugin loading and scoring.

A reward function has the signature ``fn(completions: list[str], **columns) -> list[float | None]``.
Built-ins live in :mod:`alignlab.rewards.builtin`; user rewards are registered with
:func:`register_reward` or loaded by :func:`get_reward` from ``package.module:function``
or ``path/to/file.py:function``.
"""
from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any, Callable

from alignlab.rewards import builtin, length
from alignlab.rewards.combine import RewardError, RewardScores, score_completions

__all__ = [
    "REWARDS",
    "RewardError",
    "RewardScores",
    "get_reward",
    "register_reward",
    "score_completions",
]

#: Registered reward functions by name. The built-ins are always present.
REWARDS: dict[str, Callable[..., Any]] = dict(builtin.BUILTINS)  # length registers length_penalty there
assert length.length_penalty is REWARDS["length_penalty"]


#: Python callables given to the Python API that cannot be imported again (lambdas, a notebook's or a
#: script's own functions), by the spec config.yaml records for them: `<python>:NAME`.
IN_PROCESS_PREFIX = "<python>:"
IN_PROCESS: dict[str, Callable[..., Any]] = {}


def register_reward(name: str, *, overwrite: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering a reward function in :data:`REWARDS` under ``name``.

    Registering a different function under a taken name raises ``RewardError``
    unless ``overwrite=True``. Names may not contain ``:`` (reserved for import specs).
    """
    if not isinstance(name, str) or not name.strip() or ":" in name:
        raise RewardError(f"reward name must be a non-empty string without ':', got {name!r}")

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        if not callable(fn):
            raise RewardError(f"cannot register {fn!r} as reward {name!r}: it is not callable")
        existing = REWARDS.get(name)
        if existing is not None and existing is not fn and not overwrite:
            raise RewardError(f"a reward named {name!r} is already registered ({_describe(existing)})")
        REWARDS[name] = fn
        return fn

    return decorate


def get_reward(spec: str | Callable[..., Any]) -> Callable[..., Any]:
    """Resolve a reward from a registered name, ``package.module:function`` or ``path/to/file.py:function``.

    A callable is returned unchanged. A spec whose part before the last ``:`` ends
    in ``.py`` or contains a path separator is loaded from that file (relative paths
    are resolved against the current directory); anything else with a ``:`` is
    imported as a module. Every failure raises ``RewardError`` saying what was
    tried; errors raised while importing the plugin are included in the message.
    """
    if callable(spec):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise RewardError(f"reward spec must be a name, 'module:function' or 'file.py:function', got {spec!r}")
    spec = spec.strip()
    if spec in REWARDS:
        return REWARDS[spec]
    if ":" not in spec or spec.endswith(":"):
        close = difflib.get_close_matches(spec, list(REWARDS), n=3)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else "."
        raise RewardError(
            f"unknown reward {spec!r}{hint} Registered rewards: {', '.join(sorted(REWARDS))}. "
            "Plugins are given as 'package.module:function' or 'path/to/file.py:function'"
        )
    return load_plugin(spec)


def load_plugin(spec: str, kind: str = "reward") -> Callable[..., Any]:
    """The callable a ``package.module:function`` or ``path/to/file.py:function`` spec names (rewards,
    tools, tool-call parsers, environments); failures raise ``RewardError`` naming the `kind` and the spec."""
    if spec.startswith(IN_PROCESS_PREFIX):
        return _in_process(spec, kind)
    target, _, attr = spec.strip().rpartition(":")
    if not target or not attr:
        raise RewardError(f"{kind} spec {spec!r} must be 'package.module:function' or 'path/to/file.py:function'")
    if target.endswith(".py") or "/" in target or os.sep in target:
        module = _load_file(target, spec, kind)
    else:
        module = _import_module(target, spec, kind)
    return _get_function(module, attr, spec, kind)


def _in_process(spec: str, kind: str) -> Callable[..., Any]:
    if spec in IN_PROCESS:
        return IN_PROCESS[spec]
    name = spec[len(IN_PROCESS_PREFIX):]
    raise RewardError(
        f"{kind} {spec!r} was a Python function given to the alignlab Python API in another process (a lambda or a "
        f"function of a notebook or script), which cannot be imported here. Pass the function to the API call again "
        f"(alignlab.grpo(..., rewards=[..., {name}]) for a reward), or put it in a file and name it "
        f"'path/to/file.py:{name}'"
    )


def _load_file(target: str, spec: str, kind: str) -> Any:
    path = Path(target).expanduser()
    if not path.is_absolute():
        path = Path.cwd() / path
    if not path.is_file():
        raise RewardError(f"{kind} plugin file {str(path)!r} (from {spec!r}) does not exist")
    path = path.resolve()
    # A unique, stable module name per file so that two plugins named rewards.py do not clash.
    digest = hashlib.sha1(str(path).encode("utf-8")).hexdigest()[:12]
    module_name = f"alignlab_plugin_{_identifier(path.stem)}_{digest}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    if module_spec is None or module_spec.loader is None:
        raise RewardError(f"cannot load {kind} plugin {str(path)!r} (from {spec!r}) as a Python module")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module  # lets dataclasses/pickle inside the plugin find its module
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:  # a broken plugin must become a readable user-facing error
        sys.modules.pop(module_name, None)
        raise RewardError(
            f"error while loading {kind} plugin {str(path)!r} (from {spec!r}): {type(exc).__name__}: {exc}"
        ) from exc
    return module


def _import_module(target: str, spec: str, kind: str) -> Any:
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as exc:
        raise RewardError(
            f"cannot import module {target!r} for {kind} {spec!r}: {exc}. "
            "Is it installed or on sys.path? For a file, write 'path/to/file.py:function'"
        ) from exc
    except Exception as exc:  # the module exists but fails on import
        raise RewardError(
            f"error while importing module {target!r} for {kind} {spec!r}: {type(exc).__name__}: {exc}"
        ) from exc


def _get_function(module: Any, attr: str, spec: str, kind: str) -> Callable[..., Any]:
    fn = module
    for part in attr.split("."):
        if not hasattr(fn, part):
            available = sorted(
                key for key, value in vars(module).items() if callable(value) and not key.startswith("_")
            )
            raise RewardError(
                f"{kind} {spec!r}: {getattr(module, '__name__', module)!r} has no attribute {attr!r} "
                f"(callables there: {', '.join(available) or 'none'})"
            )
        fn = getattr(fn, part)
    if not callable(fn):
        raise RewardError(f"{kind} {spec!r} is a {type(fn).__name__}, not a function")
    return fn


def _identifier(text: str) -> str:
    cleaned = "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in text)
    return cleaned or "plugin"


def _describe(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"
