"""`alignlab eval MODEL_OR_RUN [-c CONFIG] [key=value ...]`: task and preference metrics, a table and a JSON file.

Task metrics on a prompt set (`data.prompts`: our tasks, GSM8K question/answer rows, any prompt +
answer rows) come from `alignlab.generation.prompt_eval.evaluate_prompts`: greedy accuracy, format rate, mean
reward per reward function and mean length, plus pass@k and sampled accuracy over
`eval.num_samples` samples at `eval.temperature`. Preference metrics on a pair set (`data.pairs`)
come from `alignlab.generation.prompt_eval.preference_accuracy`: with a reference model the DPO implicit rewards
beta * (log pi - log ref), the share of pairs where chosen's is higher (`preference_accuracy`) and
the mean margin; without one, only the policy's log-prob difference, reported under names that say
so (`reference_free/accuracy`, `reference_free/margin`, `reference: null`), since a DPO policy is
trained to beat its reference, not to give chosen the higher raw log-prob.

A run directory stands for its final checkpoint. A DPO run's base model and `dpo.beta` are the
reference and beta for any pairs (its own or `data.pairs`; `eval.reference` wins). Given no data, a
run's own eval set is used (prompts for SFT/GRPO runs, pairs for DPO runs: `data.eval`, or the pairs
it held out with `data.eval_fraction`), with a GRPO run's rewards, so `alignlab eval runs/dpo_...`
needs nothing else.
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
from alignlab.model.inference import load_for_inference
from alignlab.model.loading import model_slug

SAMPLES_IN_JSON = 20


def is_run_dir(path: str) -> bool:
    return (Path(path) / "config.yaml").is_file() and (Path(path) / "checkpoints.jsonl").exists()


def read_run_config(run_dir: Path) -> tuple[str, dict]:
    """(command, config dict) from a run's config.yaml; its first line is `# alignlab <command>`."""
    text = (Path(run_dir) / "config.yaml").read_text()
    first = text.splitlines()[0] if text else ""
    command = first.split()[-1] if first.startswith("# alignlab") else "sft"
    return command, yaml.safe_load(text) or {}


def fill_from_run(config) -> tuple[list[str], Optional[list]]:
    """What a run directory supplies: its eval data when none is given, and a DPO run's reference and
    beta. Returns (notes, held-out preference examples when those are the pairs, else None)."""
    path = config.model.name_or_path
    if not is_run_dir(path):
        return [], None
    command, run = read_run_config(Path(path))
    notes, held_out = [], None
    if not config.data.prompts and not config.data.pairs:
        notes, held_out = _data_from_run(config, Path(path), command, run)
    if command == "dpo" and (config.data.pairs or held_out is not None):
        notes += _reference_from_run(config, run)
    if command == "grpo":
        notes += _tools_from_run(config, run)
    return notes, held_out


def _tools_from_run(config, run: dict) -> list[str]:
    """A tool-using GRPO run is evaluated with its tools (or environment), as it trained, whatever the data."""
    grpo = run.get("grpo") or {}
    for key in ("tools", "tool_parser", "max_tool_turns", "environment"):
        if getattr(config.eval, key) is None and grpo.get(key) not in (None, []):
            setattr(config.eval, key, grpo[key])
    if config.eval.tools or config.eval.environment:
        return [f"tools: the run's {config.eval.tools or []}" + (f", environment {config.eval.environment}"
                                                                  if config.eval.environment else "")]
    return []


