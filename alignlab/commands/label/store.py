"""What `alignlab label` ranks and where each label goes; no web code.

Input: rows {"prompt", "responses": [...], ...} (`alignlab sample`'s output, or any file `read_rows`
takes). Responses with identical text are shown once and always share a rank (a collapsed model's
repeats are not a preference); a row with fewer than two different responses is left out and counted.

Output (`--out`): one JSON line per label, appended with flush + fsync before the page moves on, so
killing the server loses nothing that was acknowledged. A row is the input row with

    "ranks": [1, 3, 1, ...]   one per response, in the input's order; 1 is best, ties share a rank,
                              the next rank counts the tied ones ("1 1 3": competition ranking)
    "annotator": "alice", "source_row": 7 (the input's 1-based line/row), "skipped": false,
    "shown_order": [2, 0, 1]  response indices in the order the page showed them
    "seconds": 12.3, "labeled_at": "2026-01-01T12:00:00Z"

which is what `alignlab pairs` reads. A skip is a row with every rank null (`pairs` counts it as a
prompt with fewer than two scored responses). Undo removes an annotator's last row by rewriting the
file atomically (a temporary file beside it, fsync, rename). Each annotator works through the rows
in input order, so reopening the page resumes at the first row that annotator has not labelled.
"""

from __future__ import annotations

import json
import os
import random
import re
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional, Sequence

from alignlab.data.io import read_rows
from alignlab.errors import DataError

# Columns this command writes; an input column with one of these names is not carried over
# ("scores" would make the row ambiguous for `alignlab pairs`, which takes scores or ranks, not both).
WRITTEN = ("ranks", "scores", "annotator", "source_row", "skipped", "shown_order", "seconds", "labeled_at")
ANNOTATOR = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")


class LabelConflict(Exception):
    """A request that does not fit the log as it is now (a stale page, a double submit): HTTP 409."""


@dataclass(frozen=True)
class Item:
    row: int  # the input's 1-based line (JSONL) or row number
    values: dict
    groups: tuple[tuple[int, ...], ...]  # response indices grouped by identical text, in first-seen order


def check_annotator(name: str) -> str:
    if not isinstance(name, str) or not ANNOTATOR.fullmatch(name):
        raise ValueError(f"annotator name {name!r}: use 1-64 letters, digits and _ . @ - (starting with a letter or digit)")
    return name


def load_items(source: str) -> tuple[list[Item], int]:
    """The rows to rank, and how many were left out for having fewer than two different responses."""
    items, left_out = [], 0
    for row in read_rows(source):
        values = row.values
        if "prompt" not in values:
            raise DataError(f"{row.where('prompt')}: missing; columns found: {', '.join(sorted(values))}")
        prompt = values["prompt"]
        if not isinstance(prompt, (str, list)):
            raise DataError(f"{row.where('prompt')}: expected a string or a list of messages, got {type(prompt).__name__}")
        responses = values.get("responses")
        if not isinstance(responses, list) or not all(isinstance(r, str) for r in responses):
            raise DataError(f"{row.where('responses')}: expected a list of response strings (alignlab sample writes "
                            f"them), got {type(responses).__name__ if responses is not None else 'nothing'}")
        groups: dict[str, list[int]] = {}
        for i, text in enumerate(responses):
            groups.setdefault(text, []).append(i)
        if len(groups) < 2:
            left_out += 1
            continue
        items.append(Item(row.index, values, tuple(tuple(g) for g in groups.values())))
    return items, left_out


def shown_groups(item: Item, annotator: str, seed: int) -> list[tuple[int, ...]]:
    """The groups in the order this annotator sees them: shuffled, the same on every reload (seeded by
    seed, annotator and row), different between annotators so position bias does not line up."""
    order = list(item.groups)
    random.Random(f"{seed}:{annotator}:{item.row}").shuffle(order)  # a str seed is hashed with SHA-512: stable
    return order


def competition_ranks(tiers: Sequence[Sequence[int]], n: int) -> list[int]:
    """Ranks (1 = best) of n responses from tiers (best first, each a list of tied response indices).

    >>> competition_ranks([[2], [0, 3], [1]], 4)
    [2, 4, 1, 2]
    """
    flat = [i for tier in tiers for i in tier]
    if sorted(flat) != list(range(n)):
        raise ValueError(f"a ranking must place each of the {n} responses exactly once, got {list(tiers)}")
    ranks = [0] * n
    placed = 0
    for tier in tiers:
        for i in tier:
            ranks[i] = placed + 1
        placed += len(tier)
    return ranks


