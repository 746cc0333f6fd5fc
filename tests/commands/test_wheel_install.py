"""`pip install .` (not only `pip install -e .`): a wheel built from the checkout, installed into a fresh
venv, runs a shipped config by name and `alignlab demo --fast` from a directory that is not a checkout.

The venv sees the system's packages (torch, transformers, ...) and gets only alignlab, from the wheel;
every command runs from a temporary directory with the venv's python, so nothing can come from the
checkout. This is the suite's one `demo --fast` run: the demo's structure is checked here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from conftest import train_records

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
STAGE_KEYS = {"greedy_accuracy", "sampled_accuracy", "format_rate", "preference_accuracy", "mean_length", "steps", "seconds"}


def _run(argv: list, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS="1", PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    result = subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{argv} exited {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A venv with alignlab installed from a wheel of this checkout (only alignlab: --no-deps)."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"  # a copy, so the build leaves no build/ or egg-info in the checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "alignlab", source / "alignlab", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", root / "dist", "."],
         cwd=source)
    (wheel,) = (root / "dist").glob("alignlab-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"alignlab/resources/configs/demo_sft.yaml", "alignlab/resources/configs/sft_tiny.yaml",
            "alignlab/resources/configs/data/addition_sft.jsonl"} <= names
    _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", root / "venv"], cwd=root)
    python = root / "venv" / "bin" / "python"
    # --force-reinstall: the system's editable alignlab has the same version; the venv gets its own copy.
    _run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--force-reinstall", wheel],
         cwd=root)
    work = root / "work"
    work.mkdir()
    where = _run([python, "-c", "import alignlab; print(alignlab.__file__)"], cwd=work).stdout.strip()
    assert Path(where).is_relative_to(root / "venv") and not Path(where).is_relative_to(REPO), where
    return root / "venv"


def test_a_shipped_config_runs_by_name_from_any_directory(venv, tmp_path):
    alignlab = venv / "bin" / "alignlab"
    listed = _run([alignlab, "configs"], cwd=tmp_path).stdout
    assert "sft_tiny" in listed and str(venv) in listed
    _run([alignlab, "sft", "-c", "sft_tiny", "train.max_steps=2", "train.batch_size=8", "train.eval_batch_size=32",
          "train.progress=false"], cwd=tmp_path)
    run = tmp_path / "runs" / "sft_tiny"  # outputs: relative to the current directory
    assert [r["step"] for r in train_records(run)] == [1, 2]
    data = yaml.safe_load((run / "config.yaml").read_text())["data"]
    assert Path(data["train"]).is_relative_to(venv) and Path(data["train"]).name == "addition_sft.jsonl"
    copied = _run([alignlab, "configs", "copy", "dpo_tiny", "mine"], cwd=tmp_path).stdout
    assert "wrote mine/dpo_tiny.yaml" in copied and (tmp_path / "mine" / "data" / "addition_pairs.jsonl").is_file()


def test_fast_demo_from_the_wheel_structure_and_each_stage_improves_its_objective(venv, tmp_path):
    out = tmp_path / "demo"
    _run([venv / "bin" / "alignlab", "demo", "--fast", "--seed", "1", "--out", out], cwd=tmp_path, timeout=1800)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == "addition" and summary["seed"] == 1
    log = (out / "demo.log").read_text()  # every stage's log and the stage lines, in order
    assert log.index("[ sft]") < log.index(f"saved {out / 'dpo'}") < log.index("[ dpo]") < log.index("[grpo]")
    assert "[ sft]" not in (out / "sft" / "train.log").read_text()
    assert summary["test_prompts"] == 100 and summary["seconds"] > 0
    assert set(summary["stages"]) == {"sft", "dpo", "grpo"}
    for name, stage in summary["stages"].items():
        assert STAGE_KEYS <= set(stage), name
        for key in ("greedy_accuracy", "sampled_accuracy", "format_rate", "preference_accuracy"):
            assert 0.0 <= stage[key] <= 1.0
        assert (out / name / "final" / "config.json").is_file()
        assert (out / name / "metrics.jsonl").is_file()
    sft, dpo, grpo = (summary["stages"][n]["objective"] for n in ("sft", "dpo", "grpo"))
    assert sft["name"] == "loss" and sft["last"] < sft["first"] * 0.5
    assert dpo["name"] == "loss" and dpo["last"] < dpo["first"]
    assert grpo["name"] == "sampled reward on held-out prompts" and grpo["last"] > grpo["first"]
    # The printed verdicts say in words when a stage did not beat SFT, and that --fast is too short for the gains.
    stages = summary["stages"]
    grpo_gain = stages["grpo"]["greedy_accuracy"] - stages["sft"]["greedy_accuracy"]
    assert any(n.startswith("GRPO did NOT improve greedy accuracy") for n in summary["notes"]) == (grpo_gain <= 0)
    assert any(n.startswith("--fast trains each stage") for n in summary["notes"])
    assert (out / "report.html").is_file()
