"""`alignlab configs`: the configs installed with alignlab, listed; `alignlab configs copy NAME [DEST]`: one
of them copied with the example data it names, to edit.

The shipped configs are package data (alignlab/resources/configs; a checkout's configs/ and data/ link
there), so they exist after `pip install alignlab` as after `pip install -e .`. A config names its data
relative to itself (data/addition_sft.jsonl beside sft_tiny.yaml), so a copy takes its data along
into DEST/data/ and runs unchanged from any directory.
"""

from __future__ import annotations

import filecmp
import shutil
from pathlib import Path
from typing import Optional

from alignlab.config.loading import infer_command, read_config_file, resolve_relative_paths, shipped_dir
from alignlab.errors import ConfigError


def shipped_configs() -> list[tuple[str, Path]]:
    """(name, path) of every shipped config, the run configs first, then those in folders (accelerate/)."""
    root = shipped_dir()
    files = [p for p in root.rglob("*") if p.suffix in (".yaml", ".yml", ".sh", ".sbatch") and "data" not in
             p.relative_to(root).parts[:-1]]
    files.sort(key=lambda p: (len(p.relative_to(root).parts), str(p)))
    return [(str(p.relative_to(root).with_suffix("")) if p.suffix == ".yaml" else str(p.relative_to(root)), p)
            for p in files]


def _summary(path: Path) -> str:
    """The first line of the file's header comment: what it is."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#") and line.strip("# ") and not line.startswith("#!"):
            return line.lstrip("# ").strip()
    return ""


def list_configs(out=print) -> None:
    out(f"Configs shipped with alignlab (in {shipped_dir()}):")
    for name, path in shipped_configs():
        command = infer_command(str(path)) if path.suffix == ".yaml" and "/" not in name else None
        summary = _summary(path)
        out(f"  {name:34} {command or '':8} {summary[:90] + ('...' if len(summary) > 90 else '')}")
    out("Run one by name from any directory: alignlab sft -c sft_tiny (relative paths in a config are read beside it).")
    out("Copy one, with the data it names, to edit: alignlab configs copy sft_tiny [DEST]")


def _already_there(source: Path, target: Path) -> bool:
    """Whether `target` holds `source`'s bytes already; a different file there is never overwritten."""
    if not target.exists():
        return False
    if target.is_file() and filecmp.cmp(source, target, shallow=False):
        return True
    raise ConfigError(f"{target} exists and differs from the shipped {source.name}; nothing was written: copy to "
                      "another DEST, or move that file away")


def copy_config(name: str, dest: str = ".") -> list[Path]:
    """Copy the shipped config `name` to `dest` (a directory, or a file name ending .yaml) and the data it
    names relative to itself to the same places relative to the copy; returns the files written."""
    names = dict(shipped_configs())
    source = names.get(name) or names.get(name.removeprefix("configs/").removesuffix(".yaml"))
    if source is None:
        raise ConfigError(f"no shipped config named {name!r}; `alignlab configs` lists them: "
                          f"{', '.join(n for n in names if '/' not in n)}")
    target = Path(dest)
    if target.is_dir() or target.suffix not in (".yaml", ".yml", ".sh", ".sbatch"):
        target = target / source.name
    inputs: list[str] = []
    if source.suffix == ".yaml":
        resolve_relative_paths(read_config_file(str(source))[1], source.parent, inputs)
    copies = [(source, target)] + [(source.parent / p, target.parent / p) for p in dict.fromkeys(inputs)]
    copies = [(origin, to) for origin, to in copies if not _already_there(origin, to)]  # all checked before writing
    for origin, to in copies:
        to.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(origin, to)
    return [to for _, to in copies]


def configs_command(action: str, name: Optional[str] = None, dest: str = ".") -> None:
    if action == "list":
        list_configs()
        return
    written = copy_config(name, dest)
    for path in written:
        print(f"wrote {path}")
    if not written:
        print(f"{name}: the copy in {dest} is already identical; nothing written")