def _data_from_run(config, path: Path, command: str, run: dict) -> tuple[list[str], Optional[list]]:
    data = run.get("data") or {}
    source = data.get("eval")
    from_fraction = command == "dpo" and not source and data.get("eval_fraction")
    if not source and not from_fraction:
        raise ConfigError(f"run {path} has no data.eval set (nor, for a DPO run, data.eval_fraction): "
                          "give data.prompts=FILE and/or data.pairs=FILE")
    # Evaluate the way the run saw its data: same columns, split, system prompt and templating.
    config.data.columns = data.get("columns") or {}
    if config.data.split == EvalDataConfig.split:
        config.data.split = data.get("eval_split") or (data.get("split", "train") if command == "dpo" else "test")
    config.data.system_prompt = config.data.system_prompt or data.get("system_prompt")
    config.data.chat_template = bool(config.data.chat_template and data.get("chat_template", True))
    if from_fraction:
        seed = (run.get("train") or {}).get("seed")
        note = f"data: the pairs the run held out of data.train (data.eval_fraction={data['eval_fraction']}, train.seed={seed})"
        return [note], run_held_out_pairs(path)
    if command == "dpo":
        config.data.pairs = source
    else:
        config.data.prompts = source
        grpo = run.get("grpo") or {}
        rewards = grpo.get("rewards")
        if rewards and config.eval.rewards == EvalConfig().rewards:
            config.eval.rewards = list(rewards)
    return [f"data: the run's eval set {source}"], None


def _reference_from_run(config, run: dict) -> list[str]:
    """A DPO run's margins are measured against its base model, scaled by its beta: so are eval's."""
    dpo, base = run.get("dpo") or {}, (run.get("model") or {}).get("name_or_path")
    if config.eval.beta == EvalConfig.beta and "beta" in dpo:
        config.eval.beta = float(dpo["beta"])
    if config.eval.reference is None and base and dpo.get("reference") != "none":
        config.eval.reference = base
        return [f"reference: the run's base model {base}, beta={config.eval.beta}"]
    if config.eval.reference is None:
        return ["reference: none (the run trained with dpo.reference=none): reference-free log-prob margins"]
    return [f"reference: eval.reference={config.eval.reference}, beta={config.eval.beta}"]


def run_held_out_pairs(path: Path) -> list:
    """The pairs a DPO run held out with data.eval_fraction, read and split by the trainer's own code."""
    from alignlab.data.preference_sets import held_out_examples

    try:
        run_config = load_config("dpo", str(path / "config.yaml"))
    except ConfigError as exc:
        raise ConfigError(f"cannot read {path / 'config.yaml'} to find the pairs the run held out ({exc}); "
                          "give data.pairs=FILE") from None
    return held_out_examples(run_config)


def resolve_config(model: Optional[str], config_path: Optional[str], overrides: list[str]):
    """(eval config, notes, a DPO run's held-out pairs or None); MODEL_OR_RUN wins over model.name_or_path.
    A first argument with '=' is an override."""
    overrides = list(overrides or [])
    if model and "=" in model and not Path(model).exists():
        overrides.insert(0, model)
        model = None
    if model:
        overrides.append(f"model.name_or_path={model}")
    config = load_config("eval", config_path, overrides)
    notes, held_out = fill_from_run(config)
    if not config.data.prompts and not config.data.pairs and held_out is None:
        raise ConfigError("nothing to evaluate: set data.prompts=FILE (task metrics) and/or data.pairs=FILE "
                          "(preference metrics), or give a run directory that has an eval set")
    return config, notes, held_out


# ------------------------------------------------------------------ the two evaluations


