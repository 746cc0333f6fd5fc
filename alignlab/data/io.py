"""Read rows from local JSONL/JSON/Parquet/CSV files or a Hugging Face dataset id.

Every row comes back as a `Row`: its dict plus where it came from (source, 1-based row/line
number), so any later error can name the file, the row and the field.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from alignlab.errors import DataError

LOCAL_SUFFIXES = {".jsonl", ".json", ".parquet", ".csv"}


@dataclass
class Row:
    values: dict[str, Any]
    source: str  # file path or hub id
    index: int  # 1-based line number for JSONL, row number otherwise

    def where(self, field: Optional[str] = None) -> str:
        unit = "line" if self.source.endswith(".jsonl") else "row"
        place = f"{self.source}, {unit} {self.index}"
        return f"{place}, field '{field}'" if field else place


def _not_utf8(path: Path) -> DataError:
    """DataError naming the line of the first byte that is not UTF-8."""
    raw = path.read_bytes()
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        return DataError(f"{path}, line {line}: not UTF-8 text (save the file as UTF-8)")
    return DataError(f"{path}: not UTF-8 text (save the file as UTF-8)")


def _read_jsonl(path: Path) -> list[Row]:
    rows = []
    try:
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    value = json.loads(line.rstrip("\r\n"))  # so the error's column is on this line
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}, line {number}: malformed JSON ({exc.msg} at column {exc.colno})") from None
                if not isinstance(value, dict):
                    raise DataError(f"{path}, line {number}: expected a JSON object, got {type(value).__name__}")
                rows.append(Row(value, str(path), number))
    except UnicodeDecodeError:
        raise _not_utf8(path) from None
    return rows


def _read_json(path: Path) -> list[Row]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise _not_utf8(path) from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: malformed JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    if isinstance(value, dict) and isinstance(value.get("data"), list):
        value = value["data"]
    if not isinstance(value, list):
        raise DataError(f"{path}: expected a JSON list of objects (or {{'data': [...]}})")
    rows = []
    for number, item in enumerate(value, start=1):
        if not isinstance(item, dict):
            raise DataError(f"{path}, row {number}: expected a JSON object, got {type(item).__name__}")
        rows.append(Row(item, str(path), number))
    return rows


def _read_table(path: Path) -> list[Row]:
    import pandas as pd

    try:
        frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, keep_default_na=False)
    except Exception as exc:  # pandas raises many types for unreadable files
        raise DataError(f"{path}: cannot read as {path.suffix[1:]} ({exc})") from None
    records = frame.to_dict(orient="records")
    return [Row(_plain(record), str(path), number) for number, record in enumerate(records, start=1)]


def _plain(value: Any) -> Any:
    """numpy arrays and scalars from parquet -> Python lists and numbers."""
    if hasattr(value, "tolist"):
        return _plain(value.tolist())
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _read_hub(name: str, split: str) -> list[Row]:
    import datasets

    config = None
    if ":" in name:  # "org/dataset:config"
        name, config = name.split(":", 1)
    try:
        dataset = datasets.load_dataset(name, config, split=split)
    except Exception as exc:  # network, missing dataset, missing split: all reported the same way
        raise DataError(
            f"cannot load '{name}' (split '{split}') as a local file or a Hugging Face dataset: {exc}. "
            "Local files must end in .jsonl, .json, .parquet or .csv."
        ) from None
    return [Row(dict(item), f"{name}[{split}]", number) for number, item in enumerate(dataset, start=1)]


def read_rows(source: str, *, split: str = "train", max_rows: Optional[int] = None) -> list[Row]:
    """All rows of a local file (by suffix) or a hub dataset id."""
    path = Path(source)
    if path.suffix in LOCAL_SUFFIXES or path.exists():
        if not path.is_file():
            raise DataError(f"data file not found: {source}")
        readers = {".jsonl": _read_jsonl, ".json": _read_json, ".parquet": _read_table, ".csv": _read_table}
        if path.suffix not in readers:
            raise DataError(f"{source}: unsupported file type '{path.suffix}' (use .jsonl, .json, .parquet or .csv)")
        rows = readers[path.suffix](path)
    else:
        rows = _read_hub(source, split)
    if not rows:
        raise DataError(f"{source}: no rows found")
    return rows[:max_rows] if max_rows else rows


def rename_columns(rows: list[Row], columns: dict[str, str]) -> list[Row]:
    """Apply a column mapping {our_name: their_name}, e.g. {"prompt": "question"}."""
    if not columns:
        return rows
    for row in rows:
        for ours, theirs in columns.items():
            if theirs in row.values:
                row.values[ours] = row.values.pop(theirs)
    return rows


def require_columns(rows: list[Row], needed: list[str], source: str) -> None:
    """Fail early, naming the missing column and the columns that were found."""
    found = sorted(rows[0].values)
    for name in needed:
        if name not in rows[0].values:
            raise DataError(
                f"{source}: missing column '{name}'; columns found: {', '.join(found)}. "
                f"Map yours with data.columns.{name}=<your column>."
            )


def split_eval(rows: list, fraction: float, seed: int) -> tuple[list, list]:
    """Deterministically hold out `fraction` of rows for evaluation."""
    if fraction <= 0:
        return rows, []
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    count = max(1, int(round(len(rows) * fraction)))
    held = set(order[:count])
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]
