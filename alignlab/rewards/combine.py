"""Run several reward functions over a batch and combine them into one weighted score."""
from __future__ import annotations

import inspect
import math
import os
import sysconfig
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from alignlab.errors import AlignlabError

__all__ = ["RewardError", "RewardScores", "score_completions"]

_ON_ERROR = ("raise", "none")


class RewardError(AlignlabError):
    """A reward function could not be loaded, was called wrongly, failed, or returned bad values."""


@dataclass
class RewardScores:
    """Scores for one batch.

    ``total[i]`` is the weighted sum over functions of their score for row ``i``;
    ``None`` scores are skipped, and a row where every function gave ``None`` is unscorable: its
    total is NaN (not 0.0, which would pass for a real score and shift its group's baseline).
    ``per_function[name]`` holds each function's raw (unweighted) scores.
    ``errors`` lists what was replaced by ``None`` when ``on_error="none"``, and
    ``error_rows[name]`` counts the rows of each function that failed so.
    ``metrics`` holds what functions with a ``step_metrics()`` method report for the batch (an LLM
    judge's requests, seconds, tokens, unparsed replies), logged by the caller with the step.
    """

    total: list[float]
    per_function: dict[str, list[float | None]]
    errors: list[str] = field(default_factory=list)
    error_rows: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


def score_completions(
    reward_fns: Sequence[tuple[str, Callable[..., Any]]],
    weights: Sequence[float] | None,
    completions: Sequence[Any],
    columns: dict[str, Sequence[Any]] | None = None,
    *,
    on_error: str = "raise",
    on_error_option: str = "grpo.reward_errors=none",
) -> RewardScores:
    """Score ``completions`` with every ``(name, fn)`` in ``reward_fns`` and combine them.

    Each function is called as ``fn(completions, **kwargs)`` where ``kwargs`` holds the
    columns it names as parameters, or every column if it takes ``**kwargs``.
    ``weights`` must have one finite number per function (``None`` means all 1.0).

    Raises ``RewardError`` (naming the function, and the row where known) when a
    function lacks a required column, raises, returns something that is not a list
    of ``len(completions)`` values, or returns a value that is not a finite number
    or ``None``. With ``on_error="none"`` a failing row's score becomes ``None``
    instead and the failure is recorded in ``RewardScores.errors``; when the whole
    batch call raises or returns the wrong length, the function is re-run one row at
    a time so that only the rows that fail on their own are lost. A missing column
    or invalid arguments to this function always raise. A function's exception is reported with the
    file and line in the function's own code where it happened, and names ``on_error_option``: how the
    user sets ``on_error="none"`` (by default GRPO's config key, as GRPO is the caller that raises).
    """
    if on_error not in _ON_ERROR:
        raise RewardError(f"on_error must be one of {_ON_ERROR}, got {on_error!r}")
    completions = list(completions)
    n = len(completions)
    columns = _check_columns(columns, n)
    fns = _check_fns(reward_fns)
    weights = _check_weights(weights, len(fns))

    per_function: dict[str, list[float | None]] = {}
    errors: list[str] = []
    error_rows: dict[str, int] = {}
    for name, fn in fns:
        kwargs = _select_columns(name, fn, columns)
        failed: set[int] = set()
        per_function[name] = _run_one(name, fn, completions, kwargs, (on_error, on_error_option), errors, failed)
        error_rows[name] = len(failed)

    metrics: dict[str, float] = {}
    for _, fn in fns:
        if callable(getattr(fn, "step_metrics", None)):
            metrics.update(fn.step_metrics())
    total = []
    for i in range(n):
        values = [(weight, per_function[name][i]) for (name, _), weight in zip(fns, weights)]
        scored = [weight * value for weight, value in values if value is not None]
        total.append(math.fsum(scored) if scored else math.nan)
    return RewardScores(total=total, per_function=per_function, errors=errors, error_rows=error_rows, metrics=metrics)


# --------------------------------------------------------------------------- validation


