"""The Python API (alignlab/api.py, alignlab/run.py): keyword arguments as config keys, in-memory data and
Python callables through the same trainers as the CLI, and the `Run` a call returns."""

from __future__ import annotations

import dataclasses
import gc
import os
import signal
import subprocess
import sys
import weakref
from pathlib import Path

import pytest

import alignlab
from alignlab.api.keywords import _dotted, build_config
from conftest import read_jsonl, run_cli

FAST = {"max_steps": 2, "batch_size": 4, "progress": False, "lr": 1e-3}


def count_sevens(completions, **_):
    """An importable reward: config.yaml records it as tests.test_api-style `module:function`."""
    return [float(c.count("7")) for c in completions]


# ---------------------------------------------------------------- config from keyword arguments


def test_keywords_are_config_keys_short_dotted_and_sections():
    config = build_config("dpo", beta=0.3, max_steps=5, lora=True, **{"train.lr": 1e-5})
    assert (config.dpo.beta, config.train.max_steps, config.lora.enabled, config.train.lr) == (0.3, 5, True, 1e-5)
    config = build_config("grpo", lora={"enabled": True, "r": 4}, num_generations=4)
    assert (config.lora.enabled, config.lora.r, config.grpo.num_generations) == (True, 4, 4)


def test_config_argument_is_the_base_that_keywords_override(tmp_path):
    path = tmp_path / "base.yaml"
    path.write_text("train:\n  lr: 0.01\n  max_steps: 7\ndpo:\n  beta: 0.5\n")
    from_file = build_config("dpo", str(path), beta=0.2)
    assert (from_file.train.lr, from_file.train.max_steps, from_file.dpo.beta) == (0.01, 7, 0.2)
    from_dict = build_config("dpo", {"train": {"lr": 0.01}, "beta": 0.5}, beta=0.2)
    assert (from_dict.train.lr, from_dict.dpo.beta) == (0.01, 0.2)
    base = alignlab.DPORunConfig()
    changed = build_config("dpo", base, max_steps=3)
    assert changed.train.max_steps == 3 and base.train.max_steps == 100  # the caller's object is left alone
    with pytest.raises(alignlab.ConfigError, match="takes a DPORunConfig"):
        build_config("dpo", alignlab.SFTRunConfig())


def test_misspelt_ambiguous_and_mistyped_keywords_raise_config_errors():
    with pytest.raises(alignlab.ConfigError, match=r"unknown argument 'bta'\. Did you mean 'beta'\?") as err:
        alignlab.dpo(model="tiny", data="unused.jsonl", bta=0.1)
    assert isinstance(err.value, ValueError)
    with pytest.raises(ValueError, match="train.max_steps' expects an integer"):
        build_config("sft", max_steps="many")
    with pytest.raises(ValueError, match=r"dpo.beta.*> 0"):
        build_config("dpo", beta=-1.0)

    @dataclasses.dataclass
    class A:
        seed: int = 0

    @dataclasses.dataclass
    class Two:
        one: A = dataclasses.field(default_factory=A)
        two: A = dataclasses.field(default_factory=A)

    config = build_config("grpo", temperature=0.5)  # grpo.temperature, not judge.temperature: the command's own
    assert config.grpo.temperature == 0.5 and config.judge.temperature != 0.5
    with pytest.raises(ValueError, match=r"'seed' is ambiguous: pass one of 'one.seed', 'two.seed'"):
        _dotted(Two(), "seed")
    assert _dotted(Two(), "two.seed") == "two.seed"


def test_import_alignlab_is_light():
    code = "import sys, time; t = time.perf_counter(); import alignlab; print(time.perf_counter() - t, 'torch' in sys.modules)"
    seconds, torch_loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                           check=True).stdout.split()
    assert torch_loaded == "False" and float(seconds) < 1.0
    assert alignlab.__all__ == sorted(alignlab._EXPORTS) and all(getattr(alignlab, name) for name in alignlab.__all__)
    assert (Path(alignlab.__file__).parent / "py.typed").is_file()


