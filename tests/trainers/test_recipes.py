"""Every shipped recipe in configs/ trains: 2 optimizer steps with the recipe's own settings (dtype,
mixed precision, gradient checkpointing, LoRA, loss, rewards, schedule), only the model and the data
swapped for the tiny model and small local files in the same formats, and the run made short.

New files in configs/ are picked up by the glob, so a recipe that does not run cannot ship."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from conftest import read_jsonl, run_cli, train_records, write_jsonl

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted((REPO / "configs").glob("*.yaml"))


def command_of(recipe: dict) -> str:
    for command in ("iterate", "grpo", "dpo", "rm", "distill"):
        if command in recipe:
            return command
    return "sft"


def hh_rlhf_rows() -> list[dict]:
    """Anthropic/hh-rlhf's layout: chosen and rejected are whole transcripts sharing the prompt."""
    rows = []
    for a in range(8):
        prompt = f"\n\nHuman: What is {a}+{a}?\n\nAssistant:"
        rows.append({"chosen": f"{prompt} It is {2 * a}.", "rejected": f"{prompt} It is {2 * a + 1}."})
    return rows


def gsm8k_rows() -> list[dict]:
    """openai/gsm8k's layout: question, and an answer whose last line is '#### N'."""
    return [{"question": f"Tom has {a} apples and buys {a + 1}. How many now?",
             "answer": f"{a} + {a + 1} = {2 * a + 1}\n#### {2 * a + 1}"} for a in range(8)]


def local_data(value, command, tmp_path, fixtures) -> str:
    """A small local file in the format the recipe's data source has."""
    if value is None:
        return None
    text = str(value)
    if "hh-rlhf" in text:
        return str(write_jsonl(hh_rlhf_rows(), tmp_path / "hh.jsonl"))
    if "gsm8k" in text:
        return str(write_jsonl(gsm8k_rows(), tmp_path / "gsm8k.jsonl"))
    shipped = REPO / text
    if shipped.is_file():  # the repository's own example data
        return str(shipped)
    return str(fixtures[command])  # runs/demo/data/...: the demo writes these; the same formats


def recipe_args(path: Path, tmp_path, tiny_model_dir, fixtures) -> tuple[str, list[str]]:
    recipe = yaml.safe_load(path.read_text())
    command = command_of(recipe)
    data = recipe.get("data", {}) or {}
    train = recipe.get("train", {}) or {}
    args = [command, "-c", str(path), f"model.name_or_path={tiny_model_dir}",
            f"train.output_dir={tmp_path / 'run'}", "train.progress=false",
            "train.max_steps=2", f"train.batch_size={min(int(train.get('batch_size', 2)), 2)}",
            "train.eval_batch_size=8", "train.save_every=1", "train.warmup_steps=1"]
    if command == "iterate":
        it = recipe["iterate"]
        args += [f"iterate.prompts={local_data(it['prompts'], 'grpo', tmp_path, fixtures)}",
                 f"iterate.eval_prompts={local_data(it['eval_prompts'], 'grpo', tmp_path, fixtures)}",
                 "iterate.rounds=1", "iterate.prompts_per_round=8", "iterate.eval_max_prompts=4",
                 "iterate.max_new_tokens=6", "--rounds", "1"]
        return command, args
    args += [f"data.train={local_data(data.get('train'), command, tmp_path, fixtures)}", "data.max_rows=16"]
    if data.get("eval"):
        args += [f"data.eval={local_data(data['eval'], command, tmp_path, fixtures)}", "data.eval_split=train"]
    if "split" in data:
        args.append("data.split=train")  # a local file has one split
    if command == "grpo":
        length = min(int(recipe["grpo"].get("max_completion_length", 8)), 8)
        args += [f"grpo.max_completion_length={length}", "grpo.eval_max_prompts=4"]
    if command == "distill":  # the tiny model teaches itself: the recipe's settings are what is checked
        length = min(int(recipe["distill"].get("max_completion_length", 8)), 8)
        args += [f"distill.teacher={tiny_model_dir}", f"distill.max_completion_length={length}",
                 "distill.eval_max_prompts=4"]
    return command, args


@pytest.mark.slow
@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_shipped_recipe_trains(path, tmp_path, tiny_model_dir, sft_train, prefs, prompts):
    fixtures = {"sft": sft_train, "dpo": prefs, "grpo": prompts, "rm": prefs, "distill": sft_train}
    command, args = recipe_args(path, tmp_path, tiny_model_dir, fixtures)
    result = run_cli(args)
    assert result.code == 0, f"{path.name} failed"
    out = tmp_path / "run"
    if command == "iterate":
        summary = (out / "summary.json").read_text()
        assert '"round": 1' in summary
        return
    records = train_records(out)
    assert [r["step"] for r in records] == [1, 2]
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in records)
    assert (out / "final" / "config.json").is_file()
    # The recipe's own precision settings were used, not overridden.
    recipe = yaml.safe_load(path.read_text())
    written = yaml.safe_load((out / "config.yaml").read_text())
    for section, key in (("model", "dtype"), ("train", "mixed_precision"), ("train", "gradient_checkpointing"),
                         ("lora", "enabled")):
        if key in (recipe.get(section) or {}):
            assert written[section][key] == recipe[section][key], (section, key)


def test_every_recipe_is_covered():
    names = {p.stem for p in RECIPES}
    assert {"dpo_qwen2.5-0.5b_lora", "grpo_gsm8k_qwen2.5-0.5b_lora", "sft_tiny"} <= names
    assert read_jsonl  # the helpers above are used by the parametrised test
