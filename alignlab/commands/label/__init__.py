"""`alignlab label`: people rank sampled responses on a local web page; `--stats` measures their agreement.

    alignlab label responses.jsonl --out ranked.jsonl     # serve the page (127.0.0.1:8765)
    alignlab label --stats ranked.jsonl                   # Kendall's tau-b and Krippendorff's alpha
    alignlab pairs ranked.jsonl pairs.jsonl               # the ranks -> DPO pairs

store.py: the items and the append-only, fsync'd label file; server.py: the FastAPI app and why this
stack; agreement.py: the agreement statistics (pure functions); static/: the page (HTML/JS/CSS, no build).
"""

from __future__ import annotations

from typing import Optional


def label_command(source: Optional[str], out: Optional[str], *, stats: Optional[str] = None, host: str = "127.0.0.1",
                  port: int = 8765, seed: int = 0, require_token: bool = False) -> None:
    """`alignlab label IN --out OUT` serves the page until Ctrl-C; `alignlab label --stats RANKED` prints agreement."""
    from alignlab.errors import ConfigError

    if stats:
        if source or out:
            raise ConfigError("--stats reads one labelled file: alignlab label --stats ranked.jsonl (no IN, no --out)")
        stats_command(stats)
        return
    if not source or not out:
        raise ConfigError("give the responses to rank and where the labels go: alignlab label responses.jsonl "
                          "--out ranked.jsonl (or --stats ranked.jsonl)")
    try:
        from alignlab.commands.label.server import serve
    except ModuleNotFoundError as exc:
        if exc.name not in ("fastapi", "uvicorn", "starlette", "pydantic"):
            raise
        raise ConfigError(f"alignlab label needs FastAPI and uvicorn ({exc.name} is not installed): "
                          "pip install 'alignlab[label]'") from None

    serve(source, out, host=host, port=port, seed=seed, require_token=require_token)


def stats_command(path: str) -> dict:
    """Print the agreement of the annotators in a ranked.jsonl; return the numbers."""
    from pathlib import Path

    from alignlab.commands.label.agreement import agreement, agreement_report
    from alignlab.commands.label.store import read_log
    from alignlab.errors import DataError

    if not Path(path).is_file():
        raise DataError(f"{path}: no such file (give the --out file of alignlab label)")
    labels = read_log(Path(path), repair=False)
    stats = agreement(labels)
    print(f"{path}: {len(labels)} labels")
    print(agreement_report(stats, skipped=sum(1 for label in labels if label.get("skipped"))))
    return stats