def task_metrics(loaded, config) -> tuple[dict, list[dict]]:
    from alignlab.data.prompts import load_prompt_items
    from alignlab.generation.multi_turn import turn_settings
    from alignlab.generation.prompt_eval import evaluate_prompts
    from alignlab.rewards import get_reward

    data, ev = config.data, config.eval
    items, skipped = load_prompt_items(data.prompts, split=data.split, columns=data.columns, max_rows=data.max_rows,
                                       skip_bad_rows=data.skip_bad_rows, label=f"data.prompts ({data.prompts})")
    reward_fns = [(name.rsplit(":", 1)[-1], get_reward(name)) for name in ev.rewards]
    from alignlab.generation.vllm import engine_for_model, engine_or_none

    engine = engine_or_none(ev.backend, lambda: engine_for_model(
        loaded.path, loaded.model, loaded.tokenizer, max_model_len=ev.max_length + ev.max_new_tokens, seed=ev.seed))
    turns = turn_settings(ev.tools or [], tool_parser=ev.tool_parser or "qwen", environment=ev.environment,
                          max_tool_turns=4 if ev.max_tool_turns is None else ev.max_tool_turns,
                          max_completion_length=ev.max_new_tokens)
    if turns is not None:
        loaded.templater.tools = turns.tool_schemas  # prompts list the tools, as the chat template renders them
    options = dict(max_new_tokens=ev.max_new_tokens, batch_size=ev.batch_size, engine=engine, turns=turns)
    greedy = evaluate_prompts(loaded.model, loaded.tokenizer, loaded.templater, items, reward_fns, None, **options)
    metrics = dict(greedy.metrics)
    if ev.num_samples > 1:
        torch.manual_seed(ev.seed)
        sampled = evaluate_prompts(loaded.model, loaded.tokenizer, loaded.templater, items, reward_fns, None,
                                   greedy=False, num_samples=ev.num_samples, temperature=ev.temperature, **options)
        for key in ("accuracy", f"pass@{ev.num_samples}", "format_rate", "reward"):
            if key in sampled.metrics:
                metrics[key if key.startswith("pass@") else f"sampled/{key}"] = sampled.metrics[key]
        metrics.update(sample_diversity(loaded, [s["completion"] for s in sampled.samples], ev))
    if skipped:
        metrics["skipped_rows"] = skipped
    return metrics, greedy.samples


def sample_diversity(loaded, texts: list[str], ev) -> dict:
    """diversity/* over each prompt's eval.num_samples samples (texts grouped by prompt, in order), embedded by
    eval.embedding_model or else by the evaluated model's own hidden states (alignlab.scoring.embeddings)."""
    from alignlab.data.diversity import diversity_metrics
    from alignlab.scoring.embeddings import embedder_for

    k = ev.num_samples
    groups = [texts[i: i + k] for i in range(0, len(texts), k)]
    return diversity_metrics(groups, embedder_for(ev.embedding_model, loaded, batch_size=ev.batch_size))


def load_eval_pairs(config, templater, examples=None):
    """data.pairs (or the given PreferenceExamples: a run's held-out pairs), encoded for scoring."""
    from alignlab.data.io import read_rows, rename_columns
    from alignlab.data.preference import load_preference_rows
    from alignlab.data.preference_encode import encode_pairs

    data = config.data
    if examples is None:
        rows = read_rows(data.pairs, split=data.split, max_rows=data.max_rows, skip_bad_rows=data.skip_bad_rows)
        examples, _ = load_preference_rows(rename_columns(rows, data.columns), skip_bad_rows=data.skip_bad_rows,
                                           label=f"data.pairs ({data.pairs})")
    elif data.max_rows:
        examples = examples[: data.max_rows]
    return encode_pairs(examples, templater, max_length=config.eval.max_length, on_long="truncate")


def preference_metrics(loaded, config, examples=None) -> dict:
    from alignlab.generation.prompt_eval import preference_accuracy
    from alignlab.model.pair_logps import compute_all

    ev = config.eval
    pairs = load_eval_pairs(config, loaded.templater, examples)
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
    if ref_logps is not None:
        metrics = preference_accuracy(loaded.model, loaded.tokenizer, pairs, ref_logps=ref_logps,
                                      batch_size=ev.batch_size, beta=ev.beta)
        return {**metrics, "beta": ev.beta, "reference": ev.reference}
    # Without a reference there is no implicit reward, only log pi(chosen) - log pi(rejected): named
    # apart, because a DPO policy can beat its reference on every pair and still lose this on most.
    metrics = preference_accuracy(loaded.model, loaded.tokenizer, pairs, batch_size=ev.batch_size)
    return {"reference_free/accuracy": metrics["preference_accuracy"], "reference_free/margin": metrics["margin"],
            "pairs": metrics["pairs"], "beta": None, "reference": None}


# ------------------------------------------------------------------ output

