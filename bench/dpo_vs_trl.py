"""DPO: alignlab vs TRL 1.16 on identical work, time per optimizer step and peak memory.

Same tiny model (alignlab's offline Qwen2-architecture model, default size), same token ids,
batch 32 pairs, same steps, lr, seed, beta=0.1, full fine-tune. Three configurations:

  ours     alignlab.trainers.dpo.train_dpo, default reference = precomputed (fresh cache per run)
  trl      TRL DPOTrainer default: reference model forward every step (ref_model=copy.deepcopy(model))
  trl_pre  TRL DPOTrainer with precompute_ref_log_probs=True

Each configuration runs in its own subprocess (so its peak RSS is its own); the rounds rotate the
order so every configuration sees the same background load on average. Time per step: median over
steady-state steps (first 2 skipped) per run, then the median over rounds; ratios TRL/ours are taken
within each round and their median reported.

Data: addition prompts "37+48=?", chosen = "<answer>85</answer>", rejected = a wrong number
(gold + a random non-zero offset in [-10, 10]). alignlab gets {"prompt", "chosen", "rejected"}
strings and applies the chat template itself; TRL gets the same prompt already rendered by the
chat template and responses ending with <|im_end|>, so both tokenise to the same ids (the worker
checks this). With TRL's conversational format instead, TRL would also train the "\\n" the
template writes after <|im_end|>, one token per response more than alignlab.

Run from the repository root:  python bench/dpo_vs_trl.py [--rounds 3] [--steps 30]
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
CONFIGS = ["ours", "trl", "trl_pre"]
LABELS = {
    "ours": "alignlab (precomputed ref)",
    "trl": "TRL default (ref forward/step)",
    "trl_pre": "TRL precompute_ref_log_probs",
}


# ================================================================ workers (subprocesses)


def worker_prepare(spec: dict) -> dict:
    """Tiny model + identical preference data in both formats + a held-out eval set."""
    import random

    from alignlab.commands.demo.tasks import TASKS, make_splits, write_jsonl
    from alignlab.model.tiny import write_tiny_model
    from alignlab.model.loading import load_tokenizer
    from alignlab.data.templates import Templater

    work = Path(spec["workdir"])
    tiny = work / "tiny"
    if not (tiny / "config.json").is_file():
        write_tiny_model(tiny)
    tokenizer = load_tokenizer(str(tiny))
    templater = Templater(tokenizer)
    eos = tokenizer.eos_token
    task = TASKS["addition"]
    splits = make_splits(task, spec["seed"])
    rng = random.Random(spec["seed"])
    offsets = [o for o in range(-10, 11) if o]

    def pairs(rows):
        out = []
        for row in rows:
            wrong = int(row["answer"]) + rng.choice(offsets)
            out.append({"prompt": row["prompt"], "chosen": row["completion"], "rejected": task.completion(str(wrong))})
        return out

    train = pairs(splits["train"][: spec["num_pairs"]])
    heldout = pairs(splits["dev"][: spec["eval_pairs"]])

    def trl_row(row):
        def response(text):
            rendered = templater.response_text(row["prompt"], text)
            return rendered[: rendered.index(eos) + len(eos)]  # what alignlab trains: up to and including <|im_end|>

        return {"prompt": templater.prompt_text(row["prompt"]), "chosen": response(row["chosen"]), "rejected": response(row["rejected"])}

    write_jsonl(train, work / "ours_train.jsonl")
    write_jsonl(heldout, work / "eval_pairs.jsonl")
    (work / "trl_train.json").write_text(json.dumps([trl_row(r) for r in train]))
    lengths = [len(templater.ids(templater.prompt_text(r["prompt"]) + templater.response_text(r["prompt"], r["chosen"]))) for r in train[:200]]
    return {
        "tiny": str(tiny),
        "train_pairs": len(train),
        "eval_pairs": len(heldout),
        "mean_tokens_per_sequence": sum(lengths) / len(lengths),
        "example_ours": train[0],
        "example_trl": trl_row(train[0]),
    }


def heldout_eval(policy, spec: dict) -> dict:
    """DPO loss and preference accuracy of `policy` on held-out pairs vs the initial model (same code both sides)."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    from alignlab.data.io import read_rows
    from alignlab.data.preference import load_preference_rows
    from alignlab.data.preference_encode import encode_pairs
    from alignlab.data.templates import Templater
    from alignlab.model.loading import load_tokenizer
    from alignlab.model.pair_logps import pair_logps

    tokenizer = load_tokenizer(spec["tiny"])
    examples, _ = load_preference_rows(read_rows(str(Path(spec["workdir"]) / "eval_pairs.jsonl")), skip_bad_rows=False)
    pairs = encode_pairs(examples, Templater(tokenizer), max_length=spec["max_length"], on_long="error")
    reference = AutoModelForCausalLM.from_pretrained(spec["tiny"], dtype=torch.float32).eval()
    policy = policy.eval()
    margins = []
    with torch.no_grad():
        for start in range(0, len(pairs), 64):
            chunk = pairs[start : start + 64]
            p = pair_logps(policy, chunk, tokenizer.pad_token_id, "cpu")
            r = pair_logps(reference, chunk, tokenizer.pad_token_id, "cpu")
            margins.append(spec["beta"] * ((p.chosen - r.chosen) - (p.rejected - r.rejected)))
    margins = torch.cat(margins)
    return {"eval_loss": float(-F.logsigmoid(margins).mean()), "eval_accuracy": float((margins > 0).float().mean())}


