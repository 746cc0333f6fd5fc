"""`Run`: what a training call of the Python API returns, a handle on its run directory.

Everything it shows is read from the directory the run wrote (config.yaml, metrics.jsonl, final/), so a
`Run` made later from a path (`alignlab.Run("runs/dpo_...")`) sees the same as the one a call returned.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional


@dataclass
class Run:
    """A finished (or interrupted) training run.

    >>> run = alignlab.sft(model="tiny", data="data/addition_sft.jsonl", max_steps=50)  # doctest: +SKIP
    >>> run.metrics[["step", "loss"]].tail(1)  # doctest: +SKIP
    >>> run.eval(prompts="data/addition_test_prompts.jsonl")["task"]["accuracy"]  # doctest: +SKIP
    """

    run_dir: Path
    command: str = ""
    interrupted: bool = False  # stopped by Ctrl-C / "interrupt kernel" after saving a checkpoint

    def __post_init__(self):
        self.run_dir = Path(self.run_dir).absolute()  # a notebook may change directory later
        if not self.command:
            first = (self.run_dir / "config.yaml").read_text(encoding="utf-8").split("\n", 1)[0]
            self.command = first.removeprefix("# alignlab ").strip()

    @property
    def final(self) -> Path:
        """The final model: a directory `transformers`/`peft` load (merged weights, or the adapter)."""
        return self.run_dir / "final"

    @property
    def config(self) -> dict:
        """The resolved config the run was trained with, as a dict."""
        import yaml

        return yaml.safe_load((self.run_dir / "config.yaml").read_text(encoding="utf-8")) or {}

    @property
    def metrics(self):
        """metrics.jsonl as a pandas DataFrame, one row per record (training steps and evaluations)."""
        import pandas as pd

        path = self.run_dir / "metrics.jsonl"
        if not path.exists():
            return pd.DataFrame()
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        return pd.DataFrame(rows)

    def eval(self, prompts: Any = None, pairs: Any = None, **options) -> dict:
        """`alignlab eval` of this run's final model: the results as a dict (also written to eval.json).
        `prompts`/`pairs` take what `data=` takes; options are eval config keys (`num_samples=8`)."""
        from alignlab.api.evaluation import evaluate

        return evaluate(str(self.run_dir), prompts=prompts, pairs=pairs, **options)

    def chat(self, prompt: str, *, system: Optional[str] = None, max_new_tokens: int = 256, temperature: float = 0.0,
             seed: Optional[int] = None) -> str:
        """One answer of the final model to `prompt`, with its chat template (greedy unless temperature > 0)."""
        import io

        from alignlab.api.evaluation import quiet_loading
        from alignlab.commands.chat import chat_command

        with quiet_loading():
            return chat_command(str(self.run_dir), prompt=prompt, system=system, max_new_tokens=max_new_tokens,
                                temperature=temperature, top_p=1.0, seed=seed, out=io.StringIO(), stdin=io.StringIO())

    def report(self, out: Optional[str] = None):
        """Write the HTML report (plots, samples, config) and return it: it shows inline in Jupyter."""
        from alignlab.commands.report import write_report

        return Report(write_report([self.run_dir], out))

    def load(self, *, dtype: str = "auto"):
        """(model, tokenizer) of the final model, ready for inference."""
        from alignlab.api.evaluation import quiet_loading
        from alignlab.model.inference import load_for_inference

        with quiet_loading():
            loaded = load_for_inference(str(self.run_dir), dtype=dtype)
        return loaded.model, loaded.tokenizer

    def __repr__(self) -> str:
        state = ", interrupted" if self.interrupted else ""
        return f"Run({self.command}, {str(self.run_dir)!r}{state})"


@dataclass
class Report:
    """An HTML report file; Jupyter renders it inline."""

    path: Path

    def _repr_html_(self) -> str:
        # The report is a whole page; an iframe keeps its styles from leaking into the notebook.
        import html

        return (f'<iframe srcdoc="{html.escape(self.path.read_text(encoding="utf-8"))}" '
                'style="width:100%;height:640px;border:0"></iframe>')

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)
