"""Synthetic tasks with verifiable answers, generated deterministically from a seed.

- addition: "37+48=?" answered "<answer>85</answer>" (seed 004's answer format).
- count_letters: "How many 'e' in 'tennessee'?" answered "\\boxed{4}" (seed 000's example).

Train, dev and test prompts are disjoint: held-out prompts are never seen in training.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

WORDS = (
    "tennessee mississippi constitution banana committee bookkeeper strawberry balloon coffee "
    "letter apple parallel address millennium occurrence successful necessary accommodate "
    "embarrass possession assessment referee vacuum giraffe hippopotamus pepper puppet "
    "tomorrow bubble cinnamon broccoli spaghetti kangaroo butterfly elephant alligator "
    "raccoon mosquito avocado papaya pineapple watermelon coconut lemonade marshmallow"
).split()


@dataclass(frozen=True)
class Task:
    name: str
    reward_names: tuple[str, ...]  # format reward, correctness reward (alignlab.rewards)

    def prompt(self, item: tuple) -> str:
        if self.name == "addition":
            return f"{item[0]}+{item[1]}=?"
        return f"How many '{item[1]}' in '{item[0]}'?"

    def answer(self, item: tuple) -> str:
        if self.name == "addition":
            return str(item[0] + item[1])
        return str(item[0].count(item[1]))

    def completion(self, answer: str) -> str:
        return f"<answer>{answer}</answer>" if self.name == "addition" else f"\\boxed{{{answer}}}"

    def all_items(self) -> list[tuple]:
        if self.name == "addition":
            return [(a, b) for a in range(10, 100) for b in range(10, 100)]
        items = []
        for word in WORDS:
            letters = sorted(set(word))
            items += [(word, letter) for letter in letters]
            items += [(word, letter) for letter in "aeiorst" if letter not in word][:2]
        return items


TASKS = {
    "addition": Task("addition", ("answer_format", "answer_correct")),
    "count_letters": Task("count_letters", ("boxed_format", "boxed_correct")),
}


def make_splits(task: Task, seed: int, *, test: int = 200, dev: int = 200) -> dict[str, list[dict]]:
    """{"train", "dev", "test"} lists of rows with prompt, completion and answer."""
    items = task.all_items()
    random.Random(seed).shuffle(items)
    test = min(test, len(items) // 5)
    dev = min(dev, len(items) // 5)
    parts = {"test": items[:test], "dev": items[test : test + dev], "train": items[test + dev :]}
    return {
        name: [{"prompt": task.prompt(i), "completion": task.completion(task.answer(i)), "answer": task.answer(i)} for i in part]
        for name, part in parts.items()
    }


def write_jsonl(rows: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def write_example_data(out_dir: Path, seed: int = 0) -> None:
    """The small files configs/*_tiny.yaml train on (shipped in alignlab/resources/configs/data/,
    which a checkout's data/ links to; regenerate with
    `python -c "from alignlab.commands.demo.tasks import write_example_data; write_example_data('data')"`)."""
    out_dir = Path(out_dir)
    task = TASKS["addition"]
    splits = make_splits(task, seed)
    rng = random.Random(seed)
    write_jsonl(splits["train"][:3000], out_dir / "addition_sft.jsonl")
    write_jsonl(splits["dev"], out_dir / "addition_dev.jsonl")
    write_jsonl([{"prompt": r["prompt"], "answer": r["answer"]} for r in splits["train"][:3000]], out_dir / "addition_prompts.jsonl")
    write_jsonl([{"prompt": r["prompt"], "answer": r["answer"]} for r in splits["test"]], out_dir / "addition_test_prompts.jsonl")

    def wrong(answer: str) -> str:
        return str(int(answer) + rng.choice([-11, -10, -2, -1, 1, 2, 10, 11]))

    pairs = [{"prompt": r["prompt"], "chosen": r["completion"], "rejected": task.completion(wrong(r["answer"]))}
             for r in splits["train"][:2000]]
    write_jsonl(pairs, out_dir / "addition_pairs.jsonl")
    write_jsonl([{"prompt": r["prompt"], "chosen": r["completion"], "rejected": task.completion(wrong(r["answer"]))}
                 for r in splits["test"]], out_dir / "addition_pairs_test.jsonl")
    letters = make_splits(TASKS["count_letters"], seed)
    write_jsonl(letters["train"] + letters["dev"], out_dir / "count_letters_train.jsonl")
    write_jsonl(letters["test"], out_dir / "count_letters_test.jsonl")