# ---------------------------------------------------------------- training from Python


@pytest.fixture(scope="module")
def api_runs(tmp_path_factory, tiny_model_dir, addition_splits):
    """SFT from a list of dicts, DPO from a DataFrame on the SFT Run, GRPO from a Dataset with Python rewards."""
    import datasets
    import pandas as pd

    root = tmp_path_factory.mktemp("api")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        train = addition_splits["train"]
        sft = alignlab.sft(model=str(tiny_model_dir), data=train[:32], eval_data=addition_splits["dev"][:8], **FAST)
        pairs = pd.DataFrame([{"prompt": r["prompt"], "chosen": r["completion"], "rejected": "<answer>0</answer>"}
                              for r in train[:16]])
        dpo = alignlab.dpo(model=sft, data=pairs, beta=0.2, **FAST)

        async def async_reward(completions, answer, **_):
            return [float(a in c) for c, a in zip(completions, answer)]

        def closure_reward(completions, **_):  # a notebook's own function: not importable
            return [0.5] * len(completions)

        prompts = datasets.Dataset.from_list([{"prompt": r["prompt"], "answer": r["answer"]} for r in train[:8]])
        grpo = alignlab.grpo(model=sft.final, data=prompts, num_generations=2,
                             rewards=["answer_format", count_sevens, closure_reward, async_reward,
                                      lambda completions, **_: [float(len(c)) for c in completions]], **FAST)
    finally:
        os.chdir(cwd)
    return root, sft, dpo, grpo


def test_in_memory_data_trains_as_a_file_would(api_runs, addition_splits):
    root, sft, dpo, grpo = api_runs
    assert sft.command == "sft" and not sft.interrupted and (sft.final / "config.json").is_file()
    # Rows are written once, content-addressed, so config.yaml names a real file: the run is reproducible.
    train_file = Path(sft.config["data"]["train"])
    assert train_file.is_absolute() and train_file.parent == root / "runs" / ".inputs"
    assert read_jsonl(train_file) == addition_splits["train"][:32]
    assert Path(dpo.config["model"]["name_or_path"]) == sft.run_dir
    assert len(read_jsonl(dpo.config["data"]["train"])) == 16
    metrics = sft.metrics
    assert list(metrics.loc[metrics["loss"].notna(), "step"]) == [1, 2]
    assert "eval/loss" in metrics.columns


def test_python_rewards_are_recorded_by_import_path_or_as_in_process(api_runs):
    root, _, _, grpo = api_runs
    specs = grpo.config["grpo"]["rewards"]
    assert specs == ["answer_format", f"{count_sevens.__module__}:count_sevens", "<python>:closure_reward",
                     "<python>:async_reward", "<python>:fn4"]
    metrics = grpo.metrics
    for name in ("answer_format", "count_sevens", "closure_reward", "async_reward", "fn4"):
        assert f"rewards/{name}/mean" in metrics.columns
    assert (metrics["rewards/closure_reward/mean"] == 0.5).all()
    assert metrics["rewards/fn4/mean"].min() > 0  # the lambda's own values: completion lengths


def test_resuming_a_run_with_a_notebook_reward_from_the_cli_says_what_to_pass(api_runs, capsys, monkeypatch):
    root, _, _, grpo = api_runs
    monkeypatch.chdir(root)
    from alignlab.rewards import IN_PROCESS

    monkeypatch.setattr("alignlab.rewards.IN_PROCESS", {})  # a new process: nothing registered
    assert IN_PROCESS  # the original registry is untouched
    result = run_cli(["grpo", "-c", grpo.run_dir / "config.yaml", "train.max_steps=3", f"train.resume={grpo.run_dir}"],
                     capsys)
    assert result.code == 2
    assert "'<python>:closure_reward' was a Python function given to the alignlab Python API" in result.err
    assert "Traceback" not in result.err


