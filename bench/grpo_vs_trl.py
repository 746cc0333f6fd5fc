"""GRPO: alignlab vs TRL 1.16 on identical work: time per step (generation / training), peak memory,
completions per second.

Starting point: the tiny model (alignlab's offline Qwen2-architecture model, default size) after a
quick SFT on the addition task with `alignlab.trainers.sft.train_sft` (150 steps by default), so
sampled completions stop at EOS as they would in a real run instead of always running to the
length limit. The SFT model is saved once in the work directory and reused by both sides.

Same for both sides: prompts from the addition task ("37+48=?", rendered by the chat template),
G=8 completions per prompt, 16 or 32 prompts per optimizer step (one micro-batch: TRL's
per_device_train_batch_size = prompts x 8 completions), max completion length 16, temperature 1,
top_p 1, top_k off, rewards answer_format + answer_correct (TRL gets alignlab's own reward
functions wrapped as TRL reward functions), group-scaled advantages, loss "dapo", epsilon 0.2,
beta=0 (no reference model), num_iterations=1, lr 1e-4, constant schedule, seed.

Timing: ours from metrics.jsonl (step_seconds, time/generation, time/training); TRL: the whole
step from a TrainerCallback (on_step_begin..on_step_end) and its generation part from a timing
wrapper around GRPOTrainer._generate_and_score_completions (sampling + decoding + rewards +
advantages, the same work as alignlab's time/generation); training = step - generation. TRL's own
logged `step_time` is read too. Each run is a subprocess of its own (peak RSS); rounds rotate the
order; ratios are taken within a round, then the median over rounds.

Run from the repository root:  python bench/grpo_vs_trl.py [--rounds 3] [--steps 12] [--prompts 16 32]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

SCRIPT = Path(__file__).resolve()
SIDES = ["ours", "trl"]


# ================================================================ workers (subprocesses)


def worker_prepare(spec: dict) -> dict:
    """Tiny model -> quick SFT with alignlab (cached), plus the prompt files for both sides."""
    from alignlab.config import load_config
    from alignlab.commands.demo.tasks import TASKS, make_splits, write_jsonl
    from alignlab.model.tiny import write_tiny_model
    from alignlab.engine.tracking import read_jsonl
    from alignlab.trainers.sft import train_sft

    work = Path(spec["workdir"])
    tiny = work / "tiny"
    if not (tiny / "config.json").is_file():
        write_tiny_model(tiny)
    splits = make_splits(TASKS["addition"], spec["seed"])
    write_jsonl(splits["train"], work / "sft_train.jsonl")
    prompts = [{"prompt": r["prompt"], "answer": r["answer"]} for r in splits["train"][: spec["num_prompts"]]]
    write_jsonl(prompts, work / "prompts.jsonl")
    sft_run = work / f"sft_{spec['sft_steps']}steps"
    sft_seconds = None
    if not (sft_run / "final" / "config.json").is_file():
        import shutil

        shutil.rmtree(sft_run, ignore_errors=True)
        config = load_config("sft", None, [
            f"model.name_or_path={tiny}", f"data.train={work / 'sft_train.jsonl'}", f"train.output_dir={sft_run}",
            f"train.max_steps={spec['sft_steps']}", "train.batch_size=128", "train.lr=2e-3", f"train.seed={spec['seed']}",
            "train.progress=false",
        ])
        start = time.perf_counter()
        train_sft(config)
        sft_seconds = time.perf_counter() - start
    records = [r for r in read_jsonl(sft_run / "metrics.jsonl") if "loss" in r and "step_seconds" in r]
    return {
        "sft_model": str(sft_run / "final"),
        "sft_seconds": sft_seconds,
        "sft_final_loss": records[-1]["loss"] if records else None,
        "num_prompts": len(prompts),
    }


def answer_format_reward(completions, **kwargs):
    from alignlab.rewards.builtin import answer_format

    return answer_format(completions)


def answer_correct_reward(completions, answer, **kwargs):
    from alignlab.rewards.builtin import answer_correct

    return answer_correct(completions, answer=answer)


def worker_ours(spec: dict) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    base = common.rss_mib()  # torch + transformers + model: the same base in both workers
    del model
    from alignlab.config import load_config
    from alignlab.engine.tracking import read_jsonl
    from alignlab.trainers.grpo import train_grpo

    run_dir = Path(spec["run_dir"])
    config = load_config("grpo", None, [
        f"model.name_or_path={spec['model']}",
        f"data.train={Path(spec['workdir']) / 'prompts.jsonl'}",
        f"train.output_dir={run_dir}",
        f"train.max_steps={spec['steps']}",
        f"train.batch_size={spec['prompts']}",
        f"train.lr={spec['lr']}",
        f"train.seed={spec['seed']}",
        "train.lr_scheduler=constant",
        "train.progress=false",
        f"grpo.num_generations={spec['G']}",
        f"grpo.max_completion_length={spec['max_completion']}",
        "grpo.beta=0.0",
        "grpo.num_iterations=1",
        "grpo.loss_type=dapo",
        "grpo.scale_rewards=group",
        "grpo.temperature=1.0",
        "grpo.rewards=[answer_format,answer_correct]",
    ])
    start = time.perf_counter()
    train_grpo(config)
    total = time.perf_counter() - start
    peak = common.peak_rss_mib()
    records = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "step_seconds" in r]
    return {
        "torch_threads": torch.get_num_threads(),
        "baseline_rss_mib": base,
        **peak,
        "total_s": total,
        "step_s": [r["step_seconds"] for r in records],
        "generation_s": [r["time/generation"] for r in records],
        "training_s": [r["time/training"] for r in records],
        "mean_length": [r["completions/mean_length"] for r in records],
        "clipped_ratio": [r["completions/clipped_ratio"] for r in records],
        "reward": [r["reward"] for r in records],
    }


def worker_trl(spec: dict) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    base = common.rss_mib()
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.begin, self.end = [], []

        def on_step_begin(self, args, state, control, **kwargs):
            self.begin.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            self.end.append(time.perf_counter())

    class TimedGRPOTrainer(GRPOTrainer):
        """GRPOTrainer unchanged, plus a clock around rollout + rewards (measurement only)."""

        generation_times: list = []

        def _generate_and_score_completions(self, inputs):
            start = time.perf_counter()
            out = super()._generate_and_score_completions(inputs)
            self.generation_times.append(time.perf_counter() - start)
            return out

    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    rows = [json.loads(line) for line in (Path(spec["workdir"]) / "prompts.jsonl").read_text().splitlines()]
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}], "answer": r["answer"]} for r in rows])
    G = spec["G"]
    args = GRPOConfig(
        output_dir=spec["run_dir"],
        per_device_train_batch_size=spec["prompts"] * G,  # counts completions
        gradient_accumulation_steps=1,
        num_generations=G,
        max_completion_length=spec["max_completion"],
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        beta=0.0,
        num_iterations=1,
        loss_type="dapo",
        scale_rewards="group",
        epsilon=0.2,
        learning_rate=spec["lr"],
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        max_steps=spec["steps"],
        seed=spec["seed"],
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        report_to="none",
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
    )
    timer = StepTimer()
    trainer = TimedGRPOTrainer(
        model=model,
        reward_funcs=[answer_format_reward, answer_correct_reward],
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[timer],
    )
    trainer.train()
    trainer.save_model(str(Path(spec["run_dir"]) / "final"))  # alignlab always saves a final model: same here
    total = time.perf_counter() - start
    peak = common.peak_rss_mib()
    logs = [h for h in trainer.state.log_history if "reward" in h]
    steps = [e - b for b, e in zip(timer.begin, timer.end)]
    generation = trainer.generation_times
    return {
        "torch_threads": torch.get_num_threads(),
        "baseline_rss_mib": base,
        **peak,
        "total_s": total,
        "step_s": steps,
        "generation_s": generation,
        "training_s": [s - g for s, g in zip(steps, generation)],
        "trl_step_time": [h.get("step_time") for h in logs],
        "mean_length": [h.get("completions/mean_length") for h in logs],
        "clipped_ratio": [h.get("completions/clipped_ratio") for h in logs],
        "reward": [h.get("reward") for h in logs],
    }


def run_worker_role(role: str, spec: dict) -> None:
    result = {"prepare": worker_prepare, "ours": worker_ours, "trl": worker_trl}[role](spec)
    common.write_result(spec, result)


# ================================================================ orchestration (stdlib only)


def summarise(run: dict, skip: int, completions: int) -> dict:
    step = common.median(common.steady(run["step_s"], skip))
    return {
        "step": step,
        "generation": common.median(common.steady(run["generation_s"], skip)),
        "training": common.median(common.steady(run["training_s"], skip)),
        "throughput": completions / step,
        "length": common.median(run["mean_length"]),
        "clipped": common.median(run["clipped_ratio"]),
        "reward": common.median(run["reward"]),
        "peak": run["vmhwm_mib"],
        "ru_maxrss": run["ru_maxrss_mib"],
        "baseline": run["baseline_rss_mib"],
        "total": run["total_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--prompts", type=int, nargs="+", default=[16, 32], help="prompts per optimizer step")
    parser.add_argument("--generations", type=int, default=8)
    parser.add_argument("--max-completion", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--sft-steps", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip", type=int, default=2, help="warm-up steps left out of the medians")
    common.add_run_args(parser, "grpo", threads=1)
    args = parser.parse_args()

    work, src = common.start(args, "GRPO: alignlab vs TRL")
    spec = {"workdir": str(work), "seed": args.seed, "sft_steps": args.sft_steps, "num_prompts": 2048, "threads": args.threads,
            "alignlab_src": str(src)}
    info = common.run_worker(SCRIPT, "prepare", spec, work, "prepare", timeout=1800)
    sft = f"SFT {args.sft_steps} steps " + (f"in {info['sft_seconds']:.0f} s" if info["sft_seconds"] else "(reused from the work dir)")
    print(f"start model: {info['sft_model']} ({sft}, final SFT loss {info['sft_final_loss']:.3f})")
    print(f"{info['num_prompts']} prompts; G={args.generations}, max completion {args.max_completion} tokens, "
          f"{args.steps} steps (first {args.skip} skipped), lr {args.lr}, beta 0, num_iterations 1, seed {args.seed}, "
          f"torch threads per worker {args.threads or 'default'}")

    spec.update(model=info["sft_model"], steps=args.steps, G=args.generations, max_completion=args.max_completion, lr=args.lr)
    runs = {(p, side): [] for p in args.prompts for side in SIDES}
    stamp = time.strftime("%H%M%S")
    for r in range(args.rounds):
        for p in args.prompts:
            for side in common.rotations(SIDES, args.rounds)[r]:
                tag = f"r{r}-p{p}-{side}-{stamp}"
                result = common.run_worker(SCRIPT, side, {**spec, "prompts": p, "run_dir": str(work / "runs" / tag)}, work, tag)
                s = summarise(result, args.skip, p * args.generations)
                runs[(p, side)].append({**result, "summary": s})
                print(f"round {r + 1}/{args.rounds} {p:2d} prompts {side:4s}: step {s['step']:.3f} s "
                      f"(generation {s['generation']:.3f} + training {s['training']:.3f})  "
                      f"{s['throughput']:6.1f} completions/s  mean length {s['length']:.1f}  peak RSS {s['peak']:.0f} MiB  "
                      f"[threads {result['torch_threads']}, load {common.load_average():.1f}]", flush=True)

    def med(key, p, side):
        return common.median([run["summary"][key] for run in runs[(p, side)]])

    def ratio(key, p):  # TRL / ours within each round, median over rounds
        return common.median([t["summary"][key] / o["summary"][key] for t, o in zip(runs[(p, "trl")], runs[(p, "ours")])])

    print()
    print(f"## Time per optimizer step, seconds (median of steps {args.skip + 1}..{args.steps}, then median of {args.rounds} rounds)")
    rows = []
    for p in args.prompts:
        for side in SIDES:
            rows.append([
                f"{p} x {args.generations}", "alignlab" if side == "ours" else "TRL",
                med("step", p, side), med("generation", p, side), med("training", p, side), med("throughput", p, side),
                "" if side == "ours" else f"{ratio('step', p):.2f}",
                "" if side == "ours" else f"{ratio('generation', p):.2f}",
                "" if side == "ours" else f"{ratio('training', p):.2f}",
                "" if side == "ours" else f"{1 / ratio('step', p):.2f}",
            ])
    print(common.table(
        ["prompts x G", "trainer", "step s", "generation s", "training s", "completions/s",
         "step TRL/ours", "gen TRL/ours", "train TRL/ours", "throughput TRL/ours"],
        rows,
    ))
    trl_logged = [common.median(common.steady(run["trl_step_time"], args.skip)) for p in args.prompts for run in runs[(p, "trl")]]
    print("TRL's own logged step_time (median per run): " + ", ".join(f"{v:.3f}" for v in trl_logged))
    print()
    print("## Work done and peak memory (median over rounds)")
    rows = []
    for p in args.prompts:
        for side in SIDES:
            rows.append([
                f"{p} x {args.generations}", "alignlab" if side == "ours" else "TRL",
                med("length", p, side), med("clipped", p, side), med("reward", p, side),
                med("peak", p, side), med("ru_maxrss", p, side), med("baseline", p, side),
                "" if side == "ours" else f"{ratio('peak', p):.2f}", med("total", p, side),
            ])
    print(common.table(
        ["prompts x G", "trainer", "mean completion tokens", "clipped ratio", "mean reward", "peak RSS MiB (VmHWM)",
         "ru_maxrss MiB", "base RSS MiB", "peak TRL/ours", "total wall s"],
        rows,
    ))
    print("base = RSS after importing torch + transformers and loading the model (before the trainer's own imports). "
          "Completions are sampled, so the two sides' lengths differ a little: compare them before reading the times.")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "info": info,
                                         "runs": {f"{p}-{s}": v for (p, s), v in runs.items()}}, indent=1))


if __name__ == "__main__":
    worker = common.load_spec(sys.argv)
    if worker:
        run_worker_role(*worker)
    else:
        main()
