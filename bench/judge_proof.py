"""Learning proof for the LLM judge (issue 30): GRPO whose ONLY reward is a tiny judge taught by SFT to grade the
demo's addition answers, served by vLLM's OpenAI-compatible server, against the SFT policy it starts from.

    python bench/judge_proof.py --out runs/judge_proof --seeds 0 1 2 --grpo-steps 150

Stages (one directory each under --out; a stage whose output exists is reused):
1. policy: the demo's SFT model (`alignlab demo`'s first stage, stopped at 20% dev accuracy).
2. judge data: for each training prompt, responses labelled by the gold check (answer_correct): the gold answer, near
   misses (+-1, +-10, a digit swapped), a malformed one, and what the SFT policy samples; balanced 1/0. Each row is
   the judge's rubric filled in (bench/judge_proof_rubric.txt, the file the run's judge.rubric names) -> "1" or "0".
3. judge: a fresh tiny model (another seed) SFT-trained on those rows.
4. serve the judge (python -m vllm.entrypoints.openai.api_server, the CPU build), measure its agreement with the gold
   check on held-out prompts' policy samples (through the server, constrained to "0"/"1").
5. GRPO per seed from the SFT policy, grpo.rewards=[judge], 32 prompts x 8 per step (the demo's settings);
   greedy accuracy on the 200 held-out test prompts by the gold check before and after.
Writes --out/results.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

RUBRIC = Path(__file__).with_name("judge_proof_rubric.txt")


def labelled_rows(splits_train, policy_samples, seed: int) -> list[dict]:
    """(response, label) rows for the judge's SFT, balanced between correct (1) and wrong (0)."""
    rubric = RUBRIC.read_text()
    rng = random.Random(seed)
    rows = []
    for row, samples in zip(splits_train, policy_samples):
        gold = int(row["answer"])
        wrong = {gold + d for d in (1, -1, 10, -10)} | {int(str(gold)[::-1])} - {gold}
        candidates = [(f"<answer>{gold}</answer>", 1), (f"<answer>{rng.choice(sorted(wrong))}</answer>", 0),
                      (str(gold), 0) if rng.random() < 0.2 else (f"<answer>{rng.randint(20, 198)}</answer>", 0)]
        candidates += [(text, int(text.strip() == f"<answer>{gold}</answer>")) for text in samples[:2]]
        ones = [c for c in candidates if c[1]]
        zeros = [c for c in candidates if not c[1]]
        for text, label in ones + zeros[: max(len(ones), 1) + 1]:
            prompt = rubric.format(prompt=row["prompt"], completion=text, answer=row["answer"], min_score=0, max_score=1)
            rows.append({"prompt": prompt, "completion": str(label)})
    rng.shuffle(rows)
    return rows


