"""`alignlab demo`: tiny model -> SFT -> DPO and GRPO -> one honest before/after table, offline.

Every stage runs through the same trainers and shipped configs a user runs (configs/demo_*.yaml), with
paths and step counts overridden here. Numbers are measured on held-out test prompts that no
stage trains on.
"""

from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path

from alignlab.engine.checkpoint import atomic_write_text
from alignlab.config import load_config
from alignlab.config.loading import shipped_dir
from alignlab.commands.demo.tasks import TASKS, make_splits, write_jsonl
from alignlab.model.tiny import write_tiny_model
from alignlab.errors import AlignlabError
from alignlab.engine.tracking import drop_log_file, keep_log_file, read_jsonl, setup_logging

log = logging.getLogger("alignlab")
CONFIG_DIR = shipped_dir()  # package data: an installed wheel has the demo's configs as a checkout does

# Full demo vs --fast (for tests): step budgets only; everything else comes from configs/demo_*.yaml.
SETTINGS = {
    "full": {"sft_threshold": 0.2, "sft_max_steps": 600, "dpo_steps": 150, "grpo_steps": 150, "dpo_prompts": 1000,
             "test_prompts": 200},
    "fast": {"sft_threshold": 0.04, "sft_max_steps": 150, "dpo_steps": 30, "grpo_steps": 30, "grpo_lr": 2e-4, "dpo_prompts": 300,
             "test_prompts": 100},
}


def _config(command: str, overrides: list[str]):
    return load_config(command, str(CONFIG_DIR / f"demo_{command}.yaml"), overrides)


def _stage_line(name: str, seconds: float, detail: str) -> None:
    line = f"[{name:>4}] {detail} ({seconds:.0f}s)"
    print(line, flush=True)
    setup_logging(None)  # the last stage's train.log is done; demo.log (kept) stays
    log.info(line, extra={"file_only": True})  # into demo.log, between the stages' own lines


