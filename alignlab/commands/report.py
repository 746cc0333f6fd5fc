"""`alignlab report RUN_DIR [RUN_DIR ...]`: one self-contained HTML file about one or more runs.

A report of an `alignlab demo` (its directory or its stage runs) opens with the demo's before/after
table from summary.json. Every metric in the runs' metrics.jsonl gets an inline SVG plot over
steps, grouped as training, evaluation (`eval/...`) and optimisation/speed. Runs of the same
command are overlaid (with a legend); runs of different commands get one panel per command,
because SFT's, DPO's and GRPO's `loss` are different quantities. Counts (`eval/prompts`,
`eval/pairs`, `.../count`) are sizes, not curves: they are listed in a table. Then sample
completions logged during training (samples.jsonl), `alignlab eval` results (eval.json) and each
run's config. Plots are drawn here in Python: no JavaScript, no fonts or scripts from the network,
so the file opens anywhere, offline, and can be mailed as it is.
"""

from __future__ import annotations

import html
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from alignlab.errors import AlignlabError
from alignlab.engine.tracking import read_jsonl

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
FIRST = ["loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "reward", "reward_std"]
SYSTEM = ["grad_norm", "lr", "tokens_per_second", "step_seconds", "elapsed", "skipped_steps", "time/generation",
          "time/training"]
# A metric whose last name part is one of these (or ends in _count, or starts with num_) is a count
# when every value it logged is a whole number.
COUNTS = ("prompts", "pairs", "examples", "rows", "skipped_rows", "count")
MAX_SAMPLES = 60
MAX_TICK_CHARS = 8  # wider labels do not fit left of the plot (LEFT px): then ticks are shown from an offset
W, H, LEFT, RIGHT, BOTTOM = 380, 250, 58, 12, 38


@dataclass
class Run:
    name: str
    path: Path
    command: str
    records: list[dict]
    config: str
    samples: list[dict] = field(default_factory=list)
    evaluation: Optional[dict] = None


def load_run(path) -> Run:
    path = Path(path)
    metrics = path / "metrics.jsonl"
    if not metrics.is_file():
        raise AlignlabError(f"{path} is not a run directory: it has no metrics.jsonl")
    config = (path / "config.yaml").read_text(encoding="utf-8") if (path / "config.yaml").is_file() else ""
    first = config.splitlines()[0] if config else ""
    command = first.split()[-1] if first.startswith("# alignlab") else "?"
    evaluation = json.loads((path / "eval.json").read_text()) if (path / "eval.json").is_file() else None
    return Run(path.resolve().name, path, command, read_jsonl(metrics), config, read_jsonl(path / "samples.jsonl"),
               evaluation)


def metric_names(runs: list[Run]) -> list[str]:
    """Every key logged by any run (but `step`), in a reading order: training, evaluation, system."""
    seen: list[str] = []
    for run in runs:
        for record in run.records:
            seen += [k for k in record if k != "step" and k not in seen]
    training = [k for k in FIRST if k in seen] + [k for k in seen if k not in FIRST and k not in SYSTEM
                                                   and not k.startswith("eval/")]
    return training + [k for k in seen if k.startswith("eval/")] + [k for k in SYSTEM if k in seen]


def series(run: Run, key: str) -> list[tuple[float, Optional[float]]]:
    """(step, value) for each record that logged `key`; None marks a non-finite value (a gap in the line)."""
    out = []
    for record in run.records:
        if key in record:
            value = record[key]
            finite = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            out.append((float(record.get("step", len(out))), float(value) if finite else None))
    return out


def is_count(key: str, runs: list[Run]) -> bool:
    """`eval/prompts`, `eval/pairs`, `.../count`: how many things were measured, not a measurement."""
    leaf = key.rsplit("/", 1)[-1]
    if not (leaf in COUNTS or leaf.endswith("_count") or leaf.startswith("num_")):
        return False
    return all(y.is_integer() for run in runs for _, y in series(run, key) if y is not None)


def by_command(runs: list[Run], key: str) -> dict[str, list[int]]:
    """Indices of the runs that logged `key`, per command (first seen first): one panel per command."""
    out: dict[str, list[int]] = {}
    for index, run in enumerate(runs):
        if any(key in record for record in run.records):
            out.setdefault(run.command, []).append(index)
    return out


# ------------------------------------------------------------------ SVG


def nice_ticks(low: float, high: float, count: int = 5, *, integer: bool = False) -> list[float]:
    """Round tick values covering [low, high]; `integer` (steps) never gives fractional ticks."""
    if high - low <= 0:
        pad = 1.0 if integer else (abs(low) or 1.0) * 0.5
        low, high = low - pad, high + pad
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    if integer:
        step = max(1, round(step)) if step < 10 else step
    start = math.floor(low / step) * step
    ticks = []
    value = start
    while value <= high + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    if ticks[0] > low:
        ticks.insert(0, ticks[0] - step)
    if ticks[-1] < high:
        ticks.append(ticks[-1] + step)
    return ticks


def fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1e5 or abs(value) < 1e-3:
        return f"{value:.1e}"
    return f"{value:.4g}"


def _exact_labels(values: list[float], step: float) -> list[str]:
    """The fewest digits (all labels alike) that write every value to within a thousandth of `step`."""
    biggest = max(abs(v) for v in values)
    scientific = biggest >= 1e5 or 0 < biggest < 1e-3
    for digits in range(13):
        labels = [f"{v:.{digits}e}" if scientific else f"{v:.{digits}f}" for v in values]
        if all(abs(float(label) - v) <= abs(step) * 1e-3 for label, v in zip(labels, values)):
            break
    if scientific:  # 1.25e-05 -> 1.25e-5
        labels = [f"{label.split('e')[0]}e{int(label.split('e')[1])}" for label in labels]
    return ["0" if float(label) == 0 else label for label in labels]


def tick_labels(ticks: list[float]) -> tuple[list[str], Optional[str]]:
    """(labels, offset): labels that tell every tick apart, with as many decimals as the tick step
    needs (5.5590 5.5591 ..., not 5.559 five times). When those are too wide for the axis
    (1234.5671), each tick is written as its distance from the first, and that offset (+1234.5670)
    once above the axis, as matplotlib's ScalarFormatter does."""
    step = ticks[1] - ticks[0] if len(ticks) > 1 else abs(ticks[0]) or 1.0
    labels = _exact_labels(ticks, step)
    if max(len(label) for label in labels) <= MAX_TICK_CHARS or len(ticks) < 2 or ticks[0] == 0:
        return labels, None
    base = ticks[0]
    offset = _exact_labels([base], step)[0]
    return _exact_labels([t - base for t in ticks], step), offset if offset.startswith("-") else "+" + offset


def _legend(entries: list[tuple[str, str]]) -> tuple[list[str], int]:
    """SVG legend entries (name, color) laid out in rows under the title; returns (elements, height used)."""
    elements, x, y = [], LEFT, 40
    for name, color in entries:
        label = name if len(name) <= 28 else name[:27] + "…"
        width = 18 + 6.4 * len(label) + 12
        if x + width > W - RIGHT and x > LEFT:
            x, y = LEFT, y + 15
        elements.append(f'<rect x="{x:.0f}" y="{y - 8}" width="12" height="4" fill="{color}"/>'
                        f'<text x="{x + 16:.0f}" y="{y - 3}" class="legend">{html.escape(label)}</text>')
        x += width
    return elements, y - 26


def svg_plot(key: str, lines: list[tuple[str, str, list]], legend: bool = True, title: Optional[str] = None) -> str:
    """One plot of `key` (headed `title`, by default the key): a line (and markers, when sparse) per
    (run name, color, points), axes with ticks, and a legend of the runs drawn (when the report has several)."""
    title = title or key
    legend, legend_h = _legend([(name, color) for name, color, _ in lines]) if legend else ([], 0)
    top = 30 + legend_h + 10
    points = [(x, y) for _, _, pts in lines for x, y in pts if y is not None]
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" width="{W}" height="{H + legend_h}" '
             f'viewBox="0 0 {W} {H + legend_h}" role="img" aria-label="{html.escape(title)} over steps">',
             f'<text x="{W / 2}" y="18" class="title" text-anchor="middle">{html.escape(title)}</text>', *legend]
    height = H + legend_h
    if not points:
        parts.append(f'<text x="{W / 2}" y="{height / 2}" text-anchor="middle" class="note">no finite values</text></svg>')
        return "".join(parts)
    xt = nice_ticks(min(p[0] for p in points), max(p[0] for p in points), integer=True)
    yt = nice_ticks(min(p[1] for p in points), max(p[1] for p in points))
    px = lambda x: LEFT + (x - xt[0]) / (xt[-1] - xt[0]) * (W - LEFT - RIGHT)  # noqa: E731
    py = lambda y: height - BOTTOM - (y - yt[0]) / (yt[-1] - yt[0]) * (height - BOTTOM - top)  # noqa: E731
    ylabels, yoffset = tick_labels(yt)
    for y, label in zip(yt, ylabels):
        parts.append(f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{py(y):.1f}" y2="{py(y):.1f}" class="grid"/>'
                     f'<text x="{LEFT - 6}" y="{py(y) + 4:.1f}" text-anchor="end" class="tick">{label}</text>')
    if yoffset:
        parts.append(f'<text x="{LEFT}" y="{top - 4}" class="tick offset">{yoffset}</text>')
    xlabels, xoffset = tick_labels(xt)
    for x, label in zip(xt, xlabels):
        parts.append(f'<line x1="{px(x):.1f}" x2="{px(x):.1f}" y1="{top}" y2="{height - BOTTOM}" class="grid"/>'
                     f'<text x="{px(x):.1f}" y="{height - BOTTOM + 15}" text-anchor="middle" class="tick">{label}</text>')
    if xoffset:
        parts.append(f'<text x="{W - RIGHT}" y="{height - 6}" text-anchor="end" class="tick offset">{xoffset}</text>')
    parts.append(f'<rect x="{LEFT}" y="{top}" width="{W - LEFT - RIGHT}" height="{height - BOTTOM - top}" class="frame"/>'
                 f'<text x="{(LEFT + W - RIGHT) / 2}" y="{height - 6}" text-anchor="middle" class="axis">step</text>')
    for name, color, pts in lines:
        segment: list[str] = []
        for x, y in pts + [(None, None)]:
            if y is None:
                if len(segment) > 1:
                    parts.append(f'<polyline points="{" ".join(segment)}" fill="none" stroke="{color}" stroke-width="1.6">'
                                 f'<title>{html.escape(name)}</title></polyline>')
                segment = []
            else:
                segment.append(f"{px(x):.1f},{py(y):.1f}")
        finite = [(x, y) for x, y in pts if y is not None]
        if len(finite) <= 40:  # sparse (eval) series: a marker per point, with its value on hover
            parts += [f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.8" fill="{color}">'
                      f'<title>{html.escape(name)}: step {x:.0f}, {y:.6g}</title></circle>' for x, y in finite]
    parts.append("</svg>")
    return "".join(parts)


