"""`alignlab distill`: the tiny model taught by another tiny model, a few steps each."""

from __future__ import annotations

import math
import shutil

import pytest
import torch
from safetensors.torch import load_file

from conftest import base_args, run_cli, train_records


@pytest.fixture(scope="session")
def teacher_dir(tmp_path_factory):
    """A tiny model of the student's size and tokenizer with other weights (seed 1)."""
    from alignlab.model.tiny import write_tiny_model
    from conftest import TINY_HIDDEN, TINY_LAYERS

    return write_tiny_model(tmp_path_factory.mktemp("teacher") / "model", layers=TINY_LAYERS, hidden=TINY_HIDDEN, seed=1)


def distill_args(model, teacher, data, out, *extra):
    return base_args("distill", model, data, out, f"distill.teacher={teacher}", "train.batch_size=4",
                     "train.max_length=48", "distill.max_completion_length=6", "train.lr=3e-3", *extra)


def test_reverse_kl_run_trains_the_student_towards_the_teacher(tmp_path, tiny_model_dir, teacher_dir, sft_train,
                                                               sft_eval):
    out = tmp_path / "run"
    result = run_cli(distill_args(tiny_model_dir, teacher_dir, sft_train, out, "train.max_steps=3",
                                  f"data.eval={sft_eval}", "distill.eval_max_prompts=4", "distill.num_generations=2"))
    assert result.code == 0
    records = train_records(out)
    assert [r["step"] for r in records] == [1, 2, 3]
    for r in records:
        # One update per rollout: the ratio is 1, so the loss is the mean per-token reverse KL itself.
        assert r["loss"] == pytest.approx(r["distill/reverse_kl"], rel=1e-5, abs=1e-7)
        assert r["distill/reverse_kl"] == pytest.approx(r["distill/student_logp"] - r["distill/teacher_logp"], abs=1e-5)
        assert 1 <= r["completions/mean_length"] <= 6 and r["distill/on_policy"] == 1.0 and r["grad_norm"] > 0
    evals = [r for r in (out / "metrics.jsonl").read_text().splitlines() if "eval/accuracy" in r]
    assert evals, "eval accuracy with the task's rewards is logged"
    before = load_file(tiny_model_dir / "model.safetensors")
    after = load_file(out / "final" / "model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_a_student_its_own_teacher_gets_no_gradient(tmp_path, tiny_model_dir, sft_train):
    """Teacher == student: every token's reverse KL is 0, so is the advantage and the gradient (also at T != 1)."""
    out = tmp_path / "run"
    assert run_cli(distill_args(tiny_model_dir, tiny_model_dir, sft_train, out, "train.max_steps=1",
                                "distill.temperature=0.7")).code == 0
    (r,) = train_records(out)
    assert r["distill/reverse_kl"] == pytest.approx(0.0, abs=1e-6)
    assert r["distill/teacher_logp"] == pytest.approx(r["distill/student_logp"], abs=1e-6)
    assert r["grad_norm"] == pytest.approx(0.0, abs=1e-6)


def test_jsd_with_data_batches_resumes_as_if_uninterrupted(tmp_path, tiny_model_dir, teacher_dir, sft_train):
    """lambda = 0.5 mixes sampled and data batches; a run stopped at step 2 and resumed logs the same numbers."""
    common = ("distill.loss=jsd", "distill.jsd_beta=0.3", "distill.lmbda=0.5", "distill.temperature=0.8",
              "train.save_every=2", "distill.logprob_chunk_size=7")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert run_cli(distill_args(tiny_model_dir, teacher_dir, sft_train, straight, "train.max_steps=4", *common)).code == 0
    assert run_cli(distill_args(tiny_model_dir, teacher_dir, sft_train, resumed, "train.max_steps=2", *common)).code == 0
    assert run_cli(distill_args(tiny_model_dir, teacher_dir, sft_train, resumed, "train.max_steps=4",
                                "train.resume=true", *common)).code == 0
    a, b = train_records(straight), train_records(resumed)
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    assert {r["distill/on_policy"] for r in a} == {0.0, 1.0}  # both kinds of batch happened
    for x, y in zip(a, b):
        for key in ("loss", "grad_norm", "distill/jsd", "distill/reverse_kl", "completions/mean_length"):
            assert x[key] == pytest.approx(y[key], rel=1e-6, abs=1e-7), (x["step"], key)
        assert x["loss"] == pytest.approx(x["distill/jsd"], rel=1e-5) and x["loss"] > 0


def test_a_teacher_with_another_tokenizer_is_refused_before_training(tmp_path, tiny_model_dir, sft_train, capsys):
    from transformers import AutoTokenizer

    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_model_dir, teacher)
    tokenizer = AutoTokenizer.from_pretrained(teacher)
    size = len(tokenizer)
    tokenizer.add_tokens(["<extra_token>"])
    tokenizer.save_pretrained(teacher)
    out = tmp_path / "run"
    result = run_cli(distill_args(tiny_model_dir, teacher, sft_train, out, "train.max_steps=1"), capsys)
    assert result.code == 2 and "Traceback" not in result.err
    assert f"distill.teacher={teacher}" in result.err and f"model.name_or_path={tiny_model_dir}" in result.err
    assert f"vocabulary sizes differ: {size} vs {size + 1}" in result.err
    assert not out.exists()


