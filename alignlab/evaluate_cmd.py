"""`alignlab eval MODEL_OR_RUN [-c CONFIG] [key=value ...]`: task and preference metrics, a table and a JSON file.

Task metrics on a prompt set (`data.prompts`: our tasks, GSM8K question/answer rows, any prompt +
answer rows) come from `alignlab.evaluate.evaluate_prompts`: greedy accuracy, format rate, mean
reward per reward function and mean length, plus pass@k and sampled accuracy over
`eval.num_samples` samples at `eval.temperature`. Preference metrics on a pair set (`data.pairs`)
come from `alignlab.evaluate.preference_accuracy`: held-out accuracy and mean margin, and with a
reference model (`eval.reference`) the DPO implicit rewards beta * (log pi - log ref).

A run directory stands for its final checkpoint. Given no data, a run's own eval set is used
(prompts for SFT/GRPO runs, pairs for DPO runs), with a GRPO run's rewards and a DPO run's base
model and beta as the reference, so `alignlab eval runs/dpo_...` needs nothing else.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import torch
import yaml

from alignlab.config import EvalConfig, EvalDataConfig, load_config, to_dict
from alignlab.errors import AlignlabError, ConfigError
from alignlab.inference import load_for_inference
from alignlab.models import model_slug

SAMPLES_IN_JSON = 20


def is_run_dir(path: str) -> bool:
    return (Path(path) / "config.yaml").is_file() and (Path(path) / "checkpoints.jsonl").exists()


def read_run_config(run_dir: Path) -> tuple[str, dict]:
    """(command, config dict) from a run's config.yaml; its first line is `# alignlab <command>`."""
    text = (Path(run_dir) / "config.yaml").read_text()
    first = text.splitlines()[0] if text else ""
    command = first.split()[-1] if first.startswith("# alignlab") else "sft"
    return command, yaml.safe_load(text) or {}


def fill_from_run(config) -> list[str]:
    """When no data is given and the model is a run dir: its eval data, rewards and reference. Returns notes."""
    path = config.model.name_or_path
    if config.data.prompts or config.data.pairs or not is_run_dir(path):
        return []
    command, run = read_run_config(Path(path))
    data = run.get("data") or {}
    source = data.get("eval")
    if not source:
        raise ConfigError(f"run {path} has no data.eval set: give data.prompts=FILE and/or data.pairs=FILE")
    # Evaluate the way the run saw its data: same columns, split, system prompt and templating.
    config.data.columns = data.get("columns") or {}
    if config.data.split == EvalDataConfig.split:
        config.data.split = data.get("eval_split") or (data.get("split", "train") if command == "dpo" else "test")
    config.data.system_prompt = config.data.system_prompt or data.get("system_prompt")
    config.data.chat_template = bool(config.data.chat_template and data.get("chat_template", True))
    notes = []
    if command == "dpo":
        config.data.pairs = source
        dpo, base = run.get("dpo") or {}, (run.get("model") or {}).get("name_or_path")
        if config.eval.reference is None and base and dpo.get("reference") != "none":
            config.eval.reference = base
            if config.eval.beta == EvalConfig.beta:
                config.eval.beta = float(dpo.get("beta", config.eval.beta))
            notes.append(f"reference: the run's base model {base}, beta={config.eval.beta}")
    else:
        config.data.prompts = source
        rewards = (run.get("grpo") or {}).get("rewards")
        if rewards and config.eval.rewards == EvalConfig().rewards:
            config.eval.rewards = list(rewards)
    notes.insert(0, f"data: the run's eval set {source}")
    return notes


def resolve_config(model: Optional[str], config_path: Optional[str], overrides: list[str]):
    """The eval config; MODEL_OR_RUN wins over model.name_or_path. A first argument with '=' is an override."""
    overrides = list(overrides or [])
    if model and "=" in model and not Path(model).exists():
        overrides.insert(0, model)
        model = None
    if model:
        overrides.append(f"model.name_or_path={model}")
    config = load_config("eval", config_path, overrides)
    notes = fill_from_run(config)
    if not config.data.prompts and not config.data.pairs:
        raise ConfigError("nothing to evaluate: set data.prompts=FILE (task metrics) and/or data.pairs=FILE "
                          "(preference metrics), or give a run directory that has an eval set")
    return config, notes


# ------------------------------------------------------------------ the two evaluations


def task_metrics(loaded, config) -> tuple[dict, list[dict]]:
    from alignlab.data.prompts import load_prompt_items
    from alignlab.evaluate import evaluate_prompts
    from alignlab.rewards import get_reward

    data, ev = config.data, config.eval
    items, skipped = load_prompt_items(data.prompts, split=data.split, columns=data.columns, max_rows=data.max_rows,
                                       skip_bad_rows=data.skip_bad_rows)
    reward_fns = [(name.rsplit(":", 1)[-1], get_reward(name)) for name in ev.rewards]
    options = dict(max_new_tokens=ev.max_new_tokens, batch_size=ev.batch_size)
    greedy = evaluate_prompts(loaded.model, loaded.tokenizer, loaded.templater, items, reward_fns, None, **options)
    metrics = dict(greedy.metrics)
    if ev.num_samples > 1:
        torch.manual_seed(ev.seed)
        sampled = evaluate_prompts(loaded.model, loaded.tokenizer, loaded.templater, items, reward_fns, None,
                                   greedy=False, num_samples=ev.num_samples, temperature=ev.temperature, **options)
        for key in ("accuracy", f"pass@{ev.num_samples}", "format_rate", "reward"):
            if key in sampled.metrics:
                metrics[key if key.startswith("pass@") else f"sampled/{key}"] = sampled.metrics[key]
    if skipped:
        metrics["skipped_rows"] = skipped
    return metrics, greedy.samples