# ------------------------------------------------------------------ HTML

CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1500px}
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd}h3{font-size:15px}
.grid-plots{display:flex;flex-wrap:wrap;gap:10px}
figure.plot{margin:0;border:1px solid #e3e3e3;border-radius:4px;background:#fff}
svg .title{font-size:13px;font-weight:600}svg .tick,svg .legend,svg .axis,svg .note{font-size:10.5px;fill:#444}
svg .grid{stroke:#eee}svg .frame{fill:none;stroke:#999}
table{border-collapse:collapse;font-size:13px}
td,th{border:1px solid #ddd;padding:4px 8px;vertical-align:top;text-align:left}
td.text{white-space:pre-wrap;font-family:ui-monospace,Menlo,Consolas,monospace;max-width:560px}
pre{background:#f7f7f7;padding:10px;font-size:12px;overflow-x:auto}
.swatch{display:inline-block;width:12px;height:12px;margin-right:6px}"""


def _table(headers: list[str], rows: list[list], text_cols: tuple[int, ...] = ()) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    cell = lambda i, c: f'<td class="{"text" if i in text_cols else "value"}">{html.escape(str(c))}</td>'  # noqa: E731
    body = "".join("<tr>" + "".join(cell(i, c) for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _runs_table(runs: list[Run]) -> str:
    rows = []
    for index, run in enumerate(runs):
        steps = [r.get("step", 0) for r in run.records]
        losses = [r["loss"] for r in run.records if isinstance(r.get("loss"), (int, float))]
        elapsed = [r["elapsed"] for r in run.records if isinstance(r.get("elapsed"), (int, float))]
        swatch = f'<span class="swatch" style="background:{COLORS[index % len(COLORS)]}"></span>'
        cells = [run.command, str(run.path), max(steps) if steps else 0, fmt(losses[-1]) if losses else "-",
                 f"{elapsed[-1]:.0f}s" if elapsed else "-"]
        rows.append(f"<tr><td>{swatch}{html.escape(run.name)}</td>"
                    + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    head = "".join(f"<th>{h}</th>" for h in ("run", "command", "directory", "last step", "last loss", "training time"))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def trajectory_text(messages: list[dict]) -> str:
    """A tool-using trajectory as readable text: each model turn, then each tool result under its name."""
    lines = []
    for m in messages:
        if m.get("role") == "assistant":
            lines.append(m.get("content", ""))
        else:
            lines.append(f"  [{m.get('role')}{' ' + m['name'] if m.get('name') else ''}] {m.get('content', '')}")
    return "\n".join(lines)


def _samples(run: Run) -> str:
    shown = run.samples[-MAX_SAMPLES:]
    note = f" (the last {len(shown)} of {len(run.samples)})" if len(shown) < len(run.samples) else ""
    rows = [[s.get("step", ""), s.get("prompt", ""),
             trajectory_text(s["trajectory"]) if s.get("trajectory") else s.get("completion", ""),
             s.get("answer", s.get("chosen", "")),
             fmt(s["reward"]) if isinstance(s.get("reward"), (int, float)) else s.get("reward", "")] for s in shown]
    return (f"<h3>{html.escape(run.name)}{note}</h3>"  # DPO samples carry the pair's chosen response as the answer
            + _table(["step", "prompt", "completion", "answer / chosen", "reward"], rows, text_cols=(1, 2, 3)))


def _evaluation(run: Run) -> str:
    ev = run.evaluation or {}
    rows = [[section, key, fmt(value) if isinstance(value, float) else value]
            for section in ("task", "preference") for key, value in (ev.get(section) or {}).items()]
    return f"<h3>{html.escape(run.name)}</h3>" + _table(["set", "metric", "value"], rows)


def _diversity(runs: list[Run]) -> str:
    """Every run's eval.json diversity/* side by side (embedding distances compare only under one embedder)."""
    tasks = {run.name: (run.evaluation or {}).get("task") or {} for run in runs if run.evaluation}
    keys = sorted({k for task in tasks.values() for k in task if k.startswith("diversity/")})
    rows = [[k] + [fmt(task[k]) if k in task else "-" for task in tasks.values()] for k in keys]
    return "<h3>Diversity of sampled answers</h3>" + _table(["metric", *tasks], rows) if keys else ""


def _counts(runs: list[Run], keys: list[str]) -> str:
    rows = []
    for key in keys:
        for run in runs:
            values = [int(y) for _, y in series(run, key) if y is not None]
            if not any(key in record for record in run.records):
                continue
            spread = f" (last; from {min(values)} to {max(values)})" if values and min(values) < max(values) else ""
            rows.append([run.name, key, f"{values[-1]}{spread}" if values else "-"])
    return '<h2>Counts</h2><div id="counts">' + _table(["run", "count", "value"], rows) + "</div>"


DEMO_ROWS = [("greedy accuracy", "greedy_accuracy", "%"), ("sampled accuracy (T=1)", "sampled_accuracy", "%"),
             ("format rate", "format_rate", "%"), ("held-out preference accuracy", "preference_accuracy", "%"),
             ("mean completion length (tokens)", "mean_length", ".1f"), ("steps", "steps", ".0f"),
             ("seconds", "seconds", ".0f")]


def demo_summary(directory: Path) -> Optional[dict]:
    """The summary.json `alignlab demo` wrote in `directory` (beside its sft/, dpo/, grpo/ runs), if any."""
    try:
        summary = json.loads((Path(directory) / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # none, or half-written or hand-edited: the report shows the runs without it
    return summary if isinstance(summary, dict) and isinstance(summary.get("stages"), dict) else None


def demo_summaries(runs: list[Run]) -> dict[Path, dict]:
    """The summary of each demo whose stage runs are in the report, by demo directory."""
    found: dict[Path, dict] = {}
    for run in runs:
        directory = run.path.resolve().parent
        summary = found.get(directory) or demo_summary(directory)
        if summary and run.path.resolve().name in summary["stages"]:
            found[directory] = summary
    return found


def _demo(directory: Path, summary: dict) -> str:
    """The demo's headline before/after table, as `alignlab demo` printed it."""
    stages = summary["stages"]
    rows = []
    for label, key, form in DEMO_ROWS:
        values = [stage.get(key) if isinstance(stage, dict) else None for stage in stages.values()]
        if all(v is None for v in values):
            continue
        rows.append([label] + ["-" if not isinstance(v, (int, float)) else f"{100 * v:.1f}%" if form == "%"
                               else format(v, form) for v in values])
    where = []
    if "test_prompts" in summary:
        where.append(f"{summary['test_prompts']} held-out test prompts (never trained on)")
    if "preference_pairs" in summary:
        where.append(f"{summary['preference_pairs']} held-out preference pairs")
    setting = ", ".join(f"{k} {summary[k]}" for k in ("task", "seed") if k in summary) + (" (--fast)" if summary.get(
        "fast") else "")
    notes = "".join(f"<li>{html.escape(str(note))}</li>" for note in summary.get("notes") or [])
    return (f"<h3>{html.escape(str(directory))}</h3>"
            + (f"<p>Measured on {html.escape(' and '.join(where))}; {html.escape(setting)}.</p>" if where else "")
            + _table([""] + [name.upper() for name in stages], rows) + (f"<ul>{notes}</ul>" if notes else ""))


def _panels(runs: list[Run], key: str, label_command: bool) -> list[str]:
    """The figures of one metric: runs of one command overlaid, a panel per command."""
    figures = []
    for command, indices in by_command(runs, key).items():
        lines = [(runs[i].name, COLORS[i % len(COLORS)], series(runs[i], key)) for i in indices]
        title = f"{key} ({command})" if label_command else key
        plot = svg_plot(key, lines, legend=len(runs) > 1, title=title)
        figures.append(f'<figure class="plot" data-metric="{html.escape(key)}" data-command="{html.escape(command)}">'
                       f"{plot}</figure>")
    return figures


def render(runs: list[Run]) -> str:
    names = metric_names(runs)
    counts = [k for k in names if is_count(k, runs)]
    plotted = [k for k in names if k not in counts]
    groups = [("Training", [k for k in plotted if not k.startswith("eval/") and k not in SYSTEM]),
              ("Evaluation", [k for k in plotted if k.startswith("eval/")]),
              ("Optimisation and speed", [k for k in plotted if k in SYSTEM])]
    mixed = len({run.command for run in runs}) > 1
    title = "alignlab report: " + ", ".join(run.name for run in runs)
    body = [f"<h1>{html.escape(title)}</h1>",
            f"<p>{len(names)} metrics from {len(runs)} run(s); generated {time.strftime('%Y-%m-%d %H:%M')}.</p>",
            '<section id="runs"><h2>Runs</h2>', _runs_table(runs), "</section>"]
    demos = demo_summaries(runs)
    if demos:
        body += ['<section id="demo"><h2>Demo: every stage on the same held-out prompts</h2>',
                 *[_demo(directory, summary) for directory, summary in demos.items()], "</section>"]
    body.append('<section id="metrics">')
    if mixed:
        body.append("<p>Runs of different commands are plotted in separate panels, titled by command: their "
                    "metrics of the same name (loss above all) are different quantities.</p>")
    for heading, keys in groups:
        if not keys:
            continue
        body.append(f"<h2>{heading}</h2><div class=\"grid-plots\">")
        for key in keys:
            body += _panels(runs, key, mixed)
        body.append("</div>")
    if counts:
        body.append(_counts(runs, counts))
    body.append("</section>")
    if any(run.samples for run in runs):
        body += ['<section id="samples"><h2>Sample completions (logged at eval steps)</h2>',
                 *[_samples(run) for run in runs if run.samples], "</section>"]
    if any(run.evaluation for run in runs):
        body += ['<section id="eval"><h2>alignlab eval</h2>', _diversity(runs),
                 *[_evaluation(run) for run in runs if run.evaluation],
                 "</section>"]
    body.append('<section id="config"><h2>Config</h2>')
    body += [f"<details{' open' if len(runs) == 1 else ''}><summary>{html.escape(run.name)}</summary>"
             f"<pre>{html.escape(run.config or '(no config.yaml)')}</pre></details>" for run in runs]
    body.append("</section>")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"/><title>{html.escape(title)}</title>'
            f"<style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def default_output(run_dirs: list[Path]) -> Path:
    """One run: <run>/report.html; several: report.html in their common parent directory."""
    if len(run_dirs) == 1:
        return Path(run_dirs[0]) / "report.html"
    return Path(os.path.commonpath([str(Path(p).resolve().parent) for p in run_dirs])) / "report.html"


def expand_run_dirs(path: Path) -> list[Path]:
    """A run dir as it is; a dir of runs (a sweep, an iterate run) as the runs directly inside it."""
    if (path / "metrics.jsonl").is_file() or not path.is_dir():
        return [path]
    runs = sorted(p for p in path.iterdir() if (p / "metrics.jsonl").is_file())
    stages = list((demo_summary(path) or {}).get("stages") or [])
    runs.sort(key=lambda p: stages.index(p.name) if p.name in stages else len(stages))  # a demo: sft, dpo, grpo
    return runs or [path]


def write_report(run_dirs, out=None) -> Path:
    """Render the runs into one HTML file and return its path (an earlier file there is kept, renamed)."""
    from alignlab.commands.outputs import write_result

    run_dirs = [run for p in run_dirs for run in expand_run_dirs(Path(p))]
    if not run_dirs:
        raise AlignlabError("report needs at least one run directory")
    runs = [load_run(p) for p in run_dirs]
    names = [run.name for run in runs]
    for run in runs:  # runs/a/grpo and runs/b/grpo: tell them apart in legends
        if names.count(run.name) > 1:
            run.name = f"{run.path.resolve().parent.name}/{run.name}"
    return write_result(Path(out) if out else default_output(run_dirs), render(runs))