def _check_columns(columns: Any, n: int) -> dict[str, list]:
    if columns is None:
        return {}
    if not isinstance(columns, dict):
        raise RewardError(f"columns must be a dict of column name -> list, got {type(columns).__name__}")
    checked = {}
    for key, values in columns.items():
        if not isinstance(key, str):
            raise RewardError(f"column names must be strings, got {key!r}")
        if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
            raise RewardError(f"column {key!r} must be a list with one value per completion, got {type(values).__name__}")
        if len(values) != n:
            raise RewardError(f"column {key!r} has {len(values)} values but there are {n} completions")
        checked[key] = list(values)
    return checked


def _check_fns(reward_fns: Any) -> list[tuple[str, Callable[..., Any]]]:
    fns = []
    seen = set()
    for index, item in enumerate(reward_fns):
        if not (isinstance(item, tuple) and len(item) == 2):
            raise RewardError(f"reward_fns[{index}] must be a (name, function) pair, got {item!r}")
        name, fn = item
        if not isinstance(name, str) or not name:
            raise RewardError(f"reward_fns[{index}] name must be a non-empty string, got {name!r}")
        if not callable(fn):
            raise RewardError(f"reward function {name!r} is not callable: {fn!r}")
        if name in seen:
            raise RewardError(f"reward function name {name!r} is used twice; names must be unique")
        seen.add(name)
        fns.append((name, fn))
    return fns


def _check_weights(weights: Any, count: int) -> list[float]:
    if weights is None:
        return [1.0] * count
    weights = list(weights)
    if len(weights) != count:
        raise RewardError(f"got {len(weights)} weights for {count} reward functions")
    checked = []
    for index, weight in enumerate(weights):
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise RewardError(f"weight {index} must be a finite number, got {weight!r}")
        checked.append(float(weight))
    return checked


def _select_columns(name: str, fn: Callable[..., Any], columns: dict[str, list]) -> dict[str, list]:
    """The columns ``fn`` asks for (all of them if it takes ``**kwargs``)."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return dict(columns)  # no introspectable signature (some C callables): pass everything

    # The first positional parameter receives the completions.
    completions_param = None
    for param in params:
        if param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
            completions_param = param.name
            break
        if param.kind is param.VAR_POSITIONAL:
            break
    else:
        raise RewardError(f"reward function {name!r} must accept the completions as its first positional argument")

    selected = {}
    for param in params:
        if param.name == completions_param or param.kind not in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
            continue
        if param.name in columns:
            selected[param.name] = columns[param.name]
        elif param.default is param.empty:
            available = ", ".join(sorted(columns)) or "none"
            raise RewardError(
                f"reward function {name!r} needs column {param.name!r}, which the data does not have "
                f"(available columns: {available})"
            )
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return {key: values for key, values in columns.items() if key != completions_param}
    return selected


# --------------------------------------------------------------------------- running


def _run_one(
    name: str,
    fn: Callable[..., Any],
    completions: list,
    kwargs: dict[str, list],
    on_error: tuple[str, str],
    errors: list[str],
    failed: set[int],
) -> list[float | None]:
    """One function's scores of the batch. `on_error`: (the mode, how the user sets "none")."""
    on_error, option = on_error
    n = len(completions)
    try:
        result = fn(list(completions), **{key: list(values) for key, values in kwargs.items()})
    except Exception as exc:  # a user function may raise anything; it is reported, not hidden
        if on_error == "raise":
            row, row_exc = _first_failing_row(fn, completions, kwargs)
            where = f"on row {row}" if row is not None else "on the batch (each row alone succeeds)"
            exc = row_exc or exc
            raise RewardError(f"reward function {name!r} raised {where}{raised_at(exc, fn)}: {type(exc).__name__}: "
                              f"{str(exc).rstrip('.')}. To score the rows it fails on None and go on, set {option}"
                              ) from exc
        return _run_rows(name, fn, completions, kwargs, errors, failed)

    values = _as_list(result)
    if values is None or len(values) != n:
        got = f"{len(values)} values" if values is not None else f"a {type(result).__name__}"
        message = f"reward function {name!r} returned {got} for {n} completions; it must return a list of {n} values"
        if on_error == "raise":
            raise RewardError(message)
        errors.append(message + "; re-ran it row by row")
        return _run_rows(name, fn, completions, kwargs, errors, failed)

    scores: list[float | None] = []
    for row, value in enumerate(values):
        score, problem = _as_score(value)
        if problem is not None:
            message = f"reward function {name!r} returned {problem} on row {row}"
            if on_error == "raise":
                raise RewardError(message)
            errors.append(message)
            failed.add(row)
        scores.append(score)
    return scores


