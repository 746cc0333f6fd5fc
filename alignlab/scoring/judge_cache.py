"""A disk cache of judge replies, shared by runs and processes: a judgment is paid for once.

Key: a SHA-256 of (server model, rubric text, mode, the request: its filled messages, output constraint,
temperature and token limit). The inputs are inside the filled messages, so the same completion judged
for the same prompt, rubric and model is a hit whether it comes from a resumed run, a rerun with the same
seed, a sweep or another command; the server's address is not in the key (the same model elsewhere
judges the same). The raw reply text is stored, not the parsed score, so a better parser reads old
replies anew. Failed requests are never stored.

One small JSON file per entry under `<dir>/<2 hex>/<hash>.json`, written to a temporary file in the same
directory and renamed into place (atomic on POSIX): a reader sees a whole entry or none, and two
processes writing the same entry write the same content. No lock and no index to corrupt.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Optional


def default_cache_dir() -> Path:
    """$ALIGNLAB_CACHE/judge, else $XDG_CACHE_HOME/alignlab/judge, else ~/.cache/alignlab/judge."""
    root = os.environ.get("ALIGNLAB_CACHE")
    if root:
        return Path(root).expanduser() / "judge"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "alignlab" / "judge"


def cache_key(model: str, rubric_text: str, mode: str, request: dict) -> str:
    blob = json.dumps([model, rubric_text, mode, request], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class JudgeCache:
    def __init__(self, directory: Optional[str | Path] = None):
        self.directory = Path(directory).expanduser() if directory else default_cache_dir()

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.json"

    def get(self, key: str) -> Optional[dict[str, Any]]:
        try:
            entry = json.loads(self._path(key).read_text(encoding="utf-8"))
        except (OSError, ValueError):  # absent, or unreadable: judged again (and rewritten)
            return None
        return entry if isinstance(entry, dict) and isinstance(entry.get("reply"), str) else None

    def put(self, key: str, entry: dict[str, Any]) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                json.dump(entry, out, ensure_ascii=False)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
