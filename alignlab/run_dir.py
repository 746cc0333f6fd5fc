"""Which directory a training run writes to, and whether it continues a run already there
(train.output_dir and train.resume)."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Optional

from alignlab import checkpoint as ckpt
from alignlab.errors import AlignlabError
from alignlab.models import model_slug


def default_run_dir(command: str, config) -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{command}_{model_slug(config.model.name_or_path)}_lr{config.train.lr:.0e}_{stamp}"


def resume_requested(resume) -> bool:
    """train.resume: true / "true", or a run directory."""
    return resume not in (False, None, "", "false")


def resume_target(config) -> Optional[Path]:
    """The directory to continue, when train.resume names it or says true (then train.output_dir)."""
    resume = config.train.resume
    if isinstance(resume, str) and resume not in ("", "false", "true"):
        return Path(resume)
    if not resume_requested(resume):
        return None
    if not config.train.output_dir:
        raise AlignlabError("train.resume=true needs train.output_dir (or pass the run directory: train.resume=<dir>)")
    return Path(config.train.output_dir)


def resolve_run_dir(command: str, config) -> tuple[Path, bool]:
    """(run_dir, resuming). Never reuses an existing run unless resume was asked for."""
    resume = config.train.resume
    if isinstance(resume, str) and resume not in ("", "false", "true"):
        return Path(resume), True
    run_dir = Path(config.train.output_dir) if config.train.output_dir else default_run_dir(command, config)
    # A directory whose run failed before its first logged step (e.g. on bad data) may be reused.
    has_run = (run_dir / "metrics.jsonl").exists() or ckpt.latest_checkpoint(run_dir) is not None
    if resume_requested(resume):
        return resume_target(config), has_run
    if has_run:
        raise AlignlabError(
            f"{run_dir} already holds a run. Continue it with train.resume=true, or choose another train.output_dir."
        )
    return run_dir, False