class Demo:
    def __init__(self, out: str, task: str, seed: int, fast: bool):
        self.out, self.task, self.seed = Path(out), TASKS[task], seed
        self.settings = SETTINGS["fast" if fast else "full"]
        if (self.out / "summary.json").exists() or (self.out / "sft").exists():
            raise AlignlabError(f"{self.out} already holds a demo run; pass --out to a new directory")
        self.out.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.out / "data"
        self.common = [f"train.seed={seed}", "train.progress=true", "data.chat_template=true"]

    # ------------------------------------------------------------ stages

    def build(self) -> None:
        splits = make_splits(self.task, self.seed, test=self.settings["test_prompts"])
        for name, rows in splits.items():
            write_jsonl(rows, self.data_dir / f"{name}.jsonl")
        self.splits = splits
        write_tiny_model(self.out / "base_model", seed=self.seed)
        from alignlab.data.io import Row
        from alignlab.data.prompts import prompt_item
        from alignlab.model.loading import load_tokenizer

        self.tokenizer = load_tokenizer(str(self.out / "base_model"))
        self.test_items = [prompt_item(Row(r, "test", i)) for i, r in enumerate(splits["test"], 1)]
        self.dev_items = [prompt_item(Row(r, "dev", i)) for i, r in enumerate(splits["dev"], 1)]

    def _evaluator(self, items, **kwargs):
        from alignlab.data.templates import Templater
        from alignlab.generation.prompt_eval import evaluate_prompts
        from alignlab.rewards import get_reward

        templater = Templater(self.tokenizer)
        fns = [(n, get_reward(n)) for n in self.task.reward_names]
        return lambda model: evaluate_prompts(model, self.tokenizer, templater, items, fns, None, max_new_tokens=12, **kwargs)

    def sft(self) -> Path:
        threshold = self.settings["sft_threshold"]
        dev_eval = self._evaluator(self.dev_items)
        config = _config("sft", self.common + [
            f"model.name_or_path={self.out / 'base_model'}", f"data.train={self.data_dir / 'train.jsonl'}",
            f"data.eval={self.data_dir / 'dev.jsonl'}", f"train.output_dir={self.out / 'sft'}",
            f"train.max_steps={self.settings['sft_max_steps']}",
        ])
        from alignlab.trainers.sft import train_sft

        train_sft(config, extra_eval=lambda model: {"accuracy": dev_eval(model).metrics.get("accuracy", 0.0)},
                  stop_fn=lambda record: record.get("eval/accuracy", 0.0) >= threshold)
        return self.out / "sft" / "final"

    def dpo_pairs(self, sft_dir: Path) -> None:
        """chosen = gold, rejected = a wrong answer the SFT model itself sampled."""
        from transformers import AutoModelForCausalLM

        sft_model = AutoModelForCausalLM.from_pretrained(sft_dir).eval()
        train_rows = self.splits["train"][: self.settings["dpo_prompts"]]
        for name, rows in (("dpo_train", train_rows), ("dpo_test", self.splits["test"])):
            pairs = self._sample_pairs(sft_model, rows)
            write_jsonl(pairs, self.data_dir / f"{name}.jsonl")

    def _sample_pairs(self, model, rows, samples: int = 4) -> list[dict]:
        from alignlab.data.io import Row
        from alignlab.data.prompts import prompt_item

        items = [prompt_item(Row(r, "pairs", i)) for i, r in enumerate(rows, 1)]
        result = self._evaluator(items, greedy=False, num_samples=samples)(model)
        rng = random.Random(self.seed)
        pairs = []
        for i, row in enumerate(rows):
            group = result.samples[i * samples : (i + 1) * samples]
            wrong = [s["completion"] for s in group if s["reward"] < 3.0 - 1e-9 and s["completion"].strip()
                     and s["completion"].strip() != row["completion"]]
            if wrong:
                pairs.append({"prompt": row["prompt"], "chosen": row["completion"], "rejected": rng.choice(wrong)})
        if not pairs:
            raise AlignlabError("the SFT model answered every sampled prompt correctly: no DPO pairs to build")
        return pairs

    def dpo(self, sft_model) -> Path:
        from alignlab.trainers.dpo import train_dpo

        config = _config("dpo", self.common + [
            f"model.name_or_path={sft_model}", f"data.train={self.data_dir / 'dpo_train.jsonl'}",
            f"data.eval={self.data_dir / 'dpo_test.jsonl'}", f"train.output_dir={self.out / 'dpo'}",
            f"train.max_steps={self.settings['dpo_steps']}", f"dpo.ref_cache_dir={self.out / '.ref_cache'}",
        ])
        train_dpo(config)
        return self.out / "dpo" / "final"

    def grpo(self, sft_model) -> Path:
        from alignlab.trainers.grpo import train_grpo

        config = _config("grpo", self.common + [
            f"model.name_or_path={sft_model}", f"data.train={self.data_dir / 'train.jsonl'}",
            f"data.eval={self.data_dir / 'test.jsonl'}", f"train.output_dir={self.out / 'grpo'}",
            f"train.max_steps={self.settings['grpo_steps']}", f"grpo.rewards=[{','.join(self.task.reward_names)}]",
        ] + ([f"train.lr={self.settings['grpo_lr']}"] if "grpo_lr" in self.settings else []))
        train_grpo(config)
        return self.out / "grpo" / "final"


def run_demo(out: str = "runs/demo", task: str = "addition", seed: int = 0, fast: bool = False) -> dict:
    """Run every stage, measure, print the table, write summary.json; returns the summary."""
    start = time.perf_counter()
    demo = Demo(out, task, seed, fast)
    setup_logging(None)
    # Kept through every stage's run, each of which logs to its own train.log as well.
    demo_log = keep_log_file(demo.out / "demo.log")
    try:
        return _run_stages(demo, task, seed, fast, start)
    finally:
        drop_log_file(demo_log)


