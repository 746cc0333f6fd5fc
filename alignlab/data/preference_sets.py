"""Which preference examples a DPO config trains and evaluates on (before tokenisation).

The DPO trainer and `alignlab eval RUN` both read a run's pairs through these functions, so the
pairs a run held out with `data.eval_fraction` are the same rows in both: the same reading
(`data.max_rows`, `data.columns`, `data.skip_bad_rows`, `data.format`, `data.min_score_ratio`) and the
same split (`split_eval` with `train.seed`, after bad rows are dropped; per source, for a data mixture).
"""

from __future__ import annotations

from typing import Callable, Optional

from alignlab.data.io import read_rows, rename_columns, split_eval
from alignlab.data.mixture import is_mixture, load_mixture
from alignlab.data.preference import PreferenceExample, load_preference_source
from alignlab.data.public_formats import LoadReport, source_label


def read_preference_examples(data, source: str, split: str,
                             columns: Optional[dict] = None) -> tuple[list[PreferenceExample], LoadReport]:
    """(examples, load report: format, bad rows skipped, rows dropped) of one source under a run's `data` settings."""
    rows = read_rows(source, split=split, max_rows=data.max_rows, skip_bad_rows=data.skip_bad_rows)
    rows = rename_columns(rows, data.columns if columns is None else columns)
    return load_preference_source(rows, skip_bad_rows=data.skip_bad_rows, format=data.format,
                                  min_score_ratio=data.min_score_ratio, label=source_label(data, source))


def split_preference_examples(config, read: Callable) -> tuple[list, list]:
    """(train examples, eval examples) for a single-source `data.train`: `data.eval` when given, else
    the `data.eval_fraction` share of train held out. `read(source, split)` -> examples."""
    data = config.data
    train = read(data.train, data.split)
    if data.eval:
        return train, read(data.eval, data.eval_split or data.split)
    return split_eval(train, data.eval_fraction, config.train.seed)


def held_out_examples(config) -> list[PreferenceExample]:
    """The eval examples a DPO run with this config evaluated on (those of data.eval, or the ones it held out)."""
    def read(source, split, columns=None):
        return read_preference_examples(config.data, source, split, columns)[0]

    if is_mixture(config.data.train):
        return load_mixture(config, read, lambda examples: examples)[1]
    return split_preference_examples(config, read)[1]
