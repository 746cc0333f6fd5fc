"""Which preference examples a DPO config trains and evaluates on (before tokenisation).

The DPO trainer and `alignlab eval RUN` both read a run's pairs through these functions, so the
pairs a run held out with `data.eval_fraction` are the same rows in both: the same reading
(`data.max_rows`, `data.columns`, `data.skip_bad_rows`, `data.format`, `data.min_score_ratio`) and the
same split (`split_eval` with `train.seed`, after bad rows are dropped; per source, for a data mixture).
"""

from __future__ import annotations

import logging
from typing import Callable, Optional

from alignlab.data.io import read_rows, rename_columns, split_eval
from alignlab.data.mixture import is_mixture, load_mixture
from alignlab.data.preference import PreferenceExample, load_preference_source
from alignlab.data.preference_encode import EncodedPair, encode_pairs
from alignlab.data.public_formats import LoadReport, source_label
from alignlab.errors import DataError

log = logging.getLogger("alignlab")


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


def load_encoded_pairs(config, templater, label: str = "DPO") -> tuple[list[EncodedPair], list[EncodedPair]]:
    """(train pairs, eval pairs) of a run config, read, split and tokenised, with counts reported. The DPO
    and reward-model trainers both read their pairs here: every format, mixtures, bad rows, truncation."""
    data, train = config.data, config.train
    if not data.train:
        raise DataError("no training data: set data.train to a preference file (.jsonl/.json/.parquet/.csv) or dataset id")

    def read(source, split, columns=None):
        examples, report = read_preference_examples(data, source, split, columns)
        templater.stats.skipped_bad += report.skipped
        templater.stats.dropped.update(report.dropped)  # WebGPT ties, SHP pairs under data.min_score_ratio, ...
        return examples

    options = dict(max_length=train.max_length, on_long=data.on_long)
    if is_mixture(data.train):  # a weighted list of sources (alignlab.data.mixture)
        return load_mixture(config, read, lambda examples: encode_pairs(examples, templater, **options))
    # `alignlab eval RUN` finds a run's held-out pairs through the same function (split_preference_examples).
    train_examples, eval_examples = split_preference_examples(config, read)
    train_pairs = encode_pairs(train_examples, templater, **options)
    log.info("%s train data: %s", label, templater.stats.summary())
    eval_pairs = encode_pairs(eval_examples, templater, **options) if eval_examples else []
    return train_pairs, eval_pairs
