"""`alignlab iterate -c CONFIG --rounds N`: iterative (online) DPO, as in Xiong et al. 2024 ("Iterative
Preference Learning from Human Feedback") and Self-Rewarding LMs (Yuan et al. 2024), with verifiable rewards.

Each round r = 1..N:
1. sample `iterate.samples_per_prompt` (K) responses per prompt from the current policy (temperature
   `iterate.temperature`; a fresh random subset of `iterate.prompts_per_round` prompts, or all);
2. score them with `iterate.rewards`, the registry GRPO uses (weighted sum; a failing row scores None
   and is left out);
3. build pairs with `alignlab pairs`' logic (`iterate.strategy`, `iterate.min_margin`; equal scores
   are never paired), written to `<out>/data/round_<r>_pairs.jsonl`;
4. train DPO from the current policy, which is also the reference (the usual online choice: each
   round's KL anchor is the previous round's model), in the run directory `<out>/round_<r>/`;
5. evaluate the new policy on `iterate.eval_prompts` (greedy accuracy / format / reward, and the mean
   reward of `iterate.eval_samples` samples per prompt).

`train.resume=true` (or `train.resume=<out dir>`) continues a stopped run: finished rounds are read
from summary.json, a round whose pairs were written reuses them (no new sampling), and a round whose
DPO run was cut off resumes from that run's latest checkpoint. `--rounds` may be raised to add rounds.

The base policy is evaluated first as round 0. `<out>/summary.json` and `summary.csv` hold one row per
round (pairs built and dropped, the sampled reward the round started from, DPO's final loss and
accuracy, the eval metrics) and are rewritten after each round. A round whose samples give no pair
(every response scored the same) stops the loop with that reason. The other sections (model, data,
train, lora, dpo) are a DPO config; `data.train` is set per round, `data.eval` (pairs) is kept if given.
"""

from __future__ import annotations

import copy
import csv
import datetime
import io
import json
import logging
import math
import random
from pathlib import Path
from typing import Optional

import torch

from alignlab.engine.checkpoint import atomic_write_text
from alignlab.config import DPORunConfig, load_config, to_yaml
from alignlab.data.prompts import load_prompt_items
from alignlab.data.ranked_pairs import PairStats, rank_pairs
from alignlab.errors import AlignlabError, ConfigError
from alignlab.engine.tracking import read_jsonl, setup_logging
from alignlab.engine.run_dir import resume_requested, resume_target

log = logging.getLogger("alignlab")


def iterate_command(config_path: Optional[str], overrides: list[str], *, rounds: Optional[int] = None) -> list[dict]:
    extra = [f"iterate.rounds={rounds}"] if rounds is not None else []
    return run_iterate(load_config("iterate", config_path, list(overrides) + extra))


def _resuming(config) -> bool:
    return resume_requested(config.train.resume)


def _out_dir(config) -> Path:
    target = resume_target(config)
    if target is not None:
        return target
    out = Path(config.train.output_dir) if config.train.output_dir else \
        Path("runs") / f"iterate_{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    if (out / "summary.json").exists() or (out / "round_1").exists():
        raise AlignlabError(f"{out} already holds an iterate run. Continue it with train.resume=true, or choose "
                            "another train.output_dir.")
    return out


