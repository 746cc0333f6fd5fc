"""Which directory a training run writes to, and whether it continues a run already there
(train.output_dir and train.resume)."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Optional

from alignlab.model.run_files import latest_checkpoint
from alignlab.errors import AlignlabError
from alignlab.model.loading import model_slug


def default_run_dir(command: str, config) -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{command}_{model_slug(config.model.name_or_path)}_lr{config.train.lr:.0e}_{stamp}"


def resume_requested(resume) -> bool:
    """train.resume: true / "true" / "auto", or a run directory."""
    return resume not in (False, None, "", "false")


def resume_target(config) -> Optional[Path]:
    """The directory to continue, when train.resume names it or says true or auto (then
    train.output_dir). Resuming a directory that holds no run is an error, except with auto, which
    then means a new run (None): the setting for jobs that are restarted until they finish."""
    resume = config.train.resume
    if not resume_requested(resume):
        return None
    if isinstance(resume, str) and resume not in ("true", "auto"):
        target = Path(resume)
    elif not config.train.output_dir:
        raise AlignlabError(f"train.resume={str(resume).lower()} needs train.output_dir (or pass the run directory: "
                            "train.resume=<dir>)")
    else:
        target = Path(config.train.output_dir)
    # A run writes its config.yaml first (once its data and model have loaded), before any step.
    if (target / "config.yaml").is_file() or _has_run(target):
        return target
    if resume == "auto":
        return None
    found = "does not exist" if not target.exists() else "holds no run (no config.yaml in it)"
    raise AlignlabError(
        f"train.resume={str(resume).lower()}: nothing to resume: {target} {found}. Give the directory of the run to "
        "continue, or leave train.resume out to start a new run (train.resume=auto continues a run only if one is there)"
    )


def resolve_run_dir(command: str, config) -> tuple[Path, bool]:
    """(run_dir, resuming). Never reuses an existing run unless resume was asked for."""
    target = resume_target(config)
    if target is not None:
        return target, True
    run_dir = Path(config.train.output_dir) if config.train.output_dir else default_run_dir(command, config)
    # A directory whose run stopped before its first logged step may be reused.
    if _has_run(run_dir):
        raise AlignlabError(
            f"{run_dir} already holds a run. Continue it with train.resume=true, or choose another train.output_dir."
        )
    return run_dir, False


def _has_run(run_dir: Path) -> bool:
    return (run_dir / "metrics.jsonl").exists() or latest_checkpoint(run_dir) is not None
