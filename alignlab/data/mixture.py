"""Weighted data mixtures: `data.train` as a list of sources, sampled reproducibly (SFT, DPO, GRPO prompts).

    data:
      train:
        - {path: helpful.jsonl, weight: 2}
        - {path: harmless.jsonl, weight: 1, name: harmless}
        - {path: org/truthful, weight: 1, split: train, columns: {prompt: question}}

Each source: `path` (file or hub id, required), `weight` (> 0, default 1), `name` (default: the file
name without suffix; used in metric names), `split` (default `data.split`), `columns` (merged over
`data.columns`). The mixed training set has as many examples as all sources together; each of its
slots draws a source with probability weight / sum of weights, then that source's next example from
a seeded shuffle (a source's examples repeat only after all of them were used). The draw depends only
on `train.seed` and the sources' sizes, so a run is reproducible. With `data.eval_fraction`, each
source gives its own held-out share before mixing (the eval set is not reweighted). Every example
keeps its source's name (`group`): the DPO trainer logs `rewards/accuracies/<name>` per source.
"""

from __future__ import annotations

import difflib
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from alignlab.errors import ConfigError

SOURCE_KEYS = ("path", "weight", "name", "split", "columns")


@dataclass
class Source:
    name: str
    path: str
    weight: float
    split: str
    columns: dict


def is_mixture(train: Any) -> bool:
    return isinstance(train, list)


def parse_sources(train: Any, *, columns: dict, split: str) -> list[Source]:
    """`data.train` as a list of sources, each checked, with a clear ConfigError naming the entry and key."""
    if not isinstance(train, list) or not train:
        raise ConfigError("data.train must be a path / dataset id, or a non-empty list of sources ({path, weight, ...})")
    sources = []
    for number, entry in enumerate(train):
        where = f"data.train[{number}]"
        if isinstance(entry, str):
            entry = {"path": entry}
        if not isinstance(entry, dict):
            raise ConfigError(f"{where} must be a mapping with keys {', '.join(SOURCE_KEYS)}; got {entry!r}")
        for key in entry:
            if key not in SOURCE_KEYS:
                match = difflib.get_close_matches(str(key), SOURCE_KEYS, n=1, cutoff=0.5)
                hint = f" Did you mean '{match[0]}'?" if match else f" Valid keys: {', '.join(SOURCE_KEYS)}."
                raise ConfigError(f"unknown key '{key}' in {where}.{hint}")
        path = entry.get("path")
        if not isinstance(path, str) or not path:
            raise ConfigError(f"{where} needs a 'path' (a data file or dataset id)")
        weight = entry.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
            raise ConfigError(f"{where}.weight must be a positive number, got {weight!r}")
        extra = entry.get("columns") or {}
        if not isinstance(extra, dict):
            raise ConfigError(f"{where}.columns must be a mapping of our name -> the dataset's column, got {extra!r}")
        source_split = entry.get("split", split)
        if not isinstance(source_split, str):
            raise ConfigError(f"{where}.split must be a string, got {source_split!r}")
        name = entry.get("name") or Path(path.split(":")[0]).stem or path
        if not isinstance(name, str) or "/" in name:
            raise ConfigError(f"{where}.name must be a string without '/', got {name!r} (set name: explicitly)")
        sources.append(Source(name, path, float(weight), source_split, {**columns, **{str(k): str(v) for k, v in extra.items()}}))
    names = [s.name for s in sources]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(f"two data.train sources are named '{name}'; give each a distinct 'name'")
    return sources


def mixture_indices(sizes: list[int], weights: list[float], total: int, seed: int) -> list[tuple[int, int]]:
    """`total` (source, item) draws: a source with probability weight/sum, then its next item in a seeded shuffle."""
    rng = random.Random(seed)
    picks = rng.choices(range(len(sizes)), weights=weights, k=total)
    orders = [[] for _ in sizes]
    out = []
    for source in picks:
        if not orders[source]:  # used up (or first use): a fresh shuffle of this source
            orders[source] = rng.sample(range(sizes[source]), sizes[source])
        out.append((source, orders[source].pop()))
    return out


def mix(per_source: list[list], weights: list[float], seed: int) -> list:
    """One list of as many items as all sources together, drawn by weight (see `mixture_indices`)."""
    sizes = [len(items) for items in per_source]
    return [per_source[s][i] for s, i in mixture_indices(sizes, weights, sum(sizes), seed)]


def load_mixture(config, read_examples: Callable, encode: Callable) -> tuple[list, list]:
    """(mixed train examples, eval examples), each one's `group` set to its source's name.

    `read_examples(source, split, columns)` -> rows or examples; `encode(those)` -> encoded examples
    (SFT examples, DPO pairs), each with a `group` attribute."""
    import logging

    from alignlab.data.io import split_eval

    data, seed = config.data, config.train.seed
    sources = parse_sources(data.train, columns=data.columns, split=data.split)
    per_source, eval_pairs = [], []
    for source in sources:
        examples = read_examples(source.path, source.split, source.columns)
        held = []
        if not data.eval:
            examples, held = split_eval(examples, data.eval_fraction, seed)
        pairs = encode(examples)
        for pair in pairs:
            pair.group = source.name
        per_source.append(pairs)
        for pair in encode(held) if held else []:
            pair.group = source.name
            eval_pairs.append(pair)
    train_pairs = mix(per_source, [s.weight for s in sources], seed)
    if data.eval:
        eval_pairs = encode(read_examples(data.eval, data.eval_split or data.split, data.columns))
    counts = {s.name: sum(p.group == s.name for p in train_pairs) for s in sources}
    logging.getLogger("alignlab").info(
        "data mixture: %s", ", ".join(f"{s.name} {counts[s.name]} examples (weight {s.weight:g}, {len(p)} in source)"
                                      for s, p in zip(sources, per_source)))
    return train_pairs, eval_pairs


def source_names(pairs) -> list[str]:
    return sorted({getattr(p, "group", "") for p in pairs} - {""})


def per_source_sums(groups: list[str], correct: list[float], names: list[str]) -> dict[str, float]:
    """{"rewards/accuracies/<name>": correct count, "pairs/<name>": pair count} for every source (zeros included,
    so every process logs the same keys)."""
    sums = {}
    for name in names:
        sums[f"rewards/accuracies/{name}"] = sum(c for g, c in zip(groups, correct) if g == name)
        sums[f"pairs/{name}"] = float(sum(g == name for g in groups))
    return sums


def finish_per_source(metrics: dict, names: list[str]) -> dict:
    """Turn the per-source sums into per-source means; a source with no pair in this step is left out."""
    for name in names:
        count = metrics.pop(f"pairs/{name}", 0.0)
        key = f"rewards/accuracies/{name}"
        if count > 0:
            metrics[key] = metrics[key] / count
        else:
            metrics.pop(key, None)
    return metrics