class Rounds:
    """The state between rounds: the current policy, the prompts, the rewards and the summary rows."""

    def __init__(self, config):
        from alignlab.scoring.rewards import resolve_rewards

        it, data = config.iterate, config.data
        if not it.prompts:
            raise ConfigError("iterate.prompts is not set: give a prompt file (prompt + reward columns, e.g. answer)")
        self.config, self.it = config, it
        self.reward_fns = resolve_rewards(it.rewards, config.rm, judge=config.judge,  # rm:PATH, judge: before any work
                                          group_size=it.samples_per_prompt)
        self.out = _out_dir(config)
        self.out.mkdir(parents=True, exist_ok=True)
        options = dict(columns=data.columns, skip_bad_rows=data.skip_bad_rows)
        self.prompts, _ = load_prompt_items(it.prompts, split=data.split, max_rows=data.max_rows, **options)
        self.eval_items = None
        if it.eval_prompts:
            items, _ = load_prompt_items(it.eval_prompts, split=data.eval_split or "test", **options)
            self.eval_items = items[: it.eval_max_prompts]
        self.policy = config.model.name_or_path
        self.rows: list[dict] = []
        self.engine = None  # iterate.backend=vllm: one engine for every round, given each round's weights

    def load_policy(self):
        from alignlab.model.inference import load_for_inference
        from alignlab.generation.vllm import engine_for_model, engine_or_none

        data = self.config.data
        loaded = load_for_inference(self.policy, dtype=self.config.model.dtype, use_chat_template=data.chat_template,
                                    system_prompt=data.system_prompt,
                                    trust_remote_code=self.config.model.trust_remote_code)
        if self.engine is None:
            self.engine = engine_or_none(self.it.backend, lambda: engine_for_model(
                self.policy, loaded.model, loaded.tokenizer, seed=self.config.train.seed,
                max_model_len=self.config.train.max_length + self.it.max_new_tokens))
        elif self.engine is not None:
            self.engine.load_weights(loaded.model)
        return loaded

    def evaluate(self, loaded, seed: int) -> dict:
        """Task metrics of the loaded policy on the eval prompts: greedy, and sampled mean reward."""
        from alignlab.generation.prompt_eval import evaluate_prompts

        if not self.eval_items:
            return {}
        it = self.it
        common = dict(max_new_tokens=it.max_new_tokens)
        common["engine"] = self.engine
        greedy = evaluate_prompts(loaded.model, loaded.tokenizer, loaded.templater, self.eval_items, self.reward_fns,
                                  it.reward_weights, greedy=True, **common).metrics
        metrics = {f"eval/{k}": v for k, v in greedy.items() if k != "prompts"}
        if it.eval_samples:
            torch.manual_seed(seed)
            sampled = evaluate_prompts(loaded.model, loaded.tokenizer, loaded.templater, self.eval_items,
                                       self.reward_fns, it.reward_weights, greedy=False, num_samples=it.eval_samples,
                                       temperature=it.temperature, **common).metrics
            metrics["eval/sampled_reward"] = sampled["reward"]
            if "accuracy" in sampled:
                metrics["eval/sampled_accuracy"] = sampled["accuracy"]
        return metrics

    def pairs_paths(self, round_index: int) -> tuple[Path, Path]:
        data = self.out / "data"
        return data / f"round_{round_index}_pairs.jsonl", data / f"round_{round_index}_stats.json"

    def saved_pairs(self, round_index: int) -> Optional[tuple[Path, dict, float]]:
        """A resumed round's pairs as written before (the stats file is written last, so it marks them complete)."""
        path, stats_path = self.pairs_paths(round_index)
        if not (path.is_file() and stats_path.is_file()):
            return None
        saved = json.loads(stats_path.read_text())
        log.info("round %d: reusing %d pairs from %s", round_index, saved["pairs"], path)
        return path, saved, saved["sampled_reward"]

    def sample_pairs(self, loaded, round_index: int) -> tuple[Path, dict, float]:
        """Sample K per prompt, score, pair; (pairs file, pair counts, mean sampled reward)."""
        from alignlab.generation.prompt_eval import evaluate_prompts

        it, seed = self.it, self.config.train.seed
        items = self.prompts
        if it.prompts_per_round and it.prompts_per_round < len(items):
            items = random.Random(seed * 1_000 + round_index).sample(items, it.prompts_per_round)
        torch.manual_seed(seed * 1_000 + round_index)
        k = it.samples_per_prompt
        result = evaluate_prompts(loaded.model, loaded.tokenizer, loaded.templater, items, self.reward_fns,
                                  it.reward_weights, greedy=False, num_samples=k, temperature=it.temperature,
                                  max_new_tokens=it.max_new_tokens, engine=self.engine)
        pairs, stats = [], PairStats()
        for i, item in enumerate(items):
            group = result.samples[i * k : (i + 1) * k]
            # An empty completion cannot be a DPO response (no tokens); it is left out like an unscored one.
            texts = [s["completion"] for s in group]
            # A completion no reward could score (NaN: e.g. a judge's unreadable reply) is left out too, not paired.
            scores = [s["reward"] if s["completion"].strip() and not math.isnan(s["reward"]) else None for s in group]
            chosen_rejected, one = rank_pairs(texts, scores, strategy=it.strategy, min_margin=it.min_margin)
            stats.add(one)
            pairs += [{"prompt": item.prompt, "chosen": texts[a], "rejected": texts[b],
                       "score_chosen": scores[a], "score_rejected": scores[b]} for a, b in chosen_rejected]
        path, stats_path = self.pairs_paths(round_index)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs))
        counts = {"prompts": stats.prompts, "pairs": stats.pairs, "dropped": dict(stats.dropped),
                  "report": stats.report(), "sampled_reward": result.metrics["reward"]}
        atomic_write_text(stats_path, json.dumps(counts, indent=2))
        log.info("round %d pairs: %s", round_index, stats.report().replace("\n", "; "))
        return path, counts, result.metrics["reward"]

    def dpo_config(self, pairs_file: Path, round_index: int) -> DPORunConfig:
        c = self.config
        dpo = DPORunConfig(model=copy.deepcopy(c.model), data=copy.deepcopy(c.data), train=copy.deepcopy(c.train),
                           lora=copy.deepcopy(c.lora), dpo=copy.deepcopy(c.dpo))
        dpo.model.name_or_path = self.policy
        dpo.data.train = str(pairs_file)
        dpo.train.output_dir = str(self.out / f"round_{round_index}")
        # A round's run directory exists only if an earlier attempt at this round was cut off: continue it.
        dpo.train.resume = "auto"
        if not dpo.dpo.ref_cache_dir:
            dpo.dpo.ref_cache_dir = str(self.out / ".ref_cache")
        return dpo

    def record(self, row: dict) -> None:
        self.rows.append(row)
        write_summary(self.out, self.rows)
        setup_logging(self.out / "iterate.log")


