"""`alignlab report`: one self-contained, valid HTML file with one plot per logged metric, samples and configs."""

from __future__ import annotations

import re
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from alignlab.report import nice_ticks, write_report
from conftest import read_jsonl, write_jsonl

CHROMIUM = Path("/usr/bin/chromium")
VOID = {"meta", "br", "hr", "img", "input", "link", "col", "area", "base", "embed", "source", "track", "wbr"}
SVG_EMPTY = {"rect", "line", "circle", "polyline", "path"}  # written self-closing (<rect .../>)


class StrictParser(HTMLParser):
    """Every element closed, in order; collects figures (metric -> svg count and title) and all text."""

    def __init__(self):
        super().__init__()
        self.stack, self.errors, self.figures, self.text = [], [], {}, []
        self.current = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "figure":
            self.current = attrs.get("data-metric")
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


def metric_keys(*runs: Path) -> set[str]:
    return {k for run in runs for record in read_jsonl(run / "metrics.jsonl") for k in record if k != "step"}


def test_report_has_one_plot_per_metric(grpo_tb_run, synthetic_run, tmp_path):
    out = write_report([grpo_tb_run, synthetic_run], tmp_path / "report.html")
    text = out.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    page = parse(text)
    expected = metric_keys(grpo_tb_run, synthetic_run)
    assert {"loss", "reward", "kl", "clip_ratio", "completions/mean_length", "eval/accuracy",
            "rewards/margins"} <= expected
    assert set(page.figures) == expected
    for key, figure in page.figures.items():
        assert figure == {"svg": 1, "title": key}, key
    # Overlaid runs: both names in the legend of a metric both logged.
    loss_svg = re.search(r'data-metric="loss">(.*?)</figure>', text).group(1)
    assert loss_svg.count("<polyline") >= 2 and ">dpo_synthetic</text>" in loss_svg and ">run</text>" in loss_svg
    assert "no finite values" in re.search(r'data-metric="logps/chosen">(.*?)</figure>', text).group(1)


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
    expected = metric_keys(grpo_tb_run, synthetic_run)
    assert len(re.findall(r"<svg\b", dom)) == len(expected)
    assert set(re.findall(r'data-metric="([^"]+)"', dom)) == expected
    figures = dom.split("<figure")[1:]
    # Every plot drew its data, but the one metric the synthetic run never logged a finite value of.
    assert sum("<polyline" in f or "<circle" in f for f in figures) == len(expected) - 1
    assert sum("no finite values" in f for f in figures) == 1
    assert "alignlab report" in dom and 'id="samples"' in dom
    for failure in ("net::ERR", "Failed to load", "Uncaught", "ERR_FILE_NOT_FOUND"):
        assert failure not in done.stderr and failure not in dom