def sample_policy(model_dir: Path, rows: list[dict], k: int, seed: int) -> list[list[str]]:
    import torch
    from transformers import AutoModelForCausalLM

    from alignlab.data.io import Row
    from alignlab.data.prompts import prompt_item
    from alignlab.data.templates import Templater
    from alignlab.generation.prompt_eval import evaluate_prompts
    from alignlab.model.loading import load_tokenizer

    tokenizer = load_tokenizer(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    items = [prompt_item(Row(r, "x", i)) for i, r in enumerate(rows, 1)]
    torch.manual_seed(seed)
    result = evaluate_prompts(model, tokenizer, Templater(tokenizer), items, [], None, greedy=False, num_samples=k,
                              max_new_tokens=12, batch_size=512)
    texts = [s["completion"] for s in result.samples]
    return [texts[i * k:(i + 1) * k] for i in range(len(rows))]


def greedy_accuracy(model_dir: Path, rows: list[dict]) -> float:
    from transformers import AutoModelForCausalLM

    from alignlab.data.io import Row
    from alignlab.data.prompts import prompt_item
    from alignlab.data.templates import Templater
    from alignlab.generation.prompt_eval import evaluate_prompts
    from alignlab.model.loading import load_tokenizer
    from alignlab.rewards import get_reward

    tokenizer = load_tokenizer(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    items = [prompt_item(Row(r, "test", i)) for i, r in enumerate(rows, 1)]
    fns = [(n, get_reward(n)) for n in ("answer_format", "answer_correct")]
    return evaluate_prompts(model, tokenizer, Templater(tokenizer), items, fns, None, max_new_tokens=12,
                            batch_size=512).metrics["accuracy"]


def start_server(model_dir: Path, port: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir), "--host",
               "127.0.0.1", "--port", str(port), "--served-model-name", "judge", "--dtype", "float32",
               "--max-model-len", "256"]
    proc = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
    tick = time.time()
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            print(f"judge server up after {time.time() - tick:.0f} s", flush=True)
            return proc
        except OSError:
            if proc.poll() is not None or time.time() - tick > 900:
                raise SystemExit(f"the judge server did not start; see {log}")
            time.sleep(3)


def judge_settings(port: int, cache_dir: Path):
    from alignlab.config.sections import JudgeConfig

    return JudgeConfig(base_url=f"http://127.0.0.1:{port}/v1", model="judge", rubric=str(RUBRIC), scale=[0, 1],
                       max_tokens=2, max_concurrency=64, cache_dir=str(cache_dir))


def agreement(port: int, cache_dir: Path, rows: list[dict], samples: list[list[str]]) -> dict:
    """The judge's verdicts vs the gold check on the policy's samples of held-out prompts."""
    from alignlab.scoring.judge import JudgeClient

    prompts = [r["prompt"] for r, group in zip(rows, samples) for _ in group]
    answers = [r["answer"] for r, group in zip(rows, samples) for _ in group]
    texts = [t for group in samples for t in group]
    gold = [int(t.strip() == f"<answer>{a}</answer>") for t, a in zip(texts, answers)]
    scores = JudgeClient(judge_settings(port, cache_dir)).score(prompts, texts, answers)
    judged = [(s, g) for s, g in zip(scores, gold) if s is not None]
    positives = [s for s, g in judged if g == 1]
    negatives = [s for s, g in judged if g == 0]
    return {"responses": len(texts), "judged": len(judged), "agreement": sum((s >= 0.5) == g for s, g in judged) / len(judged),
            "true_positive_rate": sum(s >= 0.5 for s in positives) / max(len(positives), 1),
            "true_negative_rate": sum(s < 0.5 for s in negatives) / max(len(negatives), 1),
            "gold_correct_share": sum(gold) / len(gold)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="runs/judge_proof")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--grpo-steps", type=int, default=150)
    parser.add_argument("--judge-steps", type=int, default=600)
    parser.add_argument("--judge-prompts", type=int, default=3000)
    parser.add_argument("--port", type=int, default=8123)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}

    def save():
        results_path.write_text(json.dumps(results, indent=2) + "\n")

    from alignlab.cli import main as cli
    from alignlab.commands.demo.pipeline import Demo
    from alignlab.commands.demo.tasks import write_jsonl
    from alignlab.model.tiny import write_tiny_model

    demo_dir = out / "policy"
    tick = time.time()
    if not (demo_dir / "sft" / "final").is_dir():
        demo = Demo(str(demo_dir), "addition", 0, fast=False)
        demo.build()
        demo.sft()
        results["policy_sft_seconds"] = round(time.time() - tick)
    policy = demo_dir / "sft" / "final"
    data = demo_dir / "data"
    test = [json.loads(l) for l in (data / "test.jsonl").read_text().splitlines()]
    dev = [json.loads(l) for l in (data / "dev.jsonl").read_text().splitlines()]
    train = [json.loads(l) for l in (data / "train.jsonl").read_text().splitlines()]
    if "sft_test_accuracy" not in results:
        results["sft_test_accuracy"] = greedy_accuracy(policy, test)
        save()
    print(f"SFT policy greedy test accuracy {results['sft_test_accuracy']:.3f}", flush=True)

    judge_dir = out / "judge"
    if not (judge_dir / "final").is_dir():
        tick = time.time()
        rows = train[: args.judge_prompts]
        write_jsonl(labelled_rows(rows, sample_policy(policy, rows, 2, seed=1), seed=0), out / "judge_train.jsonl")
        write_tiny_model(out / "judge_base", seed=1)
        code = cli(["sft", f"model.name_or_path={out / 'judge_base'}", f"data.train={out / 'judge_train.jsonl'}",
                    f"train.output_dir={judge_dir}", f"train.max_steps={args.judge_steps}", "train.batch_size=64",
                    "train.lr=2e-3", "train.max_length=128", "train.progress=false"])
        assert code == 0
        results["judge_sft_seconds"] = round(time.time() - tick)
        save()

    server = start_server(judge_dir / "final", args.port, out / "server.log")
    try:
        cache = out / "judge_cache"
        held_out = dev[:100]
        results["judge_agreement"] = agreement(args.port, cache, held_out, sample_policy(policy, held_out, 4, seed=2))
        save()
        print("judge vs gold check on held-out policy samples:", results["judge_agreement"], flush=True)
        for seed in args.seeds:
            key = f"grpo_seed{seed}"
            if key in results:
                continue
            tick = time.time()
            run = out / f"grpo_seed{seed}"
            code = cli(["grpo", "-c", "demo_grpo", f"model.name_or_path={policy}", f"data.train={data / 'train.jsonl'}",
                        "data.eval=null", f"train.output_dir={run}", f"train.max_steps={args.grpo_steps}",
                        f"train.seed={seed}", "train.progress=false", "train.eval_every=0", "grpo.rewards=[judge]",
                        f"judge.base_url=http://127.0.0.1:{args.port}/v1", "judge.model=judge",
                        f"judge.rubric={RUBRIC}", "judge.scale=[0,1]", "judge.max_tokens=2",
                        "judge.max_concurrency=64", f"judge.cache_dir={cache}"])
            assert code == 0
            results[key] = {"test_accuracy": greedy_accuracy(run / "final", test), "seconds": round(time.time() - tick),
                            "steps": args.grpo_steps}
            save()
            print(key, results[key], flush=True)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