LABELS = {
    "accuracy": "greedy accuracy", "format_rate": "format rate (greedy)", "reward": "mean reward (greedy)",
    "mean_length": "mean length (tokens)", "sampled/accuracy": "sampled accuracy", "sampled/format_rate":
    "sampled format rate", "sampled/reward": "sampled mean reward", "preference_accuracy": "preference accuracy",
    "margin": "mean margin", "rewards/chosen": "implicit reward, chosen", "rewards/rejected": "implicit reward, rejected",
    "reference_free/accuracy": "reference-free pref. accuracy", "reference_free/margin": "reference-free log-prob margin",
    "diversity/distinct_1": "distinct-1 (samples)", "diversity/distinct_2": "distinct-2 (samples)",
    "diversity/self_bleu": "self-BLEU (samples; lower=diverse)", "diversity/embedding": "embedding distance (samples)",
    "diversity/distinct_answers": "distinct final answers (samples)",
}
PERCENT = ("accuracy", "format_rate", "sampled/accuracy", "sampled/format_rate", "preference_accuracy",
           "reference_free/accuracy", "judge/win_rate")


ORDER = ["preference_accuracy", "margin", "reference_free/", "accuracy", "pass@", "sampled/accuracy", "format_rate", "sampled/format_rate",
         "reward", "sampled/reward", "rewards/", "mean_length", "diversity/"]


def _rank(name: str) -> int:
    return next((i for i, key in enumerate(ORDER) if name == key or (key.endswith(("@", "/")) and name.startswith(key))),
                len(ORDER))


def _preference_title(result: dict) -> str:
    data, metrics = result["data"], result.get("preference") or {}
    pairs = data.get("pairs") or data.get("held_out")
    if metrics.get("reference"):
        return f"preference: {pairs} (reference {metrics['reference']}, beta {metrics['beta']:g})"
    return f"preference: {pairs} (reference-free: no reference model; set eval.reference=MODEL)"


def format_table(result: dict) -> str:
    lines = [f"eval of {result['model']}"]
    data = result["data"]
    judge = result.get("judge") or {}
    sections = (("task", f"task: {data.get('prompts')}"), ("preference", _preference_title(result)),
                ("judge", f"judged vs {judge.get('baseline')} (rubric {judge.get('rubric')}, both orders)"))
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


def run_eval(config, notes=(), held_out=None) -> dict:
    """Evaluate, print the table, write the JSON; returns the result dict. `held_out`: a DPO run's
    held-out PreferenceExamples, evaluated as the pairs (see `fill_from_run`)."""
    from alignlab.commands.outputs import write_result

    loaded = load_for_inference(config.model.name_or_path, dtype=config.model.dtype,
                                trust_remote_code=config.model.trust_remote_code,
                                use_chat_template=config.data.chat_template, system_prompt=config.data.system_prompt)
    for note in notes:
        print(f"[eval] {note}")
    result = {"model": config.model.name_or_path, "data": {"prompts": config.data.prompts, "pairs": config.data.pairs}}
    if held_out is not None:
        result["data"]["held_out"] = f"{len(held_out)} pairs held out by data.eval_fraction of {config.model.name_or_path}"
    samples = None
    if config.data.prompts:
        result["task"], samples = task_metrics(loaded, config)
        result["samples"] = samples[:SAMPLES_IN_JSON]
    if config.eval.judge:
        from alignlab.commands.judged_eval import judged_win_rate

        result["judge"] = judged_win_rate(loaded, config, [s["completion"] for s in samples] if samples else None)
    if config.data.pairs or held_out is not None:
        result["preference"] = preference_metrics(loaded, config, held_out)
    result["config"] = to_dict(config)
    out = Path(config.eval.output) if config.eval.output else default_output(config)
    print(format_table(result))
    write_result(out, json.dumps(result, indent=2, ensure_ascii=False) + "\n")  # an earlier result is kept
    print(f"wrote {out}")
    result["output"] = str(out)
    return result


def eval_command(model: Optional[str], config_path: Optional[str], overrides: list[str]) -> dict:
    from alignlab.commands.judged_eval import check_judged_eval

    config, notes, held_out = resolve_config(model, config_path, overrides)
    check_judged_eval(config)  # a judge that cannot answer fails before any model loads
    return run_eval(config, notes, held_out)