def run_iterate(config) -> list[dict]:
    from alignlab.trainers.dpo import train_dpo

    state = Rounds(config)
    setup_logging(state.out / "iterate.log")
    atomic_write_text(state.out / "config.yaml", "# alignlab iterate\n" + to_yaml(config))
    seed = config.train.seed
    if _resuming(config) and (state.out / "summary.json").is_file():
        state.rows = json.loads((state.out / "summary.json").read_text())["rounds"]
        last = state.rows[-1]
        if last["round"] > 0 and last.get("status") != "ok":
            print(f"iterate: {state.out} stopped at round {last['round']} ({last.get('status')}); nothing to resume",
                  flush=True)
            return state.rows
        state.policy = last["policy"]
        log.info("resuming %s after round %d (policy %s)", state.out, last["round"], state.policy)
        loaded = state.load_policy()
    else:
        loaded = state.load_policy()
        state.record({"round": 0, "policy": state.policy, **state.evaluate(loaded, seed)})
        print(_line(state.rows[-1]), flush=True)
    for r in range(state.rows[-1]["round"] + 1, config.iterate.rounds + 1):
        saved = state.saved_pairs(r) if _resuming(config) else None
        pairs_file, counts, sampled_reward = saved or state.sample_pairs(loaded, r)
        row = {"round": r, "sampled_reward": sampled_reward, "prompts": counts["prompts"], "pairs": counts["pairs"],
               "dropped": sum(counts["dropped"].values()), "dropped_reasons": counts["dropped"]}
        if not counts["pairs"]:
            state.record({**row, "status": "stopped: no pairs (every prompt's responses scored the same)"})
            print(f"round {r}: no pairs; stopping\n{counts['report']}", flush=True)
            break
        del loaded  # free the sampling copy before training
        dpo_config = state.dpo_config(pairs_file, r)
        train_dpo(dpo_config)
        run_dir = Path(dpo_config.train.output_dir)
        state.policy = str(run_dir / "final")
        train_records = [x for x in read_jsonl(run_dir / "metrics.jsonl") if "loss" in x]
        last = train_records[-1] if train_records else {}
        loaded = state.load_policy()
        row.update({"policy": state.policy, "run_dir": str(run_dir), "status": "ok",
                    "dpo/loss": last.get("loss"), "dpo/rewards/accuracies": last.get("rewards/accuracies"),
                    **state.evaluate(loaded, seed + r)})
        state.record(row)
        print(_line(row), flush=True)
    print(f"iterate: {len(state.rows) - 1} rounds in {state.out}; summary: {state.out / 'summary.csv'}", flush=True)
    return state.rows


def _line(row: dict) -> str:
    keys = ("sampled_reward", "pairs", "dropped", "dpo/loss", "eval/reward", "eval/accuracy", "eval/sampled_reward")
    parts = [f"{k}={row[k]:.4g}" if isinstance(row[k], float) else f"{k}={row[k]}" for k in keys
             if row.get(k) is not None]
    return f"round {row['round']}: " + " ".join(parts)


def write_summary(out: Path, rows: list[dict]) -> None:
    atomic_write_text(out / "summary.json", json.dumps({"rounds": rows}, indent=2) + "\n")
    keys = []
    for row in rows:
        keys += [k for k in row if k not in keys and k != "dropped_reasons"]
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=keys, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "summary.csv", table.getvalue())
