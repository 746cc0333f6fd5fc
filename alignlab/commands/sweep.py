"""`alignlab sweep -c CONFIG dpo.beta=0.05,0.1 train.lr=1e-5,5e-5`: a grid of runs and a summary.

- An override with commas is an axis of the grid (`key=a,b,c`); one without is fixed for every run.
  A bracketed value is one list value, not an axis (`grpo.rewards=[a,b]`); write several lists as
  `key=[a],[a,b]`.
- Every combination is one run directory, `<sweep>/<run-name>/` (default sweep directory
  `runs/sweep_<time>`), named from the swept values (`beta0.05_lr1e-05`).
- DPO runs share one reference cache, `<sweep>/.ref_cache`: runs with the same data and base model
  compute their reference log-probs once (the first run) and read them afterwards.
- Runs go one after another in this process. A run that fails is recorded with its error and the
  sweep goes on; the summary lists it as failed, and the sweep ends with an error naming every
  failed run (exit code 2).
- The trainer is `--command`, or what the config file says (`alignlab.config.infer_command`).
- The summary (`summary.csv`, `summary.json`, and a printed table) gives each run's final and best
  value of every eval metric (and the final training loss), sorted by `--metric` (default `eval/loss`,
  else `loss`; best = min for losses, else max, unless `--mode` says). `alignlab report <sweep>`
  overlays the runs' curves; the sweep writes that report as `<sweep>/report.html` too.
"""

from __future__ import annotations

import csv
import datetime
import itertools
import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from alignlab.config import load_config
from alignlab.errors import AlignlabError, ConfigError, Interrupted
from alignlab.engine.tracking import read_jsonl

log = logging.getLogger("alignlab")


@dataclass
class SweepRun:
    name: str
    params: dict  # swept key -> value (as typed)
    run_dir: Path
    status: str = "pending"  # ok | failed
    error: str = ""
    seconds: float = 0.0
    final: dict = field(default_factory=dict)
    best: dict = field(default_factory=dict)


def split_values(text: str) -> list[str]:
    """`0.05,0.1` -> ["0.05", "0.1"]; commas inside [...] or {...} do not split (`[a,b],[c]` -> 2 values)."""
    values, depth, current = [], 0, ""
    for char in text:
        if char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        if char == "," and depth == 0:
            values.append(current)
            current = ""
        else:
            current += char
    values.append(current)
    return [v.strip() for v in values]


def parse_grid(overrides: list[str]) -> tuple[dict[str, list[str]], list[str]]:
    """(axes: key -> value texts, fixed overrides) from the command line."""
    axes, fixed = {}, []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value or key=v1,v2,...")
        key, text = item.split("=", 1)
        values = split_values(text)
        if len(values) > 1:
            if any(not v for v in values):
                raise ConfigError(f"sweep axis '{item}' has an empty value")
            if key.strip() in axes:
                raise ConfigError(f"sweep axis '{key.strip()}' is given twice")
            axes[key.strip()] = values
        else:
            fixed.append(item)
    return axes, fixed


def _short(key: str, keys: list[str]) -> str:
    last = key.rsplit(".", 1)[-1]
    return last if sum(k.rsplit(".", 1)[-1] == last for k in keys) == 1 else key.replace(".", "-")


def run_name(params: dict[str, str]) -> str:
    keys = list(params)
    name = "_".join(f"{_short(k, keys)}{v}" for k, v in params.items()) or "run"
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", name)


def grid(axes: dict[str, list[str]]) -> list[dict[str, str]]:
    return [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]


def metric_direction(metric: str, mode: str = "auto") -> str:
    if mode in ("min", "max"):
        return mode
    return "min" if "loss" in metric.rsplit("/", 1)[-1] else "max"


def summarize_run(run_dir: Path) -> tuple[dict, dict]:
    """(final, best) values: every eval/ metric, plus the training loss, from metrics.jsonl."""
    records = read_jsonl(run_dir / "metrics.jsonl")
    final, best = {}, {}
    for record in records:
        for key, value in record.items():
            if not (key.startswith("eval/") or key == "loss") or not isinstance(value, (int, float)):
                continue
            final[key] = value
            better = min if metric_direction(key) == "min" else max
            best[key] = better(best[key], value) if key in best else value
    return final, best


def default_sweep_dir() -> Path:
    return Path("runs") / f"sweep_{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}"


def _train(command: str, config) -> None:
    import importlib

    from alignlab.trainers import TRAINERS

    module, function = TRAINERS[command]
    getattr(importlib.import_module(module), function)(config)


