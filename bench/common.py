"""Shared helpers for the alignlab-vs-TRL benchmarks in bench/.

The orchestrating process of each benchmark imports only the standard library (and this module):
every measured configuration runs in its own worker subprocess, so each worker's peak RSS is its
own. Linux carries a parent's RSS high-water mark into a child's `ru_maxrss` across exec, so a
parent that had imported torch would inflate every child's reading; a light parent avoids that,
and we also read `VmHWM` (the high-water mark of the process's own address space) to confirm it.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024


# ---------------------------------------------------------------- memory


def _status_kib(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1])
    except OSError:
        return None
    return None


def rss_mib() -> float:
    """Current resident set size of this process, MiB."""
    value = _status_kib("VmRSS")
    return value / 1024 if value is not None else float("nan")


def peak_rss_mib() -> dict:
    """Peak RSS of this process so far, MiB: getrusage's ru_maxrss (KiB on Linux) and /proc VmHWM."""
    hwm = _status_kib("VmHWM")
    return {
        "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "vmhwm_mib": hwm / 1024 if hwm is not None else float("nan"),
    }


# ---------------------------------------------------------------- workers


def snapshot_alignlab(workdir: Path, source: str = "tree") -> tuple[Path, str]:
    """Copy the alignlab package the benchmark measures into the work dir; workers import it from there.

    source: "tree" = the checkout's alignlab/ as it is now (uncommitted edits included), or a git
    revision ("HEAD", a commit). Every worker of one benchmark run then runs the same code even if
    the checkout changes meanwhile. Returns (directory to put on PYTHONPATH, description).
    """
    import hashlib
    import io
    import shutil
    import tarfile

    def git(*args) -> str:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True).stdout.strip()

    staging = workdir / "alignlab-src.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    if source == "tree":
        shutil.copytree(REPO / "alignlab", staging / "alignlab", ignore=shutil.ignore_patterns("__pycache__"))
        dirty = git("status", "--porcelain", "--", "alignlab")
        what = f"working tree at {git('rev-parse', '--short', 'HEAD')}" + (" + uncommitted changes to alignlab/" if dirty else " (alignlab/ clean)")
    else:
        commit = git("rev-parse", "--short", source)
        blob = subprocess.run(["git", "-C", str(REPO), "archive", commit, "alignlab"], capture_output=True, check=True).stdout
        tarfile.open(fileobj=io.BytesIO(blob)).extractall(staging)
        subject = git("log", "-1", "--format=%s", commit)
        what = f"commit {commit} ({subject if len(subject) <= 72 else subject[:69] + '...'})"
    digest = hashlib.sha256()
    for path in sorted((staging / "alignlab").rglob("*.py")):
        digest.update(str(path.relative_to(staging)).encode() + b"\0" + path.read_bytes())
    final = workdir / f"alignlab-src-{digest.hexdigest()[:12]}"
    if final.exists():
        shutil.rmtree(staging)
    else:
        staging.rename(final)
    return final, f"{what}; alignlab/*.py content hash {digest.hexdigest()[:12]}"


def worker_env(workdir: Path, threads: int | None = None, src: str | None = None) -> dict:
    """Offline, quiet, a fresh datasets cache per worker (TRL caches precomputed ref log-probs there),
    and the same intra-op thread count for every worker (OMP_NUM_THREADS; torch reads it at start)."""
    env = dict(os.environ)
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cache = Path(tempfile.mkdtemp(prefix="hfds-", dir=workdir))
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_DATASETS_CACHE=str(cache),
        TQDM_DISABLE="1",
        TOKENIZERS_PARALLELISM="false",
        TRANSFORMERS_VERBOSITY="error",
        PYTHONWARNINGS="ignore",
        PYTHONPATH=os.pathsep.join([src or str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    )
    return env


def run_worker(script: Path, role: str, spec: dict, workdir: Path, tag: str, timeout: float = 900) -> dict:
    """Run `python script --worker role --spec <json>` and return the JSON result it writes."""
    workdir.mkdir(parents=True, exist_ok=True)
    spec_path = workdir / f"{tag}.spec.json"
    out_path = workdir / f"{tag}.result.json"
    log_path = workdir / f"{tag}.log"
    spec = {**spec, "result_path": str(out_path)}
    spec_path.write_text(json.dumps(spec, indent=1))
    out_path.unlink(missing_ok=True)
    start = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.run(
            [sys.executable, str(script), "--worker", role, "--spec", str(spec_path)],
            stdout=log, stderr=subprocess.STDOUT, env=worker_env(workdir, spec.get("threads"), spec.get("alignlab_src")), cwd=str(workdir), timeout=timeout,
        )
    wall = time.perf_counter() - start
    if proc.returncode != 0 or not out_path.exists():
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-40:])
        raise RuntimeError(f"worker {tag} ({role}) failed with exit code {proc.returncode}; log {log_path}:\n{tail}")
    result = json.loads(out_path.read_text())
    result["process_wall_s"] = wall
    src, imported = spec.get("alignlab_src"), result.get("alignlab_file")
    if src and imported and not imported.startswith(src):
        raise RuntimeError(f"worker {tag} imported alignlab from {imported}, not from the snapshot {src}")
    return result


