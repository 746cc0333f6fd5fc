"""A run config from a YAML file and `a.b=c` overrides: parsing, type coercion, key suggestions, and which
command a config file is for."""

from __future__ import annotations

import dataclasses
import difflib
import importlib.resources
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from alignlab.config.sections import RUN_CONFIGS, config_sections
from alignlab.config.validation import validate
from alignlab.errors import ConfigError


# ---------------------------------------------------------------- parsing


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads 1e-4 (no dot) as a string; users mean a float, in files and lists alike."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def parse_value(text: str) -> Any:
    """An override's value as YAML reads it, so `true`, `3`, `1e-4`, `[a,b]` and `null` work."""
    try:
        value = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError:
        return text
    # YAML 1.1 reads 1e-4 as a string; users mean a float.
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _closest(name: str, options: list[str], prefix: str = "") -> str:
    match = difflib.get_close_matches(str(name), options, n=1, cutoff=0.5)  # YAML keys may be numbers or null
    if match:
        return f" Did you mean '{prefix}{match[0]}'?"
    return f" Valid keys: {', '.join(prefix + o for o in sorted(options))}."


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):  # Optional[int] is "int or null", not "Optional"
        return " or ".join("null" if a is type(None) else _type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        return str(tp).replace("typing.", "")
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`, converting the safe cases (int -> float, str -> list)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"config key '{key}' expects {_type_name(tp)}, got {value!r}")
    if origin is list:
        (item_tp,) = typing.get_args(tp) or (Any,)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]  # report_to=wandb means [wandb]
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}' expects a list, got {value!r}")
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' expects a mapping, got {value!r}")
        _, value_tp = typing.get_args(tp) or (Any, Any)
        return {str(k): _coerce(v, value_tp, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}' expects true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"config key '{key}' expects an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and value.strip().lower() in ("inf", "+inf"):  # YAML spells it .inf
            return float("inf")
        raise ConfigError(f"config key '{key}' expects a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"config key '{key}' expects a string, got {value!r}")
    return value


# YAML 1.1 reads `no` (and `off`) as false, so `mixed_precision: no`, the documented default,
# arrives as False: for these keys false stands for the word.
_FALSE_MEANS = {"train.mixed_precision": "no"}


def _suggest(key: str, names: list[str], prefix: str, root: Any) -> str:
    """The key meant: the same field in another section first (`lr` -> `train.lr`), then the
    nearest spelling of a key here or, at the top level, of any section's field (`lrr` -> `train.lr`)."""
    key = str(key)  # YAML keys may be numbers or null
    fields: dict[str, list[str]] = {}  # field name -> its dotted keys
    for section_name, section in config_sections(root).items():
        for f in dataclasses.fields(section):
            fields.setdefault(f.name, []).append(f"{section_name}.{f.name}")
    if key in fields:
        return f" Did you mean {' or '.join(repr(k) for k in fields[key])}?"
    options = {name: [f"{prefix}{name}"] for name in names}  # a key here wins a tie with a field elsewhere
    if not prefix:
        options.update({name: dotted for name, dotted in fields.items() if name not in options})
    match = difflib.get_close_matches(key, list(options), n=1, cutoff=0.5)
    if match:
        return f" Did you mean {' or '.join(repr(k) for k in options[match[0]])}?"
    return _closest(key, names, prefix)


def _set_section(section: Any, values: dict, prefix: str, root: Any = None, set_keys: Optional[set] = None) -> None:
    root = section if root is None else root
    hints = typing.get_type_hints(type(section))
    names = [f.name for f in dataclasses.fields(section)]
    for key, value in values.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"unknown config key '{full}'.{_suggest(key, names, prefix, root)}")
        current = getattr(section, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{full}' is a section; give it a mapping, e.g. {full}.<key>=...")
            _set_section(current, value, f"{full}.", root, set_keys)
        else:
            if value is False and full in _FALSE_MEANS:
                value = _FALSE_MEANS[full]
            setattr(section, key, _coerce(value, hints[key], full))
            if set_keys is not None:
                set_keys.add(full)


def _nest(dotted: dict[str, Any]) -> dict:
    nested: dict = {}
    for key, value in dotted.items():
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"config key '{key}' sets a field inside a value that is not a section")
        node[parts[-1]] = value
    return nested


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    dotted = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value (e.g. train.lr=1e-4)")
        key, text = item.split("=", 1)
        dotted[key.strip()] = parse_value(text)
    return dotted


# ---------------------------------------------------------------- config files: shipped ones, relative paths


def shipped_dir() -> Path:
    """The configs installed with alignlab, with the example data they train on in data/ beside them:
    package data, so a wheel has them as a checkout does (where configs/ and data/ link here)."""
    return Path(str(importlib.resources.files("alignlab") / "resources" / "configs"))  # pip unpacks: a real dir


def shipped_config(name: str) -> Optional[Path]:
    """A shipped config by name: `sft_tiny`, `sft_tiny.yaml`, `accelerate/fsdp`, or README's
    `configs/sft_tiny.yaml` typed outside a checkout; None when there is none."""
    root = shipped_dir()
    stem = name[len("configs/"):] if name.startswith("configs/") else name
    for candidate in (root / stem, root / f"{stem}.yaml"):
        if candidate.suffix in (".yaml", ".yml") and candidate.is_file() and root in candidate.resolve().parents:
            return candidate
    return None


def find_config(path: str) -> Path:
    """The file `-c PATH` means: PATH when it exists (relative to the current directory), else the
    shipped config of that name."""
    file = Path(path)
    if file.is_file():
        return file
    shipped = shipped_config(path)
    if shipped is None:
        raise ConfigError(f"config file not found: {path} (nor a shipped config of that name; `alignlab configs` "
                          "lists them)")
    return shipped


# Inputs a config file may name by a relative path. Such a path is resolved against the config file's
# directory when the file or directory is there, so a config and its data work from any directory;
# otherwise it stays relative to the current directory (a model from an earlier run, runs/sft_tiny/final,
# or a hub id). Outputs (train.output_dir, ...) and paths given on the command line are always
# relative to the current directory.
_INPUT_KEYS = ("model.name_or_path", "data.train", "data.eval", "data.prompts", "data.pairs", "iterate.prompts",
               "iterate.eval_prompts", "eval.reference")
_CODE_KEYS = ("grpo.rewards", "grpo.tools", "grpo.tool_parser", "grpo.environment", "iterate.rewards",
              "eval.rewards", "eval.tools", "eval.tool_parser", "eval.environment")  # path/to/file.py:name


def resolve_relative_paths(values: dict, base: Path, found: Optional[list[str]] = None) -> dict:
    """`values` (a config file's mapping) with its input paths that exist under `base` made absolute;
    those paths, as written, are appended to `found` (what a copy of the file must take along)."""
    base = Path(os.path.abspath(base))  # ../exp -> /abs/exp, symlinks kept as the user named them
    for key in _INPUT_KEYS + _CODE_KEYS:
        section, name = key.split(".")
        table = values.get(section)
        if isinstance(table, dict) and name in table:
            table[name] = _resolve(table[name], base, key in _CODE_KEYS, found if found is not None else [])
    return values


def _resolve(value: Any, base: Path, code: bool, found: list[str]) -> Any:
    if isinstance(value, list):
        return [_resolve(v, base, code, found) for v in value]
    if isinstance(value, dict) and isinstance(value.get("path"), str):  # a source of a data mixture
        return {**value, "path": _resolve(value["path"], base, code, found)}
    if not isinstance(value, str) or not value:
        return value
    if code:
        file, colon, name = value.rpartition(":")
        return f"{_resolve(file, base, False, found)}:{name}" if colon and file.endswith(".py") else value
    beside = base / value
    if Path(value).is_absolute() or not beside.exists():
        return value
    found.append(value)
    return str(beside)


def read_config_file(path: str) -> tuple[Path, dict]:
    """The file `path` names (see `find_config`) and its top-level mapping, as written in it."""
    file = find_config(path)
    try:
        values = yaml.load(file.read_text(encoding="utf-8"), Loader=_Loader) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return file, values


def load_config(command: str, path: Optional[str] = None, overrides: Optional[list[str]] = None):
    """The run config for `command` from a YAML file (a path, or a shipped config's name) plus `a.b=c`
    overrides (overrides win). Relative input paths in the file: see `resolve_relative_paths`."""
    config = RUN_CONFIGS[command]()
    set_keys: set[str] = set()
    if path:
        file, values = read_config_file(path)
        _set_section(config, resolve_relative_paths(values, file.parent), "", set_keys=set_keys)
    if overrides:
        _set_section(config, _nest(parse_overrides(overrides)), "", set_keys=set_keys)
    validate(config)
    config._set_keys = frozenset(set_keys)  # not a field: to_dict and config.yaml leave it out
    return config


def update_config(config, values: dict):
    """Set nested `values` ({"train": {"lr": 1e-5}}) on a loaded config, checked as a file's are; returns it."""
    set_keys: set[str] = set(getattr(config, "_set_keys", ()))
    _set_section(config, values, "", set_keys=set_keys)
    validate(config)
    config._set_keys = frozenset(set_keys)
    return config


def was_set(config, key: str) -> bool:
    """Whether the dotted `key` was given in the config file or on the command line (not for a
    default, nor in a config built in code)."""
    return key in getattr(config, "_set_keys", ())


def infer_command(path: Optional[str]) -> Optional[str]:
    """The command a config file is for, or None when it does not say: the `# alignlab <command>`
    line that alignlab writes first in a run's config.yaml, a section only that command has
    (iterate, dpo, grpo, eval), or the shipped configs' header naming the file
    (`alignlab sft -c configs/sft_tiny.yaml`)."""
    if not path:
        return None
    try:
        path = str(find_config(path))
        text = Path(path).read_text(encoding="utf-8")
        values = yaml.load(text, Loader=_Loader)
    except (ConfigError, OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    first = re.match(r"#\s*alignlab\s+(\w+)", text)
    if first and first.group(1) in RUN_CONFIGS:
        return first.group(1)
    for name in ("iterate", "dpo", "grpo", "eval"):
        if isinstance(values, dict) and name in values:
            return name
    named = set(re.findall(rf"^#.*\balignlab\s+(\w+)\s+-c\s+\S*\b{re.escape(Path(path).name)}\b", text, re.M))
    named &= set(RUN_CONFIGS)
    return named.pop() if len(named) == 1 else None


def to_dict(config) -> dict:
    return dataclasses.asdict(config)


def to_yaml(config) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False, allow_unicode=True)
