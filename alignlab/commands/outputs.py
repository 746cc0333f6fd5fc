"""Results written at a fixed name (a run's eval.json, report.html) never replace an earlier result: the
earlier file stays beside the new one, renamed with the time it was written, so the fixed name always
holds the latest and nothing is lost silently."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional

from alignlab.engine.checkpoint import atomic_write_text


def keep_earlier(path: Path) -> Optional[Path]:
    """Rename a file at `path` to `<stem>.<when it was written, YYYYmmdd-HHMMSS><suffix>` (eval.json ->
    eval.20261207-104800.json; -2, -3, ... when that name is taken) and return the new path; None when
    there is no file at `path`."""
    path = Path(path)
    if not path.is_file():
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(path.stat().st_mtime))
    kept, n = path.with_name(f"{path.stem}.{stamp}{path.suffix}"), 2
    while kept.exists():
        kept, n = path.with_name(f"{path.stem}.{stamp}-{n}{path.suffix}"), n + 1
    os.replace(path, kept)
    return kept


def write_result(path: Path, text: str) -> Path:
    """Write `text` to `path` (atomically: a reader never sees half a file), keeping an earlier file there
    (see keep_earlier) and printing its new name; returns `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    kept = keep_earlier(path)
    atomic_write_text(path, text)
    if kept is not None:
        print(f"kept the earlier {path.name} as {kept}")
    return path
