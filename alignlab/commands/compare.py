"""`alignlab compare A B [C ...]`: the same prompts through each model, answers side by side.

Answers are greedy, so a rerun prints the same table. Prompts come from `--prompts FILE` (any
prompt file `alignlab eval` reads) or the built-in set: held-out prompts of the demo's addition
task, with answers, and two general questions. When prompts carry an `answer`, each model also
gets accuracy, format rate, mean reward and mean length on those prompts (the rewards are
`--rewards`, by default the addition task's `answer_format,answer_correct`). `--interactive`
keeps every model loaded and asks for prompts in a loop.

`--samples N` also samples N answers per prompt from each model (at `--temperature`) and prints their diversity
(alignlab.data.diversity: distinct-1/2, self-BLEU, embedding distance, distinct final answers), every model's
samples embedded by one embedder (`--embedding-model`, else the first model's own hidden states) so that the
embedding distances are comparable: `alignlab compare base dpo --prompts creative.jsonl --samples 8` answers
"did DPO change diversity?".
"""

from __future__ import annotations

import shutil
import sys
import textwrap
from typing import Callable, Optional

from alignlab.errors import AlignlabError

GENERAL_PROMPTS = ["What is the capital of France?", "Write one sentence about the sea."]
BUILTIN_ADDITION = 4
METRIC_ROWS = [("accuracy", "accuracy", True), ("format_rate", "format rate", True), ("reward", "mean reward", False),
               ("mean_length", "mean length (tokens)", False)]
# percent None: three decimals (diversity changes are small numbers)
DIVERSITY_ROWS = [("diversity/distinct_1", "distinct-1", None), ("diversity/distinct_2", "distinct-2", None),
                  ("diversity/self_bleu", "self-BLEU (lower=div.)", None),
                  ("diversity/embedding", "embedding distance", None),
                  ("diversity/distinct_answers", "distinct final answers", None)]


def builtin_prompts():
    """The demo's first held-out addition prompts (seed 0, never trained on by the default demo) + general ones."""
    from alignlab.data.prompts import PromptItem
    from alignlab.commands.demo.tasks import TASKS, make_splits

    test = make_splits(TASKS["addition"], 0)["test"][:BUILTIN_ADDITION]
    items = [PromptItem(r["prompt"], {"answer": r["answer"]}, "built-in") for r in test]
    return items + [PromptItem(p, {}, "built-in") for p in GENERAL_PROMPTS]


def sample_groups(loaded, items, *, samples: int, temperature: float, max_new_tokens: int, seed: int = 0,
                  batch_size: int = 64) -> list[list[str]]:
    """`samples` sampled answers per item (one list per item), from the same seed for every model."""
    import torch

    from alignlab.generation.prompt_eval import evaluate_prompts

    torch.manual_seed(seed)
    result = evaluate_prompts(loaded.model, loaded.tokenizer, loaded.templater, items, [], None, greedy=False,
                              num_samples=samples, temperature=temperature, max_new_tokens=max_new_tokens,
                              batch_size=batch_size)
    texts = [s["completion"] for s in result.samples]
    return [texts[i * samples: (i + 1) * samples] for i in range(len(items))]


def diversity_by_model(groups: list[list[list[str]]], embed) -> list[dict]:
    """diversity/* of each model's sample groups, all embedded by the one `embed`."""
    from alignlab.data.diversity import diversity_metrics

    return [diversity_metrics(model_groups, embed) for model_groups in groups]


def answer_items(loaded, items, reward_fns, *, max_new_tokens: int, batch_size: int = 64) -> tuple[list[str], dict]:
    """(greedy answers in item order, metrics on the items that carry an answer)."""
    from alignlab.generation.prompt_eval import evaluate_prompts

    answers: list[str] = [""] * len(items)
    metrics: dict = {}
    scored = [i for i, item in enumerate(items) if "answer" in item.columns]
    plain = [i for i in range(len(items)) if i not in set(scored)]
    for indices, fns in ((scored, reward_fns), (plain, [])):
        if not indices:
            continue
        result = evaluate_prompts(loaded.model, loaded.tokenizer, loaded.templater, [items[i] for i in indices], fns,
                                  None, max_new_tokens=max_new_tokens, batch_size=batch_size)
        for i, sample in zip(indices, result.samples):
            answers[i] = sample["completion"]
        if fns:
            metrics = result.metrics
    return answers, metrics


# ------------------------------------------------------------------ terminal tables


def clean_cell(text: str) -> str:
    """One line of printable text: newlines shown as ⏎, other control characters escaped."""
    text = text.replace("\r\n", "\n").replace("\n", "⏎")
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text).strip()


