"""What a config file cannot hold, made into what it can: in-memory rows into content-addressed JSONL, a
loaded model into a saved directory, a Python callable into the spec config.yaml records."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Optional

from alignlab.errors import ConfigError, DataError
from alignlab.rewards import IN_PROCESS, IN_PROCESS_PREFIX

DataLike = Any  # a path or hub id, a list of dicts, a pandas DataFrame or a datasets.Dataset


def runs_root(config) -> Path:
    """Where in-memory inputs are written: beside the runs, as an absolute path so config.yaml names them
    wherever it is read from."""
    root = Path(config.train.output_dir).parent if getattr(config.train, "output_dir", None) else Path("runs")
    return root.absolute()


def _rows(data: DataLike) -> Optional[list[dict]]:
    """In-memory rows as a list of dicts, or None for a path / hub id."""
    if data is None or isinstance(data, (str, os.PathLike)):
        return None
    if hasattr(data, "to_json") and hasattr(data, "columns") and hasattr(data, "iloc"):  # pandas
        return [json.loads(line) for line in data.to_json(orient="records", lines=True).splitlines() if line]
    if hasattr(data, "to_list") and hasattr(data, "features"):  # datasets.Dataset
        return data.to_list()
    if isinstance(data, (list, tuple)) and all(isinstance(r, dict) for r in data):
        return list(data)
    raise DataError(f"data must be a path, a hub id, a list of dicts, a pandas DataFrame or a datasets.Dataset; "
                    f"got {type(data).__name__}")


def _write_rows(rows: list[dict], root: Path, kind: str) -> str:
    """Content-addressed JSONL: the same rows give the same file, so a rerun (or every process of a
    data-parallel script, at once) finds or writes the same one."""
    import tempfile

    if not rows:
        raise DataError(f"{kind}= is empty")
    text = "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows)
    path = root / ".inputs" / f"{kind}-{hashlib.sha256(text.encode()).hexdigest()[:16]}.jsonl"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent, delete=False) as tmp:
            tmp.write(text)
        os.replace(tmp.name, path)  # whole or not at all, whichever process gets there first
    return str(path)


def data_source(data: DataLike, root: Path, kind: str) -> Optional[str]:
    if data is None:
        return None
    rows = _rows(data)
    return str(data) if rows is None else _write_rows(rows, root, kind)


def model_source(model: Any, tokenizer: Any, root: Path) -> Any:
    """A loaded model (PEFT or not) is saved once under <runs>/.inputs/ and named by that path."""
    if model is None or isinstance(model, (str, os.PathLike)):
        return None if model is None else str(model)
    if hasattr(model, "run_dir"):  # a Run
        return str(model.run_dir)
    if not hasattr(model, "save_pretrained"):
        raise ConfigError(f"model= takes a path, hub id, run directory, Run or PreTrainedModel, not {type(model).__name__}")
    if tokenizer is None:
        raise ConfigError("model= is a loaded model: pass its tokenizer too (tokenizer=...)")
    name = getattr(model.config, "_name_or_path", "") or type(model).__name__
    out = root / ".inputs" / f"model-{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)[-40:]}-{id(model):x}"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


def callable_spec(fn, index: int) -> str:
    """How a config.yaml names a Python callable; one that cannot be imported again is registered
    in this process under `<python>:NAME`."""
    import inspect

    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    name = getattr(fn, "__name__", type(fn).__name__)
    if module and module != "__main__" and qualname.isidentifier() and not inspect.iscoroutinefunction(fn):
        return f"{module}:{qualname}"
    if not name.isidentifier():  # <lambda>, functools.partial objects
        name = f"fn{index}"
    spec = f"{IN_PROCESS_PREFIX}{name}"
    IN_PROCESS[spec] = _sync(fn)
    return spec


def _sync(fn):
    """An `async def` function as a plain one (run on its own loop, in a thread when one already runs:
    a notebook's kernel has a loop in the main thread)."""
    import asyncio
    import functools
    import inspect

    if not inspect.iscoroutinefunction(fn):
        return fn

    @functools.wraps(fn)  # keeps the signature: rewards get the columns they name
    def call(*args, **kwargs):
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(fn(*args, **kwargs))
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, fn(*args, **kwargs)).result()

    return call


def specs(items) -> Optional[list[str]]:
    if items is None:
        return None
    items = [items] if callable(items) or isinstance(items, str) else list(items)
    return [item if isinstance(item, str) else callable_spec(item, i) for i, item in enumerate(items)]
