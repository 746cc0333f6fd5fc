"""The example notebooks: quickstart.ipynb executed end to end in a real Jupyter kernel (nbclient, with fewer
steps through its `parameters` cell); the Colab notebook parsed and its config cells built into valid configs."""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _with_parameters(nb, source: str):
    """The notebook with its `parameters`-tagged cell replaced (papermill's convention)."""
    (cell,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    cell.source = source
    return nb


@pytest.mark.slow
def test_quickstart_runs_in_a_jupyter_kernel(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(EXAMPLES / "quickstart.ipynb", as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "stored with outputs"
    _with_parameters(nb, "SFT_STEPS, DPO_STEPS, GRPO_STEPS, TEST_PROMPTS = 20, 4, 2, 16")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, if any cell fails
    outputs = {i: c.outputs for i, c in enumerate(nb.cells) if c.cell_type == "code"}
    text = "\n".join(o.get("text", "") + json.dumps(o.get("data", {})) for cell in outputs.values() for o in cell)
    assert "Traceback" not in text
    runs = sorted(p.name.split("_")[0] for p in (tmp_path / "runs").iterdir() if not p.name.startswith("."))
    assert runs == ["dpo", "grpo", "sft"]
    comparison = next(o for cell in outputs.values() for o in cell
                      if "text/html" in o.get("data", {}) and "format_rate" in o["data"]["text/html"])
    assert all(name in comparison["data"]["text/plain"] for name in ("sft", "dpo", "grpo"))
    assert any("image/png" in o.get("data", {}) for cell in outputs.values() for o in cell)  # the metrics plot
    assert any("<iframe srcdoc=" in o.get("data", {}).get("text/html", "") for cell in outputs.values() for o in cell)
    assert (tmp_path / "runs" / ".inputs").is_dir() and not list(tmp_path.glob("*.ipynb"))


def test_colab_notebook_parses_and_its_config_cells_build_valid_configs(monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    import alignlab

    nb = nbformat.read(EXAMPLES / "colab_qwen2.5-0.5b.ipynb", as_version=4)
    nbformat.validate(nb)
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    for source in code:  # every cell is Python (shell lines start with ! or %)
        ast.parse("\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("!", "%"))))
    configs = [c.source for c in nb.cells if "config" in c.metadata.get("tags", [])]
    assert configs, "no cell tagged `config`"
    built = {}
    for source in configs:
        scope: dict = {}
        exec(source, scope)  # the cells only define dicts of settings
        for name, value in scope.items():
            if name.endswith("_SETTINGS"):
                command = name.removesuffix("_SETTINGS").lower()
                built[command] = alignlab.build_config(command, **value)
    assert set(built) == {"sft", "dpo", "grpo"}
    assert built["sft"].lora.enabled and built["sft"].model.name_or_path == "Qwen/Qwen2.5-0.5B-Instruct"
    assert os.path.basename(EXAMPLES) == "examples"
