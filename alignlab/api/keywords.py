"""Keyword arguments of the Python API -> the run config the CLI builds from a file and overrides."""

from __future__ import annotations

import dataclasses
import difflib
import os
from typing import Any

from alignlab.config.loading import load_config, update_config
from alignlab.config.sections import RUN_CONFIGS, config_sections
from alignlab.errors import ConfigError


def _short_names(config) -> dict[str, list[str]]:
    """field name -> the dotted keys that end in it, over the config's sections."""
    names: dict[str, list[str]] = {}
    for section_name, section in config_sections(config).items():
        for f in dataclasses.fields(section):
            names.setdefault(f.name, []).append(f"{section_name}.{f.name}")
    return names


def _dotted(config, name: str) -> str:
    """The dotted key a keyword argument names; a ConfigError for unknown or ambiguous names."""
    sections = config_sections(config)
    head = name.split(".", 1)[0]
    if "." in name and head in sections:
        return name
    names = _short_names(config)
    if name in sections:
        return name
    if name in names:
        command = next((c for c, cls in RUN_CONFIGS.items() if type(config) is cls), None)
        if len(names[name]) > 1 and f"{command}.{name}" in names[name]:
            return f"{command}.{name}"  # the command's own section wins: alignlab.grpo(temperature=...) is grpo's
        if len(names[name]) > 1:
            raise ConfigError(f"argument '{name}' is ambiguous: pass one of "
                              f"{', '.join(repr(k) for k in names[name])} as **{{'{names[name][0]}': ...}}")
        return names[name][0]
    options = list(names) + list(sections) + [k for keys in names.values() for k in keys]
    match = difflib.get_close_matches(name, options, n=1, cutoff=0.5)
    hint = f" Did you mean '{match[0]}'?" if match else " `alignlab show-config --command COMMAND` lists the keys."
    raise ConfigError(f"unknown argument '{name}'.{hint}")


def nest(config, values: dict[str, Any]) -> dict:
    nested: dict = {}
    for name, value in values.items():
        key = _dotted(config, name)
        if key == "lora" and isinstance(value, bool):
            key, value = "lora.enabled", value
        *parents, last = key.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        if isinstance(value, dict) and isinstance(node.get(last), dict):
            node[last].update(value)
        else:
            node[last] = value
    return nested


# The training calls' own arguments, as config keys when they are paths or ids.
_SOURCES = {"model": "model.name_or_path", "data": "data.train", "eval_data": "data.eval"}


def build_config(command: str, config: Any = None, **values):
    """The run config of `command`: `config` (YAML path, dict or run config) overridden by `values`
    (config keys, and `model=`/`data=`/`eval_data=` given as paths or hub ids).

    >>> alignlab.build_config("dpo", beta=0.2, lora=True).dpo.beta
    0.2
    """
    for name, key in _SOURCES.items():
        if isinstance(values.get(name), (str, os.PathLike)) and not (name == "data" and command == "eval"):
            values[key] = str(values.pop(name))
    if dataclasses.is_dataclass(config):
        if not isinstance(config, RUN_CONFIGS[command]):
            raise ConfigError(f"config= is a {type(config).__name__}; alignlab.{command} takes a "
                              f"{RUN_CONFIGS[command].__name__}, a dict or a YAML path")
        base = dataclasses.replace(config)  # the caller's object stays as it was
        for f in dataclasses.fields(base):
            if dataclasses.is_dataclass(getattr(base, f.name)):
                setattr(base, f.name, dataclasses.replace(getattr(base, f.name)))
    elif isinstance(config, (str, os.PathLike)):
        base = load_config(command, str(config))
    elif isinstance(config, dict) or config is None:
        base = load_config(command)
        update_config(base, nest(base, config or {}))
    else:
        raise ConfigError(f"config= takes a YAML path, a dict or a run config, not {type(config).__name__}")
    return update_config(base, nest(base, values))
