"""Measure each demo stage on the same held-out prompts and print an honest before/after table."""

from __future__ import annotations

from pathlib import Path

from alignlab.engine.tracking import read_jsonl

SAMPLES_PER_PROMPT = 8


def measure(demo, model_dir: Path, pairs) -> dict:
    """greedy/sampled accuracy, format rate, preference accuracy and mean length of one model."""
    from transformers import AutoModelForCausalLM

    from alignlab.generation.prompt_eval import preference_accuracy

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    greedy = demo._evaluator(demo.test_items)(model)
    sampled = demo._evaluator(demo.test_items, greedy=False, num_samples=SAMPLES_PER_PROMPT)(model)
    preference = preference_accuracy(model, demo.tokenizer, pairs, batch_size=256)
    return {
        "greedy_accuracy": greedy.metrics.get("accuracy", 0.0),
        "sampled_accuracy": sampled.metrics.get("accuracy", 0.0),
        "sampled_reward": sampled.metrics["reward"],
        "format_rate": greedy.metrics.get("format_rate", 0.0),
        "preference_accuracy": preference["preference_accuracy"],
        "mean_length": greedy.metrics["mean_length"],
        "_answers": [s["completion"] for s in greedy.samples],
    }


def objective(run_dir: Path, key: str, window: int = 5) -> dict:
    """A stage's own training objective: mean of `key` over its first and last `window` logged steps."""
    values = [r[key] for r in read_jsonl(run_dir / "metrics.jsonl") if r.get(key) is not None and "eval/" not in key]
    window = max(1, min(window, len(values) // 2))
    return {"name": key, "first": sum(values[:window]) / window, "last": sum(values[-window:]) / window,
            "steps": len(values)}


def table(stages: dict, test_prompts: int, pairs: int) -> str:
    rows = [
        ("greedy accuracy", "greedy_accuracy", True),
        (f"sampled accuracy (T=1, {SAMPLES_PER_PROMPT}/prompt)", "sampled_accuracy", True),
        ("format rate", "format_rate", True),
        ("held-out preference accuracy", "preference_accuracy", True),
        ("mean completion length (tokens)", "mean_length", False),
    ]
    names = list(stages)
    lines = [f"Measured on {test_prompts} held-out test prompts (never trained on) and {pairs} held-out preference pairs.",
             f"{'':40}" + "".join(f"{n.upper():>10}" for n in names)]
    for label, key, percent in rows:
        cells = "".join(f"{100 * stages[n][key]:>9.1f}%" if percent else f"{stages[n][key]:>10.1f}" for n in names)
        lines.append(f"{label:40}{cells}")
    lines.append(f"{'steps':40}" + "".join(f"{stages[n]['steps']:>10}" for n in names))
    lines.append(f"{'seconds':40}" + "".join(f"{stages[n]['seconds']:>10.0f}" for n in names))
    return "\n".join(lines)


def side_by_side(prompts: list[str], gold: list[str], stages: dict, count: int = 6) -> str:
    names = list(stages)
    lines = [f"{'prompt':14}{'gold':>8}" + "".join(f"{n.upper():>22}" for n in names)]
    for i in range(min(count, len(prompts))):
        answers = "".join(f"{stages[n]['_answers'][i][:20]:>22}" for n in names)
        lines.append(f"{prompts[i][:14]:14}{gold[i]:>8}{answers}")
    return "\n".join(lines)


def _versus_sft(name: str, measure: str, gain: float, why: str = "") -> str:
    if gain > 0:
        return f"{name} {measure}: {gain:+.1f} points vs the SFT model."
    return f"{name} did NOT improve {measure} ({gain:+.1f} points vs the SFT model){why}."


def verdicts(stages: dict, fast: bool = False) -> list[str]:
    """Plain statements of what improved and what did not, for the console and summary.json: a
    stage that did not beat the SFT model says so in words, not only by the sign of a number."""
    sft, dpo, grpo = stages["sft"], stages["dpo"], stages["grpo"]
    points = lambda a, b, k: 100 * (b[k] - a[k])  # noqa: E731
    out = [
        _versus_sft("GRPO", "greedy accuracy", points(sft, grpo, "greedy_accuracy")),
        _versus_sft("DPO", "held-out preference accuracy", points(sft, dpo, "preference_accuracy")),
        _versus_sft("DPO", "greedy accuracy", points(sft, dpo, "greedy_accuracy"),
                    ": it learned to rank the pairs, not to answer better"),
    ]
    if fast:
        out.append("--fast trains each stage for a few dozen steps and tests on 100 prompts: it checks that the "
                   "pipeline runs; its gains are small and can be negative. Run without --fast for the "
                   "measured gains (README).")
    out.append("These are results for one tiny model on one synthetic task; more SFT on gold answers would also "
               "improve it. They show the trainers work, not that RL beats SFT in general.")
    return out