def tiers_from_ranks(ranks: Sequence[Optional[float]]) -> list[list[int]]:
    """The inverse of `competition_ranks` (null ranks left out).

    >>> tiers_from_ranks([2, 4, 1, 2])
    [[2], [0, 3], [1]]
    """
    by_rank: dict[float, list[int]] = {}
    for i, rank in enumerate(ranks):
        if rank is not None:
            by_rank.setdefault(rank, []).append(i)
    return [by_rank[r] for r in sorted(by_rank)]


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some systems cannot open a directory; the rename itself is still atomic
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rewrite_lines(path: Path, rows: Sequence[dict]) -> None:
    """Replace the file's content atomically: readers see the old file or the new one, never a mix."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def append_line(path: Path, row: dict) -> None:
    """One JSON line, on disk (flush + fsync) before this returns."""
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_log(path: Path, *, repair: bool = True) -> list[dict]:
    """The labels written so far. A last line cut off mid-write (no newline, not JSON) is dropped with a note
    (and, with repair, from the file too); any other bad line is an error naming it."""
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines):  # the last line had no newline: a write that was cut off
                print(f"{path}, line {number}: dropping a partly written last line")
                if repair:
                    rewrite_lines(path, rows)
                return rows
            raise DataError(f"{path}, line {number}: malformed JSON ({exc.msg}); fix or remove the line") from None
        if not isinstance(value, dict) or "annotator" not in value or "source_row" not in value:
            raise DataError(f"{path}, line {number}: not a label written by alignlab label (no 'annotator' and "
                            "'source_row'); choose another --out file")
        rows.append(value)
    if repair and text and not text.endswith("\n"):
        rewrite_lines(path, rows)  # so the next append starts on a line of its own
    return rows


class LabelStore:
    """The items, the log of labels, and each annotator's place in it; safe to call from several threads."""

    def __init__(self, source: str, out: str, *, seed: int = 0):
        self.source, self.path, self.seed = source, Path(out), seed
        self.items, self.left_out = load_items(source)
        if not self.items:
            raise DataError(f"{source}: no rows to rank (each needs a prompt and two or more different responses)")
        self.by_row = {item.row: item for item in self.items}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.labels = read_log(self.path)
        for number, label in enumerate(self.labels, start=1):
            self._check_matches(number, label)
        self.lock = threading.Lock()

    def _check_matches(self, number: int, label: dict) -> None:
        item = self.by_row.get(label["source_row"])
        if item is None or item.values["prompt"] != label.get("prompt") or item.values["responses"] != label.get("responses"):
            raise DataError(f"{self.path}, line {number}: labels row {label['source_row']} of another responses file "
                            f"(prompt or responses differ from {self.source}); label into a new --out file")

    def done(self, annotator: str) -> dict[int, dict]:
        """row -> the annotator's label (or skip) of it."""
        return {label["source_row"]: label for label in self.labels if label["annotator"] == annotator}

    def next_item(self, annotator: str) -> Optional[Item]:
        done = self.done(annotator)
        return next((item for item in self.items if item.row not in done), None)

    def progress(self, annotator: str) -> dict:
        done = self.done(annotator).values()
        skipped = sum(1 for label in done if label.get("skipped"))
        return {"total": len(self.items), "ranked": len(done) - skipped, "skipped": skipped}

    def record(self, annotator: str, row: int, tiers: Optional[Sequence[Sequence[int]]],
               seconds: Optional[float] = None) -> dict:
        """Write one label (tiers of response indices, best first) or, with tiers None, a skip."""
        with self.lock:
            item = self.next_item(annotator)
            if item is None or item.row != row:
                where = f"row {item.row}" if item else "nothing (all done)"
                raise LabelConflict(f"row {row} is not {annotator}'s next prompt ({where} is): the page was stale")
            n = len(item.values["responses"])
            if tiers is None:
                ranks: list[Any] = [None] * n
            else:
                ranks = competition_ranks(tiers, n)
                for group in item.groups:  # identical texts are one card on the page: one rank
                    if len({ranks[i] for i in group}) > 1:
                        raise ValueError(f"responses {list(group)} have the same text and must share a rank")
            carried = {k: v for k, v in item.values.items() if k not in WRITTEN}
            label = {**carried, "ranks": ranks, "annotator": annotator, "source_row": item.row,
                     "skipped": tiers is None,
                     "shown_order": [i for g in shown_groups(item, annotator, self.seed) for i in g],
                     "seconds": None if seconds is None else round(float(seconds), 1),
                     "labeled_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
            append_line(self.path, label)
            self.labels.append(label)
            return label

    def undo(self, annotator: str) -> dict:
        """Remove the annotator's last label (or skip) from the file; return it."""
        with self.lock:
            last = next((i for i in range(len(self.labels) - 1, -1, -1) if self.labels[i]["annotator"] == annotator), None)
            if last is None:
                raise LabelConflict(f"{annotator} has no label to undo")
            remaining = self.labels[:last] + self.labels[last + 1:]
            rewrite_lines(self.path, remaining)
            removed, self.labels = self.labels[last], remaining
            return removed
