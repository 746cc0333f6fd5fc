"""A run directory's weight files: where they are (final/, and checkpoint-NNNNNN/ folders, complete
ones holding state.json) and how a model is written there. The engine writes checkpoints
(`alignlab.engine.checkpoint`); model loading reads them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

CHECKPOINT_PREFIX = "checkpoint-"


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    found = [p for p in Path(run_dir).glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir() and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]) if p.name[len(CHECKPOINT_PREFIX):].isdigit() else -1)


def latest_checkpoint(run_dir: Path) -> Optional[Path]:
    dirs = [p for p in checkpoint_dirs(run_dir) if p.name[len(CHECKPOINT_PREFIX):].isdigit()]
    return dirs[-1] if dirs else None


def save_model(model, tokenizer, out_dir: Path) -> None:
    """Full weights, or the adapter alone for a PEFT model; plus the tokenizer."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    _usual_file_modes(out_dir)


def _usual_file_modes(out_dir: Path) -> None:
    """safetensors writes its files through a private temporary file (mode 0600); give them the mode
    every other file here gets (0666 less the umask), so others who can read the run can load it."""
    umask = os.umask(0)
    os.umask(umask)
    for file in Path(out_dir).glob("*.safetensors"):
        os.chmod(file, 0o666 & ~umask)