def test_tokenizer_difference_names_sizes_ids_and_special_tokens(tiny_tokenizer):
    from alignlab.errors import ConfigError
    from alignlab.model.teacher import check_same_tokenizer, tokenizer_difference

    assert tokenizer_difference(tiny_tokenizer, tiny_tokenizer) is None

    class Shifted:  # same size, every id one further
        def __len__(self):
            return len(tiny_tokenizer)

        def __call__(self, text, **kw):
            return {"input_ids": [i + 1 for i in tiny_tokenizer(text, **kw)["input_ids"]]}

    difference = tokenizer_difference(tiny_tokenizer, Shifted())
    assert "other token ids: from position 0" in difference
    with pytest.raises(ConfigError, match=r"distill.teacher=B .*model.name_or_path=A"):
        check_same_tokenizer(tiny_tokenizer, Shifted(), "A", "B")


def test_reverse_kl_on_data_batches_is_a_config_error(tmp_path, tiny_model_dir, teacher_dir, sft_train, capsys):
    result = run_cli(distill_args(tiny_model_dir, teacher_dir, sft_train, tmp_path / "run", "distill.lmbda=0.5"), capsys)
    assert result.code == 2 and "distill.loss=jsd" in result.err


def test_chunked_jsd_of_two_models_equals_their_full_logits(tiny_model_dir, teacher_dir):
    """The trainer's path (hidden states at trained positions, heads per chunk, temperature) against
    the models' own [B, T, V] logits divided by T."""
    from transformers import AutoModelForCausalLM

    from alignlab.losses.distill import chunked_generalized_jsd, generalized_jsd
    from alignlab.model.logprobs import head_logits, scored_hidden_states

    student = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir).eval()
    ids = torch.tensor([[0, 0, 5, 6, 7, 8, 9], [3, 4, 5, 6, 7, 8, 9]])
    attention = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]])
    loss_mask = torch.tensor([[0, 0, 0, 1, 1, 1, 0], [0, 0, 0, 0, 1, 1, 1]])
    T, beta = 0.6, 0.4
    hs, ht = (scored_hidden_states(m, ids, attention, loss_mask) for m in (student, teacher))
    ours = chunked_generalized_jsd(hs, ht, head_logits(student, T), head_logits(teacher, T), beta=beta, chunk_size=2)
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    scored = loss_mask[:, 1:].bool()
    with torch.no_grad():
        full = [m(input_ids=ids, attention_mask=attention, position_ids=positions).logits[:, :-1][scored] / T
                for m in (student, teacher)]
    want = generalized_jsd(full[0].double().log_softmax(-1), full[1].double().log_softmax(-1), beta)
    torch.testing.assert_close(ours.double(), want, rtol=1e-4, atol=1e-6)
    assert math.isfinite(float(ours.detach().sum())) and float(ours.detach().sum()) > 0


def test_python_api_distill_takes_a_run_as_teacher(tmp_path, tiny_model_dir, teacher_dir, addition_splits):
    from types import SimpleNamespace

    import alignlab

    assert "distill" in alignlab.__all__
    run = alignlab.distill(model=str(tiny_model_dir), teacher=SimpleNamespace(run_dir=teacher_dir),
                           data=addition_splits["train"][:8], max_steps=1, batch_size=2, max_completion_length=4,
                           max_length=48, output_dir=str(tmp_path / "run"), progress=False)
    assert run.config["distill"]["teacher"] == str(teacher_dir) and run.command == "distill"
    (record,) = train_records(tmp_path / "run")
    assert record["distill/on_policy"] == 1.0 and math.isfinite(record["distill/reverse_kl"])