def test_run_eval_chat_report_and_load(api_runs, addition_splits, monkeypatch):
    root, sft, _, grpo = api_runs
    monkeypatch.chdir(root)
    result = grpo.eval(prompts=addition_splits["test"][:4], max_new_tokens=8)
    assert result["task"]["prompts"] == 4 and 0.0 <= result["task"]["accuracy"] <= 1.0
    answer = sft.chat("37+48=?", max_new_tokens=6)
    model, tokenizer = sft.load()
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "37+48=?"}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)["input_ids"]
    greedy = model.generate(ids, max_new_tokens=6, do_sample=False)[0, ids.shape[1]:]
    assert answer == tokenizer.decode(greedy, skip_special_tokens=True)  # chat is the model's own greedy answer
    report = sft.report()
    assert Path(report).is_file() and "<iframe srcdoc=" in report._repr_html_()
    assert alignlab.Run(sft.run_dir).command == "sft"


def test_bad_in_memory_row_is_named_by_its_index(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pairs = [{"prompt": "1+1=?", "chosen": "2", "rejected": "3"}, {"prompt": "2+2=?", "chosen": "4"}]
    with pytest.raises(alignlab.DataError, match=r"data= row 1\b.*'rejected'"):
        alignlab.dpo(model=str(tiny_model_dir), data=pairs, **FAST)


def test_interrupt_returns_the_run_with_a_checkpoint_and_frees_the_model(tmp_path, tiny_model_dir, prompts,
                                                                          monkeypatch):
    """'Interrupt kernel' is SIGINT in the kernel's main thread: the run stops after the step, saves, and the
    call returns a Run marked interrupted. Afterwards nothing holds the trained model (no leak across calls)."""
    import alignlab.model.loading as loading

    monkeypatch.chdir(tmp_path)
    models = []
    load_model = loading.load_model

    def tracked(*args, **kwargs):
        model = load_model(*args, **kwargs)
        models.append(weakref.ref(model))
        return model

    import alignlab.trainers.grpo

    monkeypatch.setattr(alignlab.trainers.grpo, "load_model", tracked)

    def press_ctrl_c(completions, **_):
        os.kill(os.getpid(), signal.SIGINT)
        return [0.0] * len(completions)

    run = alignlab.grpo(model=str(tiny_model_dir), data=str(prompts), rewards=[press_ctrl_c], num_generations=2,
                        **{**FAST, "max_steps": 5})
    assert run.interrupted and "interrupted" in repr(run)
    assert list(run.metrics["step"]) == [1]
    assert (run.run_dir / "checkpoint-000001").is_dir()
    gc.collect()
    assert models and all(ref() is None for ref in models), "a finished run's model is still referenced"


DPO_SCRIPT = """
import sys
import pandas as pd
import alignlab

pairs = pd.read_json(sys.argv[2], lines=True)  # in-memory data in every process
run = alignlab.dpo(model=sys.argv[1], data=pairs, output_dir=sys.argv[3], batch_size=2, max_steps=3, lr=3e-3,
                   progress=False)
print(f"rank-run {run.run_dir} interrupted={run.interrupted}")
"""


@pytest.mark.slow
def test_a_script_calling_the_api_trains_data_parallel_under_torchrun(tmp_path, tiny_model_dir, prefs):
    """`torchrun --nproc_per_node 2 script.py` with alignlab.dpo(...) inside: 2 x 2 pairs == the CLI's 1 x 4."""
    from launch import assert_same, assert_written_once, run_ok, torchrun
    from conftest import base_args, train_records

    one, two = tmp_path / "one", tmp_path / "two"
    run_ok(base_args("dpo", tiny_model_dir, prefs, one, "train.batch_size=4", "train.max_steps=3", "train.lr=3e-3"))
    script = tmp_path / "train.py"
    script.write_text(DPO_SCRIPT)
    output = torchrun([tiny_model_dir, prefs, two], tmp_path, script=script)
    assert output.count("rank-run") == 2 and "interrupted=False" in output
    assert "2 processes" in (two / "train.log").read_text()
    assert_written_once(two, 3)
    assert_same(train_records(one), train_records(two), ("loss", "grad_norm", "rewards/accuracies"))