def write_result(spec: dict, result: dict) -> None:
    """The worker's result, plus which alignlab it imported (to confirm the snapshot was used)."""
    module = sys.modules.get("alignlab")
    result = {**result, "alignlab_file": getattr(module, "__file__", None)}
    Path(spec["result_path"]).write_text(json.dumps(result, indent=1))


def load_spec(argv: list[str]) -> tuple[str, dict] | None:
    """(role, spec) when this process is a worker, else None."""
    if "--worker" not in argv:
        return None
    role = argv[argv.index("--worker") + 1]
    spec = json.loads(Path(argv[argv.index("--spec") + 1]).read_text())
    return role, spec


# ---------------------------------------------------------------- timing and stats


def median(values) -> float:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else float("nan")


def steady(values: list[float], skip: int) -> list[float]:
    """Drop the first `skip` warm-up values (keep at least one)."""
    return values[skip:] if len(values) > skip else values[-1:]


def intervals(stamps: list[float]) -> list[float]:
    return [b - a for a, b in zip(stamps, stamps[1:])]


def rotations(names: list[str], rounds: int) -> list[list[str]]:
    """Round r runs the configurations rotated by r, so none is always first or last."""
    return [names[r % len(names):] + names[: r % len(names)] for r in range(rounds)]


# ---------------------------------------------------------------- reporting


def table(headers: list[str], rows: list[list]) -> str:
    def fmt(value):
        if isinstance(value, float):
            if value != value:
                return "n/a"
            return f"{value:.3f}" if abs(value) < 100 else f"{value:.0f}"
        return str(value)

    cells = [[fmt(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    line = lambda values: "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths)) + " |"  # noqa: E731
    out = [line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in cells]
    return "\n".join(out)


def load_average() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def machine_line() -> str:
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",) * 3
    return (
        f"{time.strftime('%Y-%m-%d %H:%M:%S')} | {platform.platform()} | python {platform.python_version()} | "
        f"{os.cpu_count()} CPUs | load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )


def versions() -> dict:
    """Library versions, read without importing them (the parent stays light)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "transformers", "trl", "accelerate", "datasets", "deepspeed", "alignlab"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            if name != "deepspeed":  # optional
                out[name] = "?"
    return out


def default_workdir(name: str) -> Path:
    return Path(tempfile.gettempdir()) / "alignlab-bench" / name


def add_run_args(parser, name: str, threads: int = 1) -> None:
    """The options every benchmark shares: threads, which alignlab to measure, where, raw JSON."""
    parser.add_argument("--threads", type=int, default=threads,
                        help="torch intra-op threads in every worker (0 = torch's default); 1 is steadier on a shared machine")
    parser.add_argument("--alignlab", default="tree",
                        help="which alignlab to measure: 'tree' (the checkout as it is now) or a git revision such as HEAD")
    parser.add_argument("--workdir", type=Path, default=default_workdir(name))
    parser.add_argument("--json", type=Path, help="also write all raw results here")


def start(args, title: str) -> tuple[Path, Path]:
    """Make the work dir, snapshot the alignlab to measure, print the header; returns (workdir, alignlab src)."""
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    src, src_info = snapshot_alignlab(work, args.alignlab)
    print(f"# {title}  ({machine_line()})")
    print(f"versions: {versions()}")
    print(f"alignlab measured: {src_info}")
    return work, src
