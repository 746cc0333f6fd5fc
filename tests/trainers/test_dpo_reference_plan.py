"""DPO's precomputed reference covers only the pairs a run will see, fills the shared cache as runs
go, and never computes a pair twice: the losses equal those of a fully precomputed reference."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import alignlab.trainers.dpo as dpo_module
from conftest import base_args, eval_records, run_cli, train_records

KEYS = ("loss", "grad_norm", "rewards/margins", "rewards/accuracies", "logps/chosen")


@pytest.fixture
def forwards(monkeypatch):
    """Every pair the reference pass scores, in call order (counted where the trainer calls compute_all)."""
    scored: list[tuple] = []
    compute_all = dpo_module.compute_all

    def counting(model, pairs, *args, **kwargs):
        scored.extend((tuple(p.prompt_ids), tuple(p.chosen_ids), tuple(p.rejected_ids)) for p in pairs)
        return compute_all(model, pairs, *args, **kwargs)

    monkeypatch.setattr(dpo_module, "compute_all", counting)
    return scored


def dpo(tiny_model_dir, prefs, out, cache, *extra):
    result = run_cli(base_args("dpo", tiny_model_dir, prefs, out, "train.batch_size=4", "train.lr=1e-3",
                               f"dpo.ref_cache_dir={cache}", *extra))
    assert result.code == 0
    return json.loads((out / "reference.json").read_text())


def assert_same_steps(a, b, count):
    assert len(a) >= count and len(b) >= count
    for x, y in zip(a[:count], b[:count]):
        for key in KEYS:
            assert x[key] == pytest.approx(y[key], abs=1e-5, rel=1e-5), (x["step"], key)


def test_planned_reference_equals_full_precompute(tmp_path, tiny_model_dir, prefs, forwards):
    """8 steps x 4 pairs see all 32 pairs (a full epoch: each computed once); 3 steps see 12 and
    compute only those up front, and train and evaluate exactly like the first 3 steps of the full run."""
    evals = [f"data.eval={prefs}", "train.eval_every=1"]
    full = dpo(tiny_model_dir, prefs, tmp_path / "full", tmp_path / "c_full", "train.max_steps=8", *evals)
    assert (full["train"]["pairs"], full["train"]["computed"], full["train"]["reused"]) == (32, 32, 0)
    # The eval file is the train file: same key, so the eval pass finds all 32 in the cache.
    assert (full["eval"]["pairs"], full["eval"]["computed"], full["eval"]["reused"]) == (32, 0, 32)
    assert len(forwards) == 32 and len(set(forwards)) == 32
    forwards.clear()

    short = dpo(tiny_model_dir, prefs, tmp_path / "short", tmp_path / "c_short", "train.max_steps=3", *evals)
    assert (short["train"]["pairs"], short["train"]["computed"]) == (12, 12)
    assert (short["eval"]["computed"], short["eval"]["reused"]) == (20, 12)  # every eval pair is used: all up front
    assert len(forwards) == 32 and len(set(forwards)) == 32
    assert not torch.load(short["train"]["cache"]).isnan().any()
    assert short["train"]["seconds"] > 0

    assert_same_steps(train_records(tmp_path / "full"), train_records(tmp_path / "short"), 3)
    full_evals, short_evals = eval_records(tmp_path / "full")[:3], eval_records(tmp_path / "short")
    assert [r["step"] for r in short_evals] == [1, 2, 3]
    for a, b in zip(full_evals, short_evals):
        assert a["eval/loss"] == pytest.approx(b["eval/loss"], abs=1e-5)


def test_reference_pairs_are_computed_once_across_runs(tmp_path, tiny_model_dir, prefs, forwards):
    """Runs on one cache: each computes only what no earlier run computed; a resumed run plans from
    its data position; a run that already has everything computes nothing."""
    cache = tmp_path / "cache"
    first = dpo(tiny_model_dir, prefs, tmp_path / "a", cache, "train.max_steps=2", "train.save_every=1")
    assert (first["train"]["pairs"], first["train"]["computed"], first["train"]["reused"]) == (8, 8, 0)
    seen = list(forwards)
    assert len(set(seen)) == 8

    again = dpo(tiny_model_dir, prefs, tmp_path / "b", cache, "train.max_steps=2", "dpo.beta=0.5")  # a sweep's next run
    assert (again["train"]["computed"], again["train"]["reused"]) == (0, 8)
    assert forwards == seen
    assert "reused from" in (tmp_path / "b" / "train.log").read_text()

    longer = dpo(tiny_model_dir, prefs, tmp_path / "c", cache, "train.max_steps=5")
    assert (longer["train"]["pairs"], longer["train"]["computed"], longer["train"]["reused"]) == (20, 12, 8)
    assert len(forwards) == 20 and len(set(forwards)) == 20  # the 8 already cached were not scored again
    assert_same_steps(train_records(tmp_path / "a"), train_records(tmp_path / "c"), 2)

    # Resumed at step 1 of run a with a fresh cache: only steps 2..3's pairs are computed.
    forwards.clear()
    resumed = tmp_path / "a"
    for name in ("checkpoint-000002", "final"):
        shutil.rmtree(resumed / name)
    plan = dpo(tiny_model_dir, prefs, resumed, tmp_path / "fresh", "train.max_steps=3", "train.resume=true")
    assert (plan["train"]["pairs"], plan["train"]["computed"]) == (8, 8)
    assert len(set(forwards) & set(seen)) == 4  # step 2's pairs, computed in the first cache before
    assert_same_steps(train_records(tmp_path / "c")[:3], train_records(resumed), 3)

    # Every pair once: a full epoch on the first cache computes the rest, nothing twice.
    forwards.clear()
    full = dpo(tiny_model_dir, prefs, tmp_path / "d", cache, "train.max_steps=10")
    assert (full["train"]["pairs"], full["train"]["computed"], full["train"]["reused"]) == (32, 12, 20)
    assert len(forwards) == 12
    assert not torch.load(full["train"]["cache"]).isnan().any()


def test_pairs_beyond_the_plan_are_computed_when_a_skipped_step_takes_them(tmp_path, tiny_model_dir, prefs, forwards,
                                                                           monkeypatch):
    """A step skipped for non-finite gradients has drawn its pairs; the retry draws the next ones,
    which the plan (max_steps x batch) did not include: they are computed then, once."""
    from alignlab.engine.loop import TrainingRun

    backward = TrainingRun.backward

    def poisoned(self, loss):  # the first attempt's gradients are NaN
        backward(self, loss * float("nan") if self.step + self.skipped_steps == 0 else loss)

    monkeypatch.setattr(TrainingRun, "backward", poisoned)
    plan = dpo(tiny_model_dir, prefs, tmp_path / "run", tmp_path / "cache", "train.max_steps=2")
    assert plan["train"]["computed"] == 8
    assert len(forwards) == 12 and len(set(forwards)) == 12
    records = train_records(tmp_path / "run")
    assert len(records) == 2 and records[-1]["skipped_steps"] == 1
    assert "4 more train pairs computed at step 2" in (tmp_path / "run" / "train.log").read_text()
    lazy = torch.load(plan["train"]["cache"])
    known = ~lazy.isnan().any(1)
    assert int(known.sum()) == 12
    # Full fine-tuning: the 4 computed mid-run are the initial model's, like those computed up front.
    forwards.clear()
    whole = dpo(tiny_model_dir, prefs, tmp_path / "whole", tmp_path / "other_cache", "train.max_steps=8")
    torch.testing.assert_close(lazy[known], torch.load(whole["train"]["cache"])[known], atol=1e-5, rtol=1e-5)
