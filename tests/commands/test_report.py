"""`alignlab report`: one self-contained, valid HTML file with one plot per logged metric (and command), samples
and configs; a demo's before/after table; counts in a table."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from alignlab.commands.report import nice_ticks, tick_labels, write_report
from conftest import read_jsonl, write_jsonl

CHROMIUM = Path("/usr/bin/chromium")
VOID = {"meta", "br", "hr", "img", "input", "link", "col", "area", "base", "embed", "source", "track", "wbr"}
SVG_EMPTY = {"rect", "line", "circle", "polyline", "path"}  # written self-closing (<rect .../>)


class StrictParser(HTMLParser):
    """Every element closed, in order; collects figures ((metric, command) -> svg count and title) and all text."""

    def __init__(self):
        super().__init__()
        self.stack, self.errors, self.figures, self.text = [], [], {}, []
        self.current = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "figure":
            self.current = (attrs.get("data-metric"), attrs.get("data-command"))
            assert self.current not in self.figures, f"two figures of {self.current}"
            self.figures[self.current] = {"svg": 0, "title": None}
        if tag == "svg" and self.current is not None:
            self.figures[self.current]["svg"] += 1
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        pass  # <rect/>: opened and closed at once

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
            return
        self.stack.pop()
        if tag == "figure":
            self.current = None

    def handle_data(self, data):
        if self.current is not None and self.stack[-1:] == ["text"] and self.figures[self.current]["title"] is None:
            self.figures[self.current]["title"] = data
        self.text.append(data)


def parse(html_text: str) -> StrictParser:
    parser = StrictParser()
    parser.feed(html_text)
    parser.close()
    assert not parser.errors, parser.errors[:3]
    assert parser.stack == [], parser.stack
    return parser


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory) -> Path:
    """A DPO-like run with a gap (non-finite loss logged as null), a metric never finite, and a hostile sample."""
    run = tmp_path_factory.mktemp("synthetic") / "dpo_synthetic"
    records = [{"step": s, "loss": 0.7 - 0.05 * s if s != 3 else None, "rewards/accuracies": 0.5 + 0.05 * s,
                "rewards/margins": 0.1 * s, "lr": 1e-4, "logps/chosen": None} for s in range(1, 7)]
    records.append({"step": 6, "eval/rewards/accuracies": 0.8})
    write_jsonl(records, run / "metrics.jsonl")
    write_jsonl([{"step": 6, "prompt": "1+1=?", "completion": "<script>alert(1)</script> & more", "reward": 0.5}],
                run / "samples.jsonl")
    (run / "config.yaml").write_text("# alignlab dpo\ndpo:\n  beta: 0.1\n")
    return run


def command(run: Path) -> str:
    return (run / "config.yaml").read_text().splitlines()[0].split()[-1]


def metric_keys(*runs: Path) -> set[str]:
    return {k for run in runs for record in read_jsonl(run / "metrics.jsonl") for k in record if k != "step"}


COUNTS = {"eval/prompts", "eval/pairs"}  # logged by the runs here; listed, not plotted


def panels(*runs: Path) -> set[tuple[str, str]]:
    """(metric, command) of every plot a report of `runs` should draw: counts are not plotted."""
    return {(key, command(run)) for run in runs for key in metric_keys(run) - COUNTS}


def figure(text: str, key: str, command: str) -> str:
    return re.search(rf'data-metric="{re.escape(key)}" data-command="{command}">(.*?)</figure>', text).group(1)


def test_report_has_one_plot_per_metric_and_command(grpo_tb_run, synthetic_run, tmp_path):
    out = write_report([grpo_tb_run, synthetic_run], tmp_path / "report.html")
    text = out.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    page = parse(text)
    expected = panels(grpo_tb_run, synthetic_run)
    assert {"loss", "reward", "kl", "clip_ratio", "completions/mean_length", "eval/accuracy",
            "rewards/margins"} <= {key for key, _ in expected}
    assert ("loss", "grpo") in expected and ("loss", "dpo") in expected
    assert set(page.figures) == expected
    for (key, cmd), fig in page.figures.items():  # a report of two commands titles every panel by command
        assert fig == {"svg": 1, "title": f"{key} ({cmd})"}, key
    # GRPO's loss and DPO's loss are different losses: never on one axis.
    for cmd, other in (("grpo", ">dpo_synthetic</text>"), ("dpo", ">run</text>")):
        assert other not in figure(text, "loss", cmd) and figure(text, "loss", cmd).count("<polyline") >= 1
    assert "no finite values" in figure(text, "logps/chosen", "dpo")


def test_runs_of_one_command_are_overlaid(synthetic_run, tmp_path):
    other = tmp_path / "dpo_other"
    shutil.copytree(synthetic_run, other)
    text = write_report([synthetic_run, other], tmp_path / "report.html").read_text(encoding="utf-8")
    page = parse(text)
    assert set(page.figures) == panels(synthetic_run)  # one panel per metric: both runs are DPO runs
    assert all(fig["title"] == key for (key, _), fig in page.figures.items())  # one command: no label needed
    loss = figure(text, "loss", "dpo")
    assert loss.count("<polyline") >= 2 and ">dpo_synthetic</text>" in loss and ">dpo_other</text>" in loss


def test_counts_are_listed_not_plotted(grpo_tb_run, synthetic_run, tmp_path):
    counted = tmp_path / "counted"
    shutil.copytree(synthetic_run, counted)
    records = read_jsonl(counted / "metrics.jsonl")
    records += [{"step": 6, "eval/pairs": 40}, {"step": 7, "eval/pairs": 40.0, "eval/rewards/accuracies": 0.9}]
    write_jsonl(records, counted / "metrics.jsonl")
    assert "eval/prompts" in metric_keys(grpo_tb_run)  # evaluate_prompts' count, logged at every eval
    text = write_report([grpo_tb_run, counted], tmp_path / "report.html").read_text(encoding="utf-8")
    page = parse(text)
    assert not {key for key, _ in page.figures} & COUNTS
    counts = text.split('<div id="counts">', 1)[1].split("</div>", 1)[0]
    prompts = {r["eval/prompts"] for r in read_jsonl(grpo_tb_run / "metrics.jsonl") if "eval/prompts" in r}
    assert prompts == {4}  # grpo.eval_max_prompts
    assert "<td>run</td><td>eval/prompts</td><td>4</td>" in counts.replace(' class="value"', "")
    assert "<td>counted</td><td>eval/pairs</td><td>40</td>" in counts.replace(' class="value"', "")
    assert ("eval/rewards/accuracies", "dpo") in page.figures  # a fraction, not a count: still plotted


def test_small_ranges_get_distinguishable_ticks(tmp_path):
    # An entropy that moves in the fourth decimal: once every tick read 5.559.
    labels, offset = tick_labels(nice_ticks(5.5590, 5.5594))
    assert offset is None and len(set(labels)) == len(labels) and labels[0] == "5.5590" and labels[-1] == "5.5594"
    # Too wide for the axis: distances from an offset, as matplotlib's ScalarFormatter writes them.
    labels, offset = tick_labels(nice_ticks(1234.5670, 1234.5674))
    assert offset == "+1234.567" and labels[0] == "0" and len(set(labels)) == len(labels)
    for low, high in [(1e-5, 3e-5), (1.0e-5, 1.00002e-5), (1.2e5, 1.3e5), (-0.13, 0.15), (0.0, 1.0), (1, 30000)]:
        ticks = nice_ticks(low, high)
        labels, offset = tick_labels(ticks)
        assert len(set(labels)) == len(labels) and max(map(len, labels)) <= 8, (low, high, labels)
        values = [float(label) + (float(offset) if offset else 0.0) for label in labels]
        assert values == pytest.approx(ticks, rel=1e-9, abs=(ticks[1] - ticks[0]) * 1e-3), (low, high, labels)
    run = tmp_path / "sft_entropy"
    write_jsonl([{"step": s, "entropy": 5.5590 + 0.0001 * (s % 5)} for s in range(1, 11)], run / "metrics.jsonl")
    (run / "config.yaml").write_text("# alignlab sft\n")
    text = write_report([run], tmp_path / "r.html").read_text(encoding="utf-8")
    ticks = re.findall(r'text-anchor="end" class="tick">([^<]+)</text>', figure(text, "entropy", "sft"))
    assert ticks == ["5.5590", "5.5591", "5.5592", "5.5593", "5.5594"]


def make_demo(root: Path, synthetic_run: Path) -> Path:
    """A demo directory as `alignlab demo` leaves it: sft/, dpo/, grpo/ runs, data/ and summary.json."""
    for name in ("grpo", "dpo", "sft"):
        shutil.copytree(synthetic_run, root / name)
        config = (root / name / "config.yaml").read_text().replace("# alignlab dpo", f"# alignlab {name}")
        (root / name / "config.yaml").write_text(config)
    (root / "data").mkdir()
    stage = lambda greedy, preference: {  # noqa: E731  (the keys alignlab/demo/summary.py writes)
        "greedy_accuracy": greedy, "sampled_accuracy": 0.25, "sampled_reward": 0.5, "format_rate": 1.0,
        "preference_accuracy": preference, "mean_length": 5.25, "steps": 30, "seconds": 12.4}
    summary = {"task": "addition", "seed": 0, "fast": True, "test_prompts": 100, "preference_pairs": 300,
               "seconds": 40.0, "notes": ["GRPO greedy accuracy: +21.0 points vs the SFT model."],
               "stages": {"sft": stage(0.3, 0.61), "dpo": stage(0.31, 0.875), "grpo": stage(0.51, 0.6)},
               "runs": {n: str(root / n) for n in ("sft", "dpo", "grpo")}}
    (root / "summary.json").write_text(json.dumps(summary))
    return root


def test_report_of_a_demo_shows_its_summary_table(synthetic_run, tmp_path):
    demo = make_demo(tmp_path / "demo", synthetic_run)
    for given in ([demo], [demo / "sft", demo / "dpo", demo / "grpo"]):
        text = write_report(given, tmp_path / "r.html").read_text(encoding="utf-8")
        page = parse(text)
        section = text.split('<section id="demo">', 1)[1].split("</section>", 1)[0]
        cells = re.sub(r' class="\w+"', "", section)
        assert "<th>SFT</th><th>DPO</th><th>GRPO</th>" in cells
        assert "<td>greedy accuracy</td><td>30.0%</td><td>31.0%</td><td>51.0%</td>" in cells
        assert "<td>held-out preference accuracy</td><td>61.0%</td><td>87.5%</td><td>60.0%</td>" in cells
        assert "100 held-out test prompts" in section and "+21.0 points" in section
        assert text.index('id="demo"') < text.index('id="metrics"')
        # The stages in the order the demo ran them, each its own panel: three losses, three commands.
        assert re.findall(r'data-metric="loss" data-command="(\w+)"', text) == ["sft", "dpo", "grpo"]
        assert ("loss (sft)", "loss (grpo)") == (page.figures[("loss", "sft")]["title"],
                                                 page.figures[("loss", "grpo")]["title"])
    # Not a demo: no table; a broken summary.json does not break the report.
    assert 'id="demo"' not in write_report([synthetic_run], tmp_path / "plain.html").read_text(encoding="utf-8")
    (demo / "summary.json").write_text("{not json")
    assert 'id="demo"' not in write_report([demo], tmp_path / "broken.html").read_text(encoding="utf-8")


def test_report_shows_grpo_samples_and_config_and_needs_no_network(grpo_tb_run, synthetic_run, tmp_path):
    text = write_report([grpo_tb_run, synthetic_run], tmp_path / "r.html").read_text(encoding="utf-8")
    page_text = "".join(parse(text).text)
    for sample in read_jsonl(grpo_tb_run / "samples.jsonl"):
        assert sample["completion"].strip() in page_text
    assert {s["step"] for s in read_jsonl(grpo_tb_run / "samples.jsonl")} == {1, 2}  # written at eval steps
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in text and "<script" not in text
    assert "grpo:" in page_text and "num_generations: 4" in page_text  # the config
    for fetch in ("src=", "href=", "url(", "@import", "<link"):
        assert fetch not in text


def test_report_command_writes_into_the_run(grpo_tb_run, cli, tmp_path):
    result = cli(["report", grpo_tb_run])
    assert result.code == 0 and (grpo_tb_run / "report.html").is_file()
    assert cli(["report", tmp_path]).code == 2  # not a run dir (and no runs in it): a message, no traceback
    # A directory of runs (a sweep, an iterate run) stands for the runs directly inside it.
    result = cli(["report", grpo_tb_run.parent, "-o", tmp_path / "r.html"])
    assert result.code == 0 and grpo_tb_run.name in (tmp_path / "r.html").read_text()


@pytest.mark.parametrize("low, high", [(0.0, 1.0), (-0.13, 0.15), (5.0, 5.0), (1e-5, 3e-5), (1, 30000)])
def test_ticks_cover_the_range(low, high):
    ticks = nice_ticks(low, high)
    assert ticks[0] <= low and ticks[-1] >= high and len(ticks) <= 9
    assert ticks == sorted(ticks) and len(set(ticks)) == len(ticks)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (apt-get install chromium)")
def test_report_renders_in_headless_chromium(grpo_tb_run, synthetic_run, tmp_path):
    out = write_report([grpo_tb_run, synthetic_run], tmp_path / "report.html")
    done = subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--dump-dom", out.as_uri()],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    expected = panels(grpo_tb_run, synthetic_run)
    assert len(re.findall(r"<svg\b", dom)) == len(expected)
    assert set(re.findall(r'data-metric="([^"]+)" data-command="(\w+)"', dom)) == expected
    figures = dom.split("<figure")[1:]
    # Every plot drew its data, but the one metric the synthetic run never logged a finite value of.
    assert sum("<polyline" in f or "<circle" in f for f in figures) == len(expected) - 1
    assert sum("no finite values" in f for f in figures) == 1
    assert "alignlab report" in dom and 'id="samples"' in dom
    for failure in ("net::ERR", "Failed to load", "Uncaught", "ERR_FILE_NOT_FOUND"):
        assert failure not in done.stderr and failure not in dom


def test_report_renders_tool_trajectories_readably(tmp_path):
    run = tmp_path / "grpo_tools"
    write_jsonl([{"step": 1, "loss": 0.1, "tools/call_frequency": 1.0}], run / "metrics.jsonl")
    trajectory = [{"role": "assistant", "content": '<tool_call>{"name": "multiply"}</tool_call>'},
                  {"role": "tool", "name": "multiply", "content": "408"},
                  {"role": "assistant", "content": "<answer>408</answer>"}]
    write_jsonl([{"step": 1, "prompt": "12*34=?", "completion": "<answer>408</answer>", "reward": 3.0,
                  "trajectory": trajectory}], run / "samples.jsonl")
    (run / "config.yaml").write_text("# alignlab grpo\ngrpo:\n  tools: [multiply]\n")
    text = write_report([run], tmp_path / "r.html").read_text(encoding="utf-8")
    cell = ('&lt;tool_call&gt;{&quot;name&quot;: &quot;multiply&quot;}&lt;/tool_call&gt;\n  [tool multiply] 408\n'
            '&lt;answer&gt;408&lt;/answer&gt;')
    assert cell in text  # every turn, the tool's result under its name, in order, escaped