def side_by_side(headers: list[str], rows: list[list[str]], width: Optional[int] = None, narrow: int = 0) -> str:
    """A wrapped text table: the prompt column takes up to a quarter of the width, the `narrow` columns
    after it (gold answers) 10 characters, and the models share the rest."""
    width = width or max(80, shutil.get_terminal_size((120, 24)).columns)
    first = max(12, min(48, width // 4))
    wide = len(headers) - 1 - narrow
    rest = max(10, (width - first - 10 * narrow - 3 * (len(headers) - 1)) // max(1, wide))
    widths = [first] + [10] * narrow + [rest] * wide
    rule = "-+-".join("-" * w for w in widths)
    lines = [" | ".join(h[:w].ljust(w) for h, w in zip(headers, widths)).rstrip(), rule]
    for row in rows:
        wrapped = [textwrap.wrap(clean_cell(cell), w, break_long_words=True, break_on_hyphens=False) or [""]
                   for cell, w in zip(row, widths)]
        for k in range(max(len(c) for c in wrapped)):
            lines.append(" | ".join((c[k] if k < len(c) else "").ljust(w) for c, w in zip(wrapped, widths)).rstrip())
        lines.append(rule)
    return "\n".join(lines)


def metrics_table(labels: list[str], metrics: list[dict], prompts: int, rows=METRIC_ROWS,
                  title: str = "metrics on the {prompts} prompts with answers (greedy):") -> str:
    lines = [title.format(prompts=prompts), f"{'':24}" + "".join(f"{label[:18]:>20}" for label in labels)]
    for key, name, percent in rows:
        if not any(key in m for m in metrics):
            continue
        cells = [m.get(key) for m in metrics]
        text = [("-" if v is None else f"{100 * v:.1f}%" if percent else f"{v:.3f}" if percent is None else f"{v:.2f}")
                for v in cells]
        lines.append(f"{name:24}" + "".join(f"{t:>20}" for t in text))
    return "\n".join(lines)


def unique_labels(loaded_labels: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for label in loaded_labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if loaded_labels.count(label) == 1 else f"{label} ({seen[label]})")
    return out


# ------------------------------------------------------------------ the command


def compare_command(models: list[str], *, prompts: Optional[str] = None, rewards: Optional[list[str]] = None,
                    max_new_tokens: int = 64, dtype: str = "auto", interactive: bool = False, samples: int = 0,
                    temperature: float = 1.0, embedding_model: Optional[str] = None,
                    read: Callable[[str], str] = input, out=None) -> dict:
    """Print the comparison; returns {"models", "prompts", "answers" (per model), "metrics" (per model)}, and with
    `samples` > 1 "samples" (per model, per prompt) and "diversity" (per model)."""
    from alignlab.data.prompts import load_prompt_items
    from alignlab.model.inference import load_for_inference
    from alignlab.rewards import get_reward

    out = out or sys.stdout
    if len(models) < 2:
        raise AlignlabError("compare needs at least two models (hub ids, model dirs or run dirs)")
    reward_fns = [(name.rsplit(":", 1)[-1], get_reward(name)) for name in (rewards or ["answer_format", "answer_correct"])]
    if interactive:
        loaded = [load_for_inference(m, dtype=dtype) for m in models]
        _interactive(loaded, unique_labels([m.label for m in loaded]), max_new_tokens, read, out)
        return {"models": models}
    items = load_prompt_items(prompts)[0] if prompts else builtin_prompts()
    if samples == 1 or samples < 0 or temperature <= 0:
        raise AlignlabError(f"--samples must be 0 (none) or at least 2 and --temperature above 0; got {samples}, "
                            f"{temperature}")
    labels, answers, metrics, sampled = [], [], [], []
    for name in models:  # one model in memory at a time
        model = load_for_inference(name, dtype=dtype)
        labels.append(model.label)
        model_answers, model_metrics = answer_items(model, items, reward_fns, max_new_tokens=max_new_tokens)
        answers.append(model_answers)
        metrics.append(model_metrics)
        if samples:
            sampled.append(sample_groups(model, items, samples=samples, temperature=temperature,
                                         max_new_tokens=max_new_tokens))
        del model
    labels = unique_labels(labels)
    with_gold = any("answer" in item.columns for item in items)
    headers = ["prompt"] + (["gold"] if with_gold else []) + labels
    rows = [[_prompt_text(item.prompt)] + ([str(item.columns.get("answer", ""))] if with_gold else [])
            + [answers[m][i] or "(empty)" for m in range(len(models))] for i, item in enumerate(items)]
    out.write(side_by_side(headers, rows, narrow=int(with_gold)) + "\n")
    if with_gold:
        out.write("\n" + metrics_table(labels, metrics, sum("answer" in item.columns for item in items)) + "\n")
    result = {"models": labels, "prompts": [item.prompt for item in items], "answers": dict(zip(labels, answers)),
              "metrics": dict(zip(labels, metrics))}
    if samples:
        diversity = diversity_by_model(sampled, _embedder(models[0], embedding_model, dtype))
        embedder = embedding_model or f"{labels[0]}'s hidden states"
        title = f"diversity of {samples} samples per prompt (temperature {temperature:g}; embeddings: {embedder}):"
        out.write("\n" + metrics_table(labels, diversity, len(items), DIVERSITY_ROWS, title) + "\n")
        result.update(samples=dict(zip(labels, sampled)), diversity=dict(zip(labels, diversity)))
    return result


def _embedder(first_model: str, embedding_model: Optional[str], dtype: str):
    """One embedder for every model's samples: `embedding_model`, else the first model's hidden states."""
    from alignlab.model.inference import load_for_inference
    from alignlab.scoring.embeddings import language_model_embedder, load_embedder

    if embedding_model:
        return load_embedder(embedding_model, dtype=dtype)
    return language_model_embedder(load_for_inference(first_model, dtype=dtype))


def _prompt_text(prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    return " / ".join(f"{m.get('role')}: {m.get('content')}" for m in prompt)


def _interactive(loaded, labels, max_new_tokens: int, read, out) -> None:
    from alignlab.data.prompts import PromptItem

    out.write(f"comparing {', '.join(labels)}; an empty line or /quit ends.\n")
    while True:
        try:
            text = read("prompt> ").strip()
        except (EOFError, KeyboardInterrupt):
            out.write("\n")
            return
        if not text or text in ("/quit", "/exit"):
            return
        item = PromptItem(text, {}, "interactive")
        answers = [answer_items(m, [item], [], max_new_tokens=max_new_tokens)[0][0] or "(empty)" for m in loaded]
        out.write(side_by_side(["prompt"] + labels, [[text] + answers]) + "\n")
