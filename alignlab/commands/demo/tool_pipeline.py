"""`alignlab demo --task tools`: tiny model -> SFT on tool-use transcripts -> GRPO with the multiply
tool -> a before/after table on held-out prompts, offline.

The stages run through the trainers and configs a user runs (configs/tools_tiny_{sft,grpo}.yaml),
with paths, seed and step counts overridden here. Both models are measured the same way: greedy,
with the tool, on held-out prompts no stage trains on.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from alignlab.commands.demo.pipeline import CONFIG_DIR, _last_step, _stage_line
from alignlab.commands.demo.tool_task import TOOL_SPECS, make_tool_splits
from alignlab.commands.demo.tasks import write_jsonl
from alignlab.config import load_config
from alignlab.engine.checkpoint import atomic_write_text
from alignlab.engine.tracking import drop_log_file, keep_log_file, setup_logging
from alignlab.errors import AlignlabError
from alignlab.model.tiny import write_tiny_model

# SFT stops once greedy accuracy with the tool on the dev prompts reaches sft_threshold (checked every
# 50 steps): when the model starts copying the factors into its call and the result into its answer
# depends on the seed (~450-900 steps of 64 measured), as the addition demo's jump does.
SETTINGS = {"full": {"sft_max_steps": 1200, "sft_threshold": 0.5, "grpo_steps": 40, "test_prompts": 200},
            "fast": {"sft_max_steps": 20, "sft_threshold": 2.0, "grpo_steps": 2, "test_prompts": 8}}
SAMPLES_PER_PROMPT = 4
MEASURES = [("greedy accuracy (with the tool)", "accuracy", True),
            (f"sampled accuracy (T=1, {SAMPLES_PER_PROMPT}/prompt)", "sampled/accuracy", True),
            ("format rate", "format_rate", True),
            ("tool calls per answer, greedy", "tools/call_frequency", False),
            ("tool calls per answer, sampled", "sampled/tools/call_frequency", False),
            ("failed calls, sampled", "sampled/tools/failure_frequency", True),
            ("mean trajectory length (tokens)", "mean_length", False)]


def _tool_eval(model_dir: Path):
    """(evaluate(model, items, **sampling) -> EvalResult, tokenizer): the multiply tool as the GRPO config sets it."""
    from alignlab.data.templates import Templater
    from alignlab.generation.multi_turn import turn_settings
    from alignlab.generation.prompt_eval import evaluate_prompts
    from alignlab.model.loading import load_tokenizer
    from alignlab.rewards import get_reward

    grpo = load_config("grpo", str(CONFIG_DIR / "tools_tiny_grpo.yaml")).grpo
    tokenizer = load_tokenizer(str(model_dir))
    turns = turn_settings(TOOL_SPECS, max_tool_turns=grpo.max_tool_turns, max_completion_length=grpo.max_completion_length)
    templater = Templater(tokenizer, tools=turns.tool_schemas)
    fns = [(n, get_reward(n)) for n in grpo.rewards]
    return lambda model, items, **kw: evaluate_prompts(model, tokenizer, templater, items, fns, None, turns=turns,
                                                       max_new_tokens=grpo.max_completion_length, **kw)


def _items(rows: list[dict], name: str) -> list:
    from alignlab.data.io import Row
    from alignlab.data.prompts import prompt_item

    return [prompt_item(Row({"prompt": r["prompt"], "answer": r["answer"]}, name, i)) for i, r in enumerate(rows, 1)]


def measure(model_dir: Path, test_file: Path, count: int) -> dict:
    """Greedy and sampled accuracy, format rate and tool use of one model on the held-out prompts."""
    import torch
    from transformers import AutoModelForCausalLM

    from alignlab.engine.tracking import read_jsonl

    evaluate = _tool_eval(model_dir)
    items = _items(read_jsonl(test_file)[:count], "test")
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    greedy = evaluate(model, items)
    torch.manual_seed(0)
    sampled = evaluate(model, items, greedy=False, num_samples=SAMPLES_PER_PROMPT, temperature=1.0)
    metrics = {**greedy.metrics, **{f"sampled/{k}": v for k, v in sampled.metrics.items()}}
    return {**{key: metrics.get(key, 0.0) for _, key, _ in MEASURES}, "_samples": greedy.samples[:4]}


def table(stages: dict, test_prompts: int) -> str:
    lines = [f"Measured with the multiply tool on {test_prompts} held-out prompts (never trained on), greedily and "
             f"sampled at T=1.",
             f"{'':36}" + "".join(f"{n.upper():>10}" for n in stages)]
    for label, key, percent in MEASURES:
        cells = "".join(f"{100 * s[key]:>9.1f}%" if percent else f"{s[key]:>10.2f}" for s in stages.values())
        lines.append(f"{label:36}{cells}")
    lines.append(f"{'steps':36}" + "".join(f"{s['steps']:>10}" for s in stages.values()))
    lines.append(f"{'seconds':36}" + "".join(f"{s['seconds']:>10.0f}" for s in stages.values()))
    return "\n".join(lines)


def run_tool_demo(out: str = "runs/demo_tools", seed: int = 0, fast: bool = False) -> dict:
    out_dir, settings = Path(out), SETTINGS["fast" if fast else "full"]
    if (out_dir / "summary.json").exists() or (out_dir / "sft").exists():
        raise AlignlabError(f"{out_dir} already holds a demo run; pass --out to a new directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(None)
    demo_log = keep_log_file(out_dir / "demo.log")
    try:
        return _run(out_dir, seed, fast, settings)
    finally:
        drop_log_file(demo_log)


def _run(out_dir: Path, seed: int, fast: bool, settings: dict) -> dict:
    from alignlab.trainers.grpo import train_grpo
    from alignlab.trainers.sft import train_sft

    start, data = time.perf_counter(), out_dir / "data"
    splits = make_tool_splits(seed, test=settings["test_prompts"])
    files = {name: write_jsonl(rows, data / f"{name}.jsonl") for name, rows in splits.items()}
    write_tiny_model(out_dir / "base_model", seed=seed)
    _stage_line("data", time.perf_counter() - start, f"tiny model + tool task: {len(splits['sft'])} SFT transcripts, "
                f"{len(splits['dev'])} dev, {len(splits['prompts'])} GRPO prompts, {len(splits['test'])} test prompts")
    common = [f"train.seed={seed}", "train.progress=true"]
    timings = {}
    tick = time.perf_counter()
    evaluate, dev_items = _tool_eval(out_dir / "base_model"), _items(splits["dev"], "dev")
    train_sft(load_config("sft", str(CONFIG_DIR / "tools_tiny_sft.yaml"), common + [
        f"model.name_or_path={out_dir / 'base_model'}", f"data.train={files['sft']}", f"data.eval={files['dev']}",
        f"train.output_dir={out_dir / 'sft'}", f"train.max_steps={settings['sft_max_steps']}", "train.eval_every=50"]),
        extra_eval=lambda model: {"accuracy": evaluate(model, dev_items).metrics.get("accuracy", 0.0)},
        stop_fn=lambda record: record.get("eval/accuracy", 0.0) >= settings["sft_threshold"])
    timings["sft"] = time.perf_counter() - tick
    _stage_line("sft", timings["sft"], f"SFT on tool-use transcripts stopped at step {_last_step(out_dir / 'sft')}")
    tick = time.perf_counter()
    train_grpo(load_config("grpo", str(CONFIG_DIR / "tools_tiny_grpo.yaml"), common + [
        f"model.name_or_path={out_dir / 'sft' / 'final'}", f"data.train={files['prompts']}",
        f"data.eval={files['test']}", f"train.output_dir={out_dir / 'grpo'}", f"train.max_steps={settings['grpo_steps']}",
        f"train.eval_every={settings['grpo_steps']}"]))
    timings["grpo"] = time.perf_counter() - tick
    _stage_line("grpo", timings["grpo"], "GRPO with the multiply tool")
    tick = time.perf_counter()
    stages = {}
    for name in ("sft", "grpo"):
        stages[name] = measure(out_dir / name / "final", files["test"], settings["test_prompts"])
        stages[name].update(steps=_last_step(out_dir / name), seconds=timings[name])
    _stage_line("eval", time.perf_counter() - tick, "measured both models on the held-out prompts")
    greedy_gain = 100 * (stages["grpo"]["accuracy"] - stages["sft"]["accuracy"])
    sampled_gain = 100 * (stages["grpo"]["sampled/accuracy"] - stages["sft"]["sampled/accuracy"])
    print()
    print(table(stages, settings["test_prompts"]))
    verdict = (f"GRPO changed accuracy with the tool by {sampled_gain:+.1f} points sampled (T=1) and {greedy_gain:+.1f} "
               f"greedy; sampled tool calls per answer {stages['sft']['sampled/tools/call_frequency']:.2f} -> "
               f"{stages['grpo']['sampled/tools/call_frequency']:.2f}" + (" (--fast is too short to learn)" if fast else ""))
    print(f"\n{verdict}")
    summary = {"task": "tools", "seed": seed, "fast": fast, "test_prompts": settings["test_prompts"],
               "seconds": time.perf_counter() - start, "notes": [verdict],
               "stages": {n: {k: v for k, v in s.items() if not k.startswith("_")} for n, s in stages.items()},
               "samples": {n: s["_samples"] for n, s in stages.items()},
               "runs": {n: str(out_dir / n) for n in stages}}
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    from alignlab.commands.report import write_report

    report = write_report([out_dir / "sft", out_dir / "grpo"], out_dir / "report.html")
    print(f"\nTotal {summary['seconds']:.0f}s. Summary: {out_dir / 'summary.json'}; report: {report}")
    return summary