def load_eval_pairs(config, templater):
    from alignlab.data.io import read_rows, rename_columns
    from alignlab.data.preference import load_preference_rows
    from alignlab.data.preference_encode import encode_pairs

    data = config.data
    rows = rename_columns(read_rows(data.pairs, split=data.split, max_rows=data.max_rows), data.columns)
    examples, _ = load_preference_rows(rows, skip_bad_rows=data.skip_bad_rows)
    return encode_pairs(examples, templater, max_length=config.eval.max_length, on_long="truncate")


def preference_metrics(loaded, config) -> dict:
    from alignlab.evaluate import preference_accuracy
    from alignlab.pair_logps import compute_all

    ev = config.eval
    pairs = load_eval_pairs(config, loaded.templater)
    ref_logps = None
    if ev.reference:
        reference = load_for_inference(ev.reference, dtype=config.model.dtype,
                                       trust_remote_code=config.model.trust_remote_code)
        if reference.model.get_output_embeddings().weight.shape[0] != loaded.model.get_output_embeddings().weight.shape[0]:
            raise AlignlabError(f"eval.reference={ev.reference} has a different vocabulary from the model: "
                                "the reference must share the policy's tokenizer")
        device = next(loaded.model.parameters()).device
        ref_logps = compute_all(reference.model, pairs, loaded.tokenizer.pad_token_id, device,
                                batch_size=ev.batch_size, chunk_size=0)
        del reference
    # Without a reference the margin is the plain log-prob difference (beta = 1).
    beta = ev.beta if ref_logps is not None else 1.0
    metrics = preference_accuracy(loaded.model, loaded.tokenizer, pairs, ref_logps=ref_logps,
                                  batch_size=ev.batch_size, beta=beta)
    return {**metrics, "beta": beta, "reference": ev.reference}


# ------------------------------------------------------------------ output

LABELS = {
    "accuracy": "greedy accuracy", "format_rate": "format rate (greedy)", "reward": "mean reward (greedy)",
    "mean_length": "mean length (tokens)", "sampled/accuracy": "sampled accuracy", "sampled/format_rate":
    "sampled format rate", "sampled/reward": "sampled mean reward", "preference_accuracy": "preference accuracy",
    "margin": "mean margin", "rewards/chosen": "implicit reward, chosen", "rewards/rejected": "implicit reward, rejected",
}
PERCENT = ("accuracy", "format_rate", "sampled/accuracy", "sampled/format_rate", "preference_accuracy")


ORDER = ["preference_accuracy", "margin", "accuracy", "pass@", "sampled/accuracy", "format_rate", "sampled/format_rate",
         "reward", "sampled/reward", "rewards/", "mean_length"]


def _rank(name: str) -> int:
    return next((i for i, key in enumerate(ORDER) if name == key or (key.endswith(("@", "/")) and name.startswith(key))),
                len(ORDER))


def format_table(result: dict) -> str:
    lines = [f"eval of {result['model']}"]
    data = result["data"]
    sections = (("task", f"task: {data.get('prompts')}"), ("preference", f"preference: {data.get('pairs')}"))
    for key, title in sections:
        metrics = result.get(key)
        if not metrics:
            continue
        lines.append(f"  {title}")
        for name, value in sorted(metrics.items(), key=lambda kv: _rank(kv[0])):
            if value is None or isinstance(value, str):
                continue
            label = LABELS.get(name, name)
            percent = name in PERCENT or name.startswith("pass@")
            count = isinstance(value, int) or (name in ("prompts", "pairs", "skipped_rows")
                                               and float(value).is_integer())  # 32, not 32.0000
            text = f"{100 * value:.1f}%" if percent else (f"{int(value)}" if count else f"{value:.4f}")
            lines.append(f"    {label:<34}{text:>12}")
    return "\n".join(lines)


def default_output(config) -> Path:
    path = config.model.name_or_path
    if is_run_dir(path):
        return Path(path) / "eval.json"
    return Path("runs") / "eval" / f"{model_slug(path)}_{time.strftime('%Y%m%d-%H%M%S')}.json"


def run_eval(config, notes=()) -> dict:
    """Evaluate, print the table, write the JSON; returns the result dict."""
    from alignlab.checkpoint import atomic_write_text

    loaded = load_for_inference(config.model.name_or_path, dtype=config.model.dtype,
                                trust_remote_code=config.model.trust_remote_code,
                                use_chat_template=config.data.chat_template, system_prompt=config.data.system_prompt)
    for note in notes:
        print(f"[eval] {note}")
    result = {"model": config.model.name_or_path, "data": {"prompts": config.data.prompts, "pairs": config.data.pairs}}
    if config.data.prompts:
        result["task"], samples = task_metrics(loaded, config)
        result["samples"] = samples[:SAMPLES_IN_JSON]
    if config.data.pairs:
        result["preference"] = preference_metrics(loaded, config)
    result["config"] = to_dict(config)
    out = Path(config.eval.output) if config.eval.output else default_output(config)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(format_table(result))
    print(f"wrote {out}")
    result["output"] = str(out)
    return result


def eval_command(model: Optional[str], config_path: Optional[str], overrides: list[str]) -> dict:
    config, notes = resolve_config(model, config_path, overrides)
    return run_eval(config, notes)