def common_baseline(spec: dict) -> float:
    """RSS with python + torch + transformers imported and the tiny model loaded: the same in every worker."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(spec["tiny"], dtype=torch.float32)
    rss = common.rss_mib()
    del model
    return rss


def worker_ours(spec: dict) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    base = common_baseline(spec)
    from alignlab.config import load_config
    from alignlab.engine.tracking import read_jsonl
    from alignlab.trainers.dpo import train_dpo

    run_dir = Path(spec["run_dir"])
    overrides = [
        f"model.name_or_path={spec['tiny']}",
        f"data.train={Path(spec['workdir']) / 'ours_train.jsonl'}",
        f"train.output_dir={run_dir}",
        f"train.max_steps={spec['steps']}",
        f"train.batch_size={spec['batch_pairs']}",
        f"train.lr={spec['lr']}",
        f"train.seed={spec['seed']}",
        f"train.max_length={spec['max_length']}",
        "train.lr_scheduler=constant",
        "train.progress=false",
        f"dpo.beta={spec['beta']}",
        f"dpo.ref_cache_dir={run_dir.parent / (run_dir.name + '-refcache')}",  # fresh: precompute is timed every run
    ]
    config = load_config("dpo", None, overrides)
    start = time.perf_counter()
    train_dpo(config)
    total = time.perf_counter() - start
    peak = common.peak_rss_mib()
    records = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "step_seconds" in r]
    policy = AutoModelForCausalLM.from_pretrained(run_dir / "final")
    return {
        "torch_threads": torch.get_num_threads(),
        "baseline_rss_mib": base,
        **peak,
        "total_s": total,
        "loop_s": records[-1]["elapsed"],
        "step_inner_s": [r["step_seconds"] for r in records],
        "step_interval_s": common.intervals([r["elapsed"] for r in records]),
        "losses": [r["loss"] for r in records],
        "accuracies": [r["rewards/accuracies"] for r in records],
        **heldout_eval(policy, spec),
    }


def worker_trl(spec: dict, precompute: bool) -> dict:
    import copy

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    base = common_baseline(spec)
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.begin, self.end, self.train_begin, self.train_end = [], [], None, None

        def on_train_begin(self, args, state, control, **kwargs):
            self.train_begin = time.perf_counter()

        def on_step_begin(self, args, state, control, **kwargs):
            self.begin.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            self.end.append(time.perf_counter())

        def on_train_end(self, args, state, control, **kwargs):
            self.train_end = time.perf_counter()

    start = time.perf_counter()
    torch.manual_seed(spec["seed"])
    model = AutoModelForCausalLM.from_pretrained(spec["tiny"], dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(spec["tiny"])
    dataset = Dataset.from_list(json.loads((Path(spec["workdir"]) / "trl_train.json").read_text()))
    args = DPOConfig(
        output_dir=spec["run_dir"],
        per_device_train_batch_size=spec["batch_pairs"],
        gradient_accumulation_steps=1,
        max_steps=spec["steps"],
        learning_rate=spec["lr"],
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        seed=spec["seed"],
        beta=spec["beta"],
        max_length=spec["max_length"],
        precompute_ref_log_probs=precompute,
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        report_to="none",
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    timer = StepTimer()
    trainer = DPOTrainer(
        model=model,
        ref_model=None if precompute else copy.deepcopy(model),
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[timer],
    )
    trainer.train()
    trainer.save_model(str(Path(spec["run_dir"]) / "final"))  # alignlab always saves a final model: same here
    total = time.perf_counter() - start
    peak = common.peak_rss_mib()
    logs = [h for h in trainer.state.log_history if "loss" in h and "train_runtime" not in h]

    # Token identity with alignlab's encoding of the same rows (checked after the peak was read).
    from alignlab.data.io import read_rows
    from alignlab.data.preference import load_preference_rows
    from alignlab.data.preference_encode import encode_pairs
    from alignlab.data.templates import Templater

    examples, _ = load_preference_rows(read_rows(str(Path(spec["workdir"]) / "ours_train.jsonl")), skip_bad_rows=False)
    ours = encode_pairs(examples, Templater(tokenizer), max_length=spec["max_length"], on_long="error")
    theirs = trainer.train_dataset
    identical = len(ours) == len(theirs) and all(
        (p.prompt_ids, p.chosen_ids, p.rejected_ids) == (t["prompt_ids"], t["chosen_ids"], t["rejected_ids"])
        for p, t in zip(ours, theirs)
    )
    return {
        "torch_threads": torch.get_num_threads(),
        "baseline_rss_mib": base,
        **peak,
        "total_s": total,
        "loop_s": timer.train_end - timer.train_begin,
        "step_inner_s": [e - b for b, e in zip(timer.begin, timer.end)],
        "step_interval_s": common.intervals(timer.end),
        "losses": [h["loss"] for h in logs],
        "accuracies": [h.get("rewards/accuracies") for h in logs],
        "tokens_identical": identical,
        **heldout_eval(trainer.model, spec),
    }


def run_worker_role(role: str, spec: dict) -> None:
    if role == "prepare":
        result = worker_prepare(spec)
    elif role == "ours":
        result = worker_ours(spec)
    elif role in ("trl", "trl_pre"):
        result = worker_trl(spec, precompute=role == "trl_pre")
    else:
        raise SystemExit(f"unknown worker role {role}")
    common.write_result(spec, result)


# ================================================================ orchestration (stdlib only)


def summarise(run: dict, skip: int) -> dict:
    inner = common.steady(run["step_inner_s"], skip)
    interval = common.steady(run["step_interval_s"], max(skip - 1, 0))  # interval i ends at step i+2
    return {
        "inner": common.median(inner),
        "interval": common.median(interval),
        "peak": run["vmhwm_mib"],
        "ru_maxrss": run["ru_maxrss_mib"],
        "baseline": run["baseline_rss_mib"],
        "total": run["total_s"],
        "last5_loss": sum(run["losses"][-5:]) / len(run["losses"][-5:]),
        "eval_loss": run["eval_loss"],
        "eval_acc": run["eval_accuracy"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-pairs", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip", type=int, default=2, help="warm-up steps left out of the medians")
    common.add_run_args(parser, "dpo", threads=1)
    args = parser.parse_args()

    work, src = common.start(args, "DPO: alignlab vs TRL")
    spec = {
        "workdir": str(work),
        "seed": args.seed,
        "num_pairs": args.steps * args.batch_pairs + 64,
        "eval_pairs": 256,
        "steps": args.steps,
        "batch_pairs": args.batch_pairs,
        "lr": args.lr,
        "beta": args.beta,
        "max_length": args.max_length,
        "threads": args.threads,
        "alignlab_src": str(src),
    }
    info = common.run_worker(SCRIPT, "prepare", spec, work, "prepare")
    spec["tiny"] = info["tiny"]
    print(f"data: {info['train_pairs']} train pairs, {info['eval_pairs']} held-out pairs, "
          f"~{info['mean_tokens_per_sequence']:.1f} tokens per sequence; batch {args.batch_pairs} pairs, "
          f"{args.steps} steps, lr {args.lr}, beta {args.beta}, seed {args.seed}, torch threads per worker "
          f"{args.threads or 'default'}")
    print(f"  alignlab row: {json.dumps(info['example_ours'])}")
    print(f"  TRL row:      {json.dumps(info['example_trl'])}")

    runs: dict[str, list[dict]] = {c: [] for c in CONFIGS}
    stamp = time.strftime("%H%M%S")
    for r, order in enumerate(common.rotations(CONFIGS, args.rounds)):
        for name in order:
            tag = f"r{r}-{name}-{stamp}"
            result = common.run_worker(SCRIPT, name, {**spec, "run_dir": str(work / "runs" / tag)}, work, tag)
            s = summarise(result, args.skip)
            runs[name].append({**result, "summary": s})
            print(f"round {r + 1}/{args.rounds} {name:8s} step {s['inner'] * 1000:6.1f} ms "
                  f"(loop interval {s['interval'] * 1000:6.1f} ms)  peak RSS {s['peak']:6.0f} MiB  "
                  f"total {s['total']:5.1f} s  eval loss {s['eval_loss']:.4f}  [threads {result['torch_threads']}, "
                  f"load {common.load_average():.1f}]", flush=True)

    def med(name, key):
        return common.median([run["summary"][key] for run in runs[name]])

    def ratio(name, key):  # per-round TRL/ours, then the median over rounds
        return common.median([t["summary"][key] / o["summary"][key] for t, o in zip(runs[name], runs["ours"])])

    print()
    print(f"## Time per optimizer step (median of steps {args.skip + 1}..{args.steps}, then median of {args.rounds} rounds)")
    rows = []
    for name in CONFIGS:
        rows.append([
            LABELS[name],
            med(name, "inner") * 1000,
            med(name, "interval") * 1000,
            1.0 if name == "ours" else ratio(name, "inner"),
            1.0 if name == "ours" else ratio(name, "interval"),
            med(name, "total"),
        ])
    print(common.table(
        ["configuration", "step ms", "loop interval ms", "step TRL/ours", "interval TRL/ours", "total wall s (setup+train+save)"],
        rows,
    ))
    print("step = one optimizer step as each trainer times it (ours: metrics.jsonl step_seconds; TRL: "
          "on_step_begin..on_step_end); loop interval = time between consecutive step ends (adds data loading "
          "and logging).")
    print()
    print("## Peak memory (own subprocess per run; median over rounds)")
    rows = []
    for name in CONFIGS:
        rows.append([
            LABELS[name], med(name, "peak"), med(name, "ru_maxrss"), med(name, "baseline"),
            med(name, "peak") - med(name, "baseline"),
            1.0 if name == "ours" else ratio(name, "peak"),
        ])
    print(common.table(
        ["configuration", "peak RSS MiB (VmHWM)", "ru_maxrss MiB", "base RSS MiB", "peak - base MiB", "peak TRL/ours"],
        rows,
    ))
    print("base = RSS after importing torch + transformers and loading the model, before the trainer's own imports "
          "(the same in every worker); peak - base = the trainer's libraries, data, optimizer state and activations.")
    print()
    print("## Sanity check: losses (median over rounds)")
    rows = []
    for name in CONFIGS:
        first = common.median([run["losses"][0] for run in runs[name]])
        gap = max(max(abs(a - b) for a, b in zip(run["losses"], ours["losses"])) for run, ours in zip(runs[name], runs["ours"]))
        rows.append([LABELS[name], f"{first:.4f}", f"{med(name, 'last5_loss'):.4f}", f"{gap:.1e}",
                     f"{med(name, 'eval_loss'):.4f}", f"{med(name, 'eval_acc'):.3f}"])
    print(common.table(["configuration", "loss step 1", f"mean loss steps {args.steps - 4}..{args.steps}",
                        "max abs(loss - ours), all steps", "held-out DPO loss", "held-out pref. accuracy"], rows))
    print("With seed 0 both samplers draw torch.randperm(N) from a generator seeded with 0 (alignlab seeds "
          "seed*100003+epoch, TRL seeds the seed), so every side sees the same pairs in the same order and the per-step "
          "losses compare directly; with another seed the orders differ and only the trends should match.")
    identical = all(run.get("tokens_identical") for name in ("trl", "trl_pre") for run in runs[name])
    print(f"TRL's tokenised training rows identical to alignlab's: {identical}")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "info": info, "runs": runs}, indent=1))


if __name__ == "__main__":
    worker = common.load_spec(sys.argv)
    if worker:
        run_worker_role(*worker)
    else:
        main()