def _run_rows(
    name: str, fn: Callable[..., Any], completions: list, kwargs: dict[str, list], errors: list[str],
    failed: set[int],
) -> list[float | None]:
    """Call ``fn`` on each row alone; rows that fail in any way score None."""
    scores: list[float | None] = []
    for row in range(len(completions)):
        try:
            result = fn([completions[row]], **{key: [values[row]] for key, values in kwargs.items()})
        except Exception as exc:  # isolate the failing row; the message is kept in `errors`
            errors.append(f"reward function {name!r} raised on row {row}{raised_at(exc, fn)}: {type(exc).__name__}: {exc}")
            failed.add(row)
            scores.append(None)
            continue
        values = _as_list(result)
        if values is None or len(values) != 1:
            errors.append(f"reward function {name!r} did not return exactly one value for row {row} alone")
            failed.add(row)
            scores.append(None)
            continue
        score, problem = _as_score(values[0])
        if problem is not None:
            errors.append(f"reward function {name!r} returned {problem} on row {row}")
            failed.add(row)
        scores.append(score)
    return scores


def _first_failing_row(fn: Callable[..., Any], completions: list,
                       kwargs: dict[str, list]) -> tuple[int | None, Exception | None]:
    """(the first row that fails alone, its exception), or (None, None)."""
    for row in range(len(completions)):
        try:
            fn([completions[row]], **{key: [values[row]] for key, values in kwargs.items()})
        except Exception as exc:  # we only want to know which row fails and how; the caller reports it
            return row, exc
    return None, None


def raised_at(exc: BaseException, fn: Callable[..., Any]) -> str:
    """" at FILE:LINE in FUNCTION (`source line`)" for the innermost frame of the traceback in the reward's
    own file; else in code that is neither the standard library nor an installed package; else the
    innermost frame. "" when the traceback holds no frame but this module's."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if os.path.abspath(f.filename) != _THIS_FILE]
    if not frames:
        return ""
    own = _source_file(fn)
    candidates = ([f for f in frames if own and os.path.abspath(f.filename) == own]
                  or [f for f in frames if not os.path.abspath(f.filename).startswith(_LIBRARY_DIRS)] or frames)
    frame = candidates[-1]
    line = f" (`{frame.line.strip()}`)" if frame.line and frame.line.strip() else ""
    return f" at {frame.filename}:{frame.lineno} in {frame.name}{line}"


_THIS_FILE = os.path.abspath(__file__)
_LIBRARY_DIRS = tuple(os.path.abspath(path) + os.sep for path in
                      {sysconfig.get_path(key) for key in ("stdlib", "platstdlib", "purelib", "platlib")} if path)


def _source_file(fn: Callable[..., Any]) -> str | None:
    """The file a reward function's code is in (through functools.partial, decorators and callable objects)."""
    target = getattr(fn, "func", fn)  # functools.partial
    target = inspect.unwrap(target) if callable(target) else target
    if not (inspect.isfunction(target) or inspect.ismethod(target)):
        target = getattr(type(target), "__call__", target)
    try:
        path = inspect.getsourcefile(target) or inspect.getfile(target)
    except TypeError:  # built-in or C callable
        return None
    return os.path.abspath(path) if path else None


def _as_list(result: Any) -> list | None:
    """A function's result as a list, or None if it is not a sequence of values."""
    if isinstance(result, (list, tuple)):
        return list(result)
    if isinstance(result, (str, bytes, dict)) or result is None:
        return None
    try:
        return list(result)  # e.g. a 1-d array or tensor
    except TypeError:
        return None


def _as_score(value: Any) -> tuple[float | None, str | None]:
    """(score, None) for a finite number or None; (None, description) otherwise."""
    if value is None:
        return None, None
    if isinstance(value, (str, bytes)):
        return None, f"a non-numeric value {value!r}"
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None, f"a non-numeric value {value!r}"
    if not math.isfinite(number):
        return None, f"a non-finite value {number!r}"
    return number, None
