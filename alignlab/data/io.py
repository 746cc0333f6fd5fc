"""Read rows from local JSONL/JSON/Parquet/CSV files or a Hugging Face dataset id.

Every row comes back as a `Row`: its dict plus where it came from (source, 1-based row/line
number), so any later error can name the file, the row and the field. A file is read by what it is:
one that starts with the Parquet magic bytes is read as Parquet whatever its name says.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from alignlab.errors import DataError

log = logging.getLogger("alignlab")

LOCAL_SUFFIXES = {".jsonl", ".json", ".parquet", ".csv"}
PARQUET_MAGIC = b"PAR1"
LINES_NAMED = 5  # malformed lines listed by line number in the skip warning


@dataclass
class Row:
    values: dict[str, Any]
    source: str  # file path or hub id
    index: int  # 1-based line number for JSONL, row number otherwise
    # Why the line could not be read. Such rows exist only under skip_bad_rows, so that the loaders
    # skip and count them with every other bad row (`check_readable`).
    error: Optional[str] = None

    def where(self, field: Optional[str] = None) -> str:
        unit = "line" if self.source.endswith(".jsonl") else "row"
        place = f"{self.source}, {unit} {self.index}"
        return f"{place}, field '{field}'" if field else place


def check_readable(row: Row) -> None:
    """DataError for a row kept only to be counted as bad (a malformed JSON line under skip_bad_rows)."""
    if row.error:
        raise DataError(f"{row.where()}: {row.error}")


def _not_utf8(path: Path) -> DataError:
    """DataError naming the line of the first byte that is not UTF-8."""
    raw = path.read_bytes()
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        return DataError(f"{path}, line {line}: not UTF-8 text (save the file as UTF-8)")
    return DataError(f"{path}: not UTF-8 text (save the file as UTF-8)")


def _parse_line(line: str) -> tuple[Optional[dict], str]:
    """(object, "") for a good JSONL line, (None, what is wrong) otherwise."""
    try:
        value = json.loads(line.rstrip("\r\n"))  # so the error's column is on this line
    except json.JSONDecodeError as exc:
        return None, f"malformed JSON ({exc.msg} at column {exc.colno})"
    if not isinstance(value, dict):
        return None, f"expected a JSON object, got {type(value).__name__}"
    return value, ""


def _read_jsonl(path: Path, skip_bad_rows: bool = False) -> list[Row]:
    rows, bad = [], []
    try:
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                value, error = _parse_line(line)
                if error and not skip_bad_rows:
                    raise DataError(f"{path}, line {number}: {error}")
                if error:
                    bad.append(f"line {number} ({error})")
                rows.append(Row(value or {}, str(path), number, error or None))
    except UnicodeDecodeError:
        raise _not_utf8(path) from None
    if bad:
        more = f" and {len(bad) - LINES_NAMED} more" if len(bad) > LINES_NAMED else ""
        log.warning("%s: skipping %d unreadable lines (data.skip_bad_rows=true): %s%s",
                    path, len(bad), "; ".join(bad[:LINES_NAMED]), more)
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


def _read_table(path: Path, kind: str, source: str) -> list[Row]:
    import pandas as pd

    try:
        frame = pd.read_parquet(path) if kind == "parquet" else pd.read_csv(path, keep_default_na=False)
    except Exception as exc:  # pandas raises many types for unreadable files
        raise DataError(f"{path}: cannot read as {kind} ({exc})") from None
    records = frame.to_dict(orient="records")
    return [Row(_plain(record), source, number) for number, record in enumerate(records, start=1)]


def _is_parquet(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(len(PARQUET_MAGIC)) == PARQUET_MAGIC


def _read_local(path: Path, skip_bad_rows: bool) -> list[Row]:
    if _is_parquet(path):
        if path.suffix == ".parquet":
            return _read_table(path, "parquet", str(path))
        # Exporters often save Parquet under a .jsonl name; read it as what it is. The rows are named
        # "<file> (parquet), row N" so no later message calls them JSONL lines.
        log.warning("%s starts with the Parquet magic bytes %r: it is a Parquet file whatever its name says, and is "
                    "read as one (rename it to .parquet to silence this warning)", path, PARQUET_MAGIC.decode())
        return _read_table(path, "parquet", f"{path} (parquet)")
    if path.suffix == ".jsonl":
        return _read_jsonl(path, skip_bad_rows)
    if path.suffix == ".json":
        return _read_json(path)
    if path.suffix in (".parquet", ".csv"):
        return _read_table(path, path.suffix[1:], str(path))
    raise DataError(f"{path}: unsupported file type '{path.suffix}' (use .jsonl, .json, .parquet or .csv)")


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
    """A Hugging Face dataset's rows. When the Hub cannot be used (an offline switch, or no network),
    only the local datasets cache is read, so a dataset that is not there fails at once instead of
    after the Hub client's retries."""
    import datasets

    from alignlab.hub import datasets_unavailable, offline_mode

    config = None
    if ":" in name:  # "org/dataset:config"
        name, config = name.split(":", 1)
    unavailable = datasets_unavailable()
    try:
        with offline_mode(unavailable is not None):
            dataset = datasets.load_dataset(name, config, split=split)
    except Exception as exc:  # network, missing dataset, missing split: all reported the same way
        if unavailable:
            raise DataError(
                f"cannot load '{name}' (split '{split}'): there is no such local file, so it was taken for a Hugging "
                f"Face dataset id, but {unavailable} and it is not in the local datasets cache. Give a local .jsonl, "
                ".json, .parquet or .csv file, or load the dataset once with network access"
            ) from None
        raise DataError(
            f"cannot load '{name}' (split '{split}') as a local file or a Hugging Face dataset: {exc}. "
            "Local files must end in .jsonl, .json, .parquet or .csv."
        ) from None
    return [Row(dict(item), f"{name}[{split}]", number) for number, item in enumerate(dataset, start=1)]


def check_source(source: str, key: str) -> None:
    """Before anything loads: a source that `read_rows` would read as a local file (it has a data file's
    suffix, or exists) is a file. `key` names the config key that gave it."""
    path = Path(source)
    if not (path.suffix in LOCAL_SUFFIXES or path.exists()):
        return  # a hub dataset id: checked when it loads
    if path.is_dir():
        raise DataError(f"{key}: {source} is a directory, not a data file (.jsonl, .json, .parquet or .csv)")
    if not path.is_file():
        where = "" if path.is_absolute() else f" (looked for {path.absolute()})"
        raise DataError(f"{key}: data file not found: {source}{where}")


def read_rows(source: str, *, split: str = "train", max_rows: Optional[int] = None,
              skip_bad_rows: bool = False) -> list[Row]:
    """All rows of a local file (by its first bytes, then its suffix) or a hub dataset id.

    With `skip_bad_rows`, a JSONL line that is not a JSON object comes back as a Row with `error`
    set (warned about here, with its line number), for the loaders to skip and count as a bad row."""
    path = Path(source)
    if path.suffix in LOCAL_SUFFIXES or path.exists():
        if not path.is_file():
            raise DataError(f"data file not found: {source}")
        rows = _read_local(path, skip_bad_rows)
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