def sweep_command(config_path: Optional[str], overrides: list[str], *, command: str, out: Optional[str] = None,
                  metric: Optional[str] = None, mode: str = "auto") -> list[SweepRun]:
    from alignlab.trainers import TRAINERS

    if command not in TRAINERS:
        raise ConfigError(f"sweep runs one of {', '.join(sorted(TRAINERS))} (--command), not '{command}'")
    axes, fixed = parse_grid(overrides)
    if not axes:
        raise ConfigError("nothing to sweep: give at least one axis as key=v1,v2 (e.g. dpo.beta=0.05,0.1)")
    sweep_dir = Path(out) if out else default_sweep_dir()
    combos = grid(axes)
    runs, configs = [], []
    for params in combos:  # every config is checked before the first run starts
        name = run_name(params)
        run_dir = sweep_dir / name
        extra = [f"{k}={v}" for k, v in params.items()] + [f"train.output_dir={run_dir}"]
        config = load_config(command, config_path, fixed + extra)
        if command == "dpo" and not config.dpo.ref_cache_dir:
            config.dpo.ref_cache_dir = str(sweep_dir / ".ref_cache")
        runs.append(SweepRun(name, dict(params), run_dir))
        configs.append(config)
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise ConfigError(f"sweep run names collide ({', '.join(names)}); give distinct values")
    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / "sweep.json").write_text(json.dumps(
        {"command": command, "config": config_path, "axes": axes, "fixed": fixed, "runs": names}, indent=2) + "\n")
    print(f"sweep of {len(runs)} {command} runs in {sweep_dir}: " + ", ".join(f"{k} in {{{', '.join(v)}}}" for k, v in axes.items()),
          flush=True)
    for index, (run, config) in enumerate(zip(runs, configs), start=1):
        print(f"[{index}/{len(runs)}] {run.name}", flush=True)
        start = time.perf_counter()
        try:
            _train(command, config)
            run.status = "ok"
        except Interrupted:  # Ctrl-C stops the sweep (the run saved a checkpoint and says how to resume it)
            run.status, run.seconds = "interrupted", time.perf_counter() - start
            write_summary(sweep_dir, runs, metric, mode)
            raise
        except Exception as exc:  # one failed run is reported; the others still run
            run.status, run.error = "failed", f"{type(exc).__name__}: {exc}" if not isinstance(exc, AlignlabError) else str(exc)
            print(f"[{index}/{len(runs)}] {run.name} failed: {run.error}", flush=True)
            if not isinstance(exc, AlignlabError):
                log.exception("sweep run %s failed", run.name)
        run.seconds = time.perf_counter() - start
        if (run.run_dir / "metrics.jsonl").is_file():
            run.final, run.best = summarize_run(run.run_dir)
        write_summary(sweep_dir, runs, metric, mode)  # after every run: a killed sweep still has its table
    metric = write_summary(sweep_dir, runs, metric, mode)
    print(summary_table(runs, metric, mode))
    failed = [r for r in runs if r.status != "ok"]
    done = [r.run_dir for r in runs if (r.run_dir / "metrics.jsonl").is_file()]
    if done:
        from alignlab.commands.report import write_report

        print(f"report: {write_report(done, sweep_dir / 'report.html')}")
    print(f"summary: {sweep_dir / 'summary.csv'}" + (f"; {len(failed)} of {len(runs)} runs failed" if failed else ""))
    if failed:  # the table above has every run; the exit code says the sweep is not whole
        raise AlignlabError(f"{len(failed)} of {len(runs)} sweep runs failed: "
                            + "; ".join(f"{r.name}: {r.error}" for r in failed))
    return runs


def _sort_metric(runs: list[SweepRun], metric: Optional[str]) -> str:
    if metric:
        return metric
    keys = {k for r in runs for k in r.final}
    return "eval/loss" if "eval/loss" in keys else "loss"


def sorted_runs(runs: list[SweepRun], metric: str, mode: str) -> list[SweepRun]:
    sign = 1 if metric_direction(metric, mode) == "min" else -1
    return sorted(runs, key=lambda r: (r.status != "ok", metric not in r.best, sign * r.best.get(metric, 0.0)))


def write_summary(sweep_dir: Path, runs: list[SweepRun], metric: Optional[str], mode: str) -> str:
    metric = _sort_metric(runs, metric)
    ordered = sorted_runs(runs, metric, mode)
    keys = sorted({k for r in runs for k in r.final})
    params = list(runs[0].params) if runs else []
    with (sweep_dir / "summary.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["run", *params, "status", "seconds", *[f"final {k}" for k in keys],
                         *[f"best {k}" for k in keys], "error"])
        for r in ordered:
            writer.writerow([r.name, *[r.params[p] for p in params], r.status, f"{r.seconds:.1f}",
                             *[r.final.get(k, "") for k in keys], *[r.best.get(k, "") for k in keys], r.error])
    summary = {"sort_metric": metric, "direction": metric_direction(metric, mode),
               "runs": [{"name": r.name, "params": r.params, "status": r.status, "error": r.error,
                         "run_dir": str(r.run_dir), "seconds": r.seconds, "final": r.final, "best": r.best}
                        for r in ordered]}
    (sweep_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return metric


def summary_table(runs: list[SweepRun], metric: str, mode: str) -> str:
    direction = metric_direction(metric, mode)
    header = ["run", "status", f"final {metric}", f"best {metric} ({direction})"]
    rows = [[r.name, r.status, _fmt(r.final.get(metric)), _fmt(r.best.get(metric))] for r in sorted_runs(runs, metric, mode)]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(header, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(x).ljust(w) for x, w in zip(row, widths)) for row in rows]
    for r in runs:
        if r.status != "ok":
            lines.append(f"{r.name}: {r.error}")
    return "\n".join(lines)


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4g}"