def _run_stages(demo: Demo, task: str, seed: int, fast: bool, start: float) -> dict:
    from alignlab.data.io import Row
    from alignlab.data.preference import normalize_preference_row
    from alignlab.data.preference_encode import encode_pairs
    from alignlab.data.templates import Templater
    from alignlab.commands.demo import summary as S

    timings, stages = {}, {}

    tick = time.perf_counter()
    demo.build()
    _stage_line("data", time.perf_counter() - tick, f"tiny model + {task} data: {len(demo.splits['train'])} train, "
                f"{len(demo.splits['dev'])} dev, {len(demo.splits['test'])} test prompts")
    tick = time.perf_counter()
    sft_model = demo.sft()
    timings["sft"] = time.perf_counter() - tick
    _stage_line("sft", timings["sft"], f"SFT stopped at step {_last_step(demo.out / 'sft')}")
    tick = time.perf_counter()
    demo.dpo_pairs(sft_model)
    pair_seconds = time.perf_counter() - tick
    _stage_line("pair", pair_seconds, "DPO pairs: gold vs the SFT model's own wrong samples")
    tick = time.perf_counter()
    dpo_model = demo.dpo(sft_model)
    timings["dpo"] = time.perf_counter() - tick + pair_seconds
    _stage_line("dpo", timings["dpo"], "DPO trained")
    tick = time.perf_counter()
    grpo_model = demo.grpo(sft_model)
    timings["grpo"] = time.perf_counter() - tick
    _stage_line("grpo", timings["grpo"], "GRPO trained")

    tick = time.perf_counter()
    rows = read_jsonl(demo.data_dir / "dpo_test.jsonl")
    examples = [normalize_preference_row(Row(r, "dpo_test.jsonl", i)) for i, r in enumerate(rows, 1)]
    pairs = encode_pairs(examples, Templater(demo.tokenizer), max_length=64, on_long="truncate")
    for name, model_dir in (("sft", sft_model), ("dpo", dpo_model), ("grpo", grpo_model)):
        stages[name] = S.measure(demo, model_dir, pairs)
        stages[name].update(steps=_last_step(demo.out / name), seconds=timings[name])
    # Each stage's own objective: SFT and DPO their training loss (first vs last steps); GRPO the
    # expected reward, measured on held-out prompts with several samples each (less noisy than
    # the reward of a few training batches).
    stages["sft"]["objective"] = S.objective(demo.out / "sft", "loss")
    stages["dpo"]["objective"] = S.objective(demo.out / "dpo", "loss")
    stages["grpo"]["objective"] = {"name": "sampled reward on held-out prompts",
                                   "first": stages["sft"]["sampled_reward"], "last": stages["grpo"]["sampled_reward"]}
    _stage_line("eval", time.perf_counter() - tick, "measured every stage on the held-out prompts")

    print()
    print(S.table(stages, len(demo.test_items), len(pairs)))
    print()
    print(S.side_by_side([i.prompt for i in demo.test_items], [i.columns["answer"] for i in demo.test_items], stages))
    print()
    notes = S.verdicts(stages, fast=fast)
    for line in notes:
        print(line)
    total = time.perf_counter() - start
    summary = {
        "task": task, "seed": seed, "fast": fast, "test_prompts": len(demo.test_items), "preference_pairs": len(pairs),
        "seconds": total, "notes": notes,
        "stages": {n: {k: v for k, v in s.items() if not k.startswith("_")} for n, s in stages.items()},
        "runs": {n: str(demo.out / n) for n in stages},
    }
    atomic_write_text(demo.out / "summary.json", json.dumps(summary, indent=2) + "\n")
    from alignlab.commands.report import write_report

    report = write_report([demo.out / name for name in stages], demo.out / "report.html")
    print(f"\nTotal {total:.0f}s. Summary: {demo.out / 'summary.json'}; runs: {demo.out}/{{sft,dpo,grpo}}")
    print(f"Report (every metric plotted, GRPO samples, configs): {report}")
    return summary


def _last_step(run_dir: Path) -> int:
    steps = [r.get("step", 0) for r in read_jsonl(run_dir / "metrics.jsonl")]
    return max(steps) if steps else 0
