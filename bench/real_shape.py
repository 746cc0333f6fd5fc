"""Real model shapes: alignlab vs TRL 1.16 at Qwen2.5-0.5B's width, DPO and GRPO, LoRA and full, CPU.

The model (built here, random init: see real_shape_setup.py) has Qwen2.5-0.5B's shape with
--layers of its 24 layers (default 4: 196M parameters, 136M of them the tied 151,936-row
embedding that is also the LM head), float32. Rows, each side in its own subprocess, alternating
which side goes first, same data, order and seed:

  dpo-lora / dpo-full  a 400-pair file (~140 tokens per sequence), --dpo-steps (8) x 4 pairs, beta 0.1,
                       lr 5e-5 constant, max grad norm 1. alignlab: reference precomputed for the
                       pairs the run sees (a fresh cache every run, so it is timed), LoRA r=16 alpha 32
                       dropout 0 on every linear layer (same init on both sides: seed, then peft).
                       TRL: its default reference, a forward per step (adapter disabled under LoRA,
                       a frozen copy for full fine-tuning: ref_model=deepcopy(model)).
  grpo-lora / grpo-full  4 prompts x 4 completions, up to 32 tokens, temperature 1, --grpo-steps (6),
                       beta 0, one update per rollout, loss dapo, lr 1e-5, reward: a hash of the text
                       (the same Python function on both sides).

Printed: time per optimizer step (median, first step left out), whole-process time (launch to
exit, measured by this process), startup to the first step (launch to the training loop: imports,
model load, tokenisation, and for alignlab's DPO the reference pass, also given on its own), peak
RSS (VmHWM of the worker), the loss of the first steps on both sides (DPO must agree), ratios TRL /
alignlab (time) and alignlab / TRL (memory), and each step as a fraction of the machine's roofline
(FIELD_NOTES: fp32 matmul ~260 GFLOP/s on 2 cores, memory ~26 GB/s).

Run from the repository root:  python bench/real_shape.py [--layers 4] [--rounds 2] [--rows dpo-lora grpo-lora]
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
ROWS = ["dpo-lora", "dpo-full", "grpo-lora", "grpo-full"]
FLOPS, BANDWIDTH = 260e9, 26e9  # the machine's fp32 matmul rate and memory read bandwidth (FIELD_NOTES)
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


# ================================================================ workers (subprocesses)


def worker_prepare(spec: dict) -> dict:
    from real_shape_setup import build_model_dir, write_data
    from transformers import AutoTokenizer

    work = Path(spec["workdir"])
    model_dir = Path(spec["model_dir"])
    info = build_model_dir(model_dir, spec["layers"], spec["eos_rate"])
    data = write_data(work, spec["num_pairs"], 512, spec["seed"], AutoTokenizer.from_pretrained(model_dir))
    return {**info, **data}


class Clock:
    """Wall-clock marks (time.time(), comparable with the parent's launch time) around calls."""

    def __init__(self):
        self.marks: dict[str, float] = {}
        self.spans: dict[str, float] = {}

    def wrap(self, owner, name: str, label: str, first_only: bool = True):
        inner = getattr(owner, name)

        def timed(*args, **kwargs):
            start = time.time()
            self.marks.setdefault(f"{label}_start", start)
            try:
                return inner(*args, **kwargs)
            finally:
                if not (first_only and label in self.spans):
                    self.spans[label] = self.spans.get(label, 0.0) + time.time() - start

        setattr(owner, name, timed)


def lora_a_checksum(model) -> float:
    return float(sum(p.detach().double().sum() for n, p in model.named_parameters() if "lora_A" in n))


def worker_ours(spec: dict) -> dict:
    clock = Clock()
    import torch

    from alignlab.config import load_config
    from alignlab.engine import loop as loop_module
    from alignlab.engine.tracking import read_jsonl

    kind, lora = spec["row"].split("-")[0], spec["row"].endswith("lora")
    trainer = __import__(f"alignlab.trainers.{kind}", fromlist=["x"])
    clock.marks["imports_done"] = time.time()
    checksum = {}
    load_model = trainer.load_model

    def load_and_sum(*args, **kwargs):
        model = load_model(*args, **kwargs)
        checksum["lora_a"] = lora_a_checksum(model)
        return model

    trainer.load_model = load_and_sum
    clock.wrap(trainer, "load_model", "model_load")
    clock.wrap(trainer, "load_pairs" if kind == "dpo" else "load_prompt_data", "tokenisation")
    clock.wrap(loop_module.TrainingRun, "loop", "loop")
    run_dir = Path(spec["run_dir"])
    common_overrides = [
        f"model.name_or_path={spec['model_dir']}", f"train.output_dir={run_dir}", f"train.seed={spec['seed']}",
        "train.lr_scheduler=constant", "train.progress=false", "train.max_grad_norm=1.0",
        f"lora.enabled={str(lora).lower()}", "lora.r=16", "lora.alpha=32", "lora.dropout=0.0",
    ]
    if kind == "dpo":
        overrides = [f"data.train={Path(spec['workdir']) / 'dpo_ours.jsonl'}", f"train.max_steps={spec['dpo_steps']}",
                     "train.batch_size=4", "train.lr=5e-5", "train.max_length=512", "dpo.beta=0.1",
                     f"dpo.ref_cache_dir={run_dir.parent / (run_dir.name + '-refcache')}"]  # fresh: timed every run
    else:
        overrides = [f"data.train={Path(spec['workdir']) / 'prompts.jsonl'}", f"train.max_steps={spec['grpo_steps']}",
                     "train.batch_size=4", "train.lr=1e-5", "grpo.num_generations=4", "grpo.max_completion_length=32",
                     "grpo.beta=0.0", "grpo.num_iterations=1", "grpo.loss_type=dapo", "grpo.temperature=1.0",
                     f"grpo.rewards=[{Path(spec['workdir']) / 'reward.py'}:spread]"]
    config = load_config(kind, None, common_overrides + overrides)
    getattr(trainer, f"train_{kind}")(config)
    peak = common.peak_rss_mib()
    records = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "step_seconds" in r]
    out = {
        "torch_threads": torch.get_num_threads(), **peak, "marks": clock.marks, "spans": clock.spans,
        "lora_a_checksum": checksum.get("lora_a"),
        "step_s": [r["step_seconds"] for r in records], "losses": [r["loss"] for r in records],
    }
    if kind == "dpo":
        out["reference"] = json.loads((run_dir / "reference.json").read_text())["train"]
    else:
        out.update(generation_s=[r["time/generation"] for r in records],
                   mean_length=[r["completions/mean_length"] for r in records],
                   logp_gap=[r.get("sampling/sampling_logp_difference/mean") for r in records])
    return out


def worker_trl(spec: dict) -> dict:
    clock = Clock()
    import copy

    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer, GRPOConfig, GRPOTrainer

    clock.marks["imports_done"] = time.time()
    kind, lora = spec["row"].split("-")[0], spec["row"].endswith("lora")
    steps = []

    class StepTimer(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            clock.marks["loop_start"] = time.time()

        def on_step_begin(self, args, state, control, **kwargs):
            steps.append([time.perf_counter(), None])

        def on_step_end(self, args, state, control, **kwargs):
            steps[-1][1] = time.perf_counter()

    start = time.time()
    torch.manual_seed(spec["seed"])  # then the model and peft, in alignlab's order: the same LoRA init
    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"])
    checksum = None
    if lora:
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=LORA_TARGETS,
                                                 task_type="CAUSAL_LM"))
        checksum = lora_a_checksum(model)
    clock.spans["model_load"] = time.time() - start
    settings = dict(output_dir=spec["run_dir"], gradient_accumulation_steps=1, lr_scheduler_type="constant",
                    warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, seed=spec["seed"], use_cpu=True, bf16=False,
                    gradient_checkpointing=False, report_to="none", logging_steps=1, save_strategy="no",
                    disable_tqdm=True, dataloader_num_workers=0)
    generation = []
    start = time.time()
    if kind == "dpo":
        dataset = Dataset.from_list(json.loads((Path(spec["workdir"]) / "dpo_trl.json").read_text()))
        args = DPOConfig(per_device_train_batch_size=4, max_steps=spec["dpo_steps"], learning_rate=5e-5, beta=0.1,
                         max_length=512, precompute_ref_log_probs=False, **settings)
        trainer = DPOTrainer(model=model, ref_model=None if lora else copy.deepcopy(model), args=args,
                             train_dataset=dataset, processing_class=tokenizer, callbacks=[StepTimer()])
    else:
        import importlib.util

        reward_spec = importlib.util.spec_from_file_location("reward", Path(spec["workdir"]) / "reward.py")
        reward = importlib.util.module_from_spec(reward_spec)
        reward_spec.loader.exec_module(reward)
        rows = [json.loads(line) for line in (Path(spec["workdir"]) / "prompts.jsonl").read_text().splitlines()]
        dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}]} for r in rows])

        class TimedGRPOTrainer(GRPOTrainer):
            def _generate_and_score_completions(self, inputs):
                tick = time.perf_counter()
                out = super()._generate_and_score_completions(inputs)
                generation.append(time.perf_counter() - tick)
                return out

        args = GRPOConfig(per_device_train_batch_size=16, num_generations=4, max_completion_length=32, temperature=1.0,
                          top_p=1.0, top_k=0, beta=0.0, num_iterations=1, loss_type="dapo", scale_rewards="group",
                          epsilon=0.2, learning_rate=1e-5, max_steps=spec["grpo_steps"], **settings)
        trainer = TimedGRPOTrainer(model=model, reward_funcs=[reward.spread], args=args, train_dataset=dataset,
                                   processing_class=tokenizer, callbacks=[StepTimer()])
    clock.spans["tokenisation"] = time.time() - start  # the trainer's setup: datasets mapped and tokenised
    trainer.train()
    trainer.save_model(str(Path(spec["run_dir"]) / "final"))  # alignlab always saves a final model: same here
    peak = common.peak_rss_mib()
    logs = [h for h in trainer.state.log_history if "loss" in h and "train_runtime" not in h]
    out = {"torch_threads": torch.get_num_threads(), **peak, "marks": clock.marks, "spans": clock.spans,
           "lora_a_checksum": checksum,
           "step_s": [e - b for b, e in steps], "losses": [h["loss"] for h in logs]}
    if kind == "grpo":
        out.update(generation_s=generation, mean_length=[h.get("completions/mean_length") for h in logs])
    else:
        out["tokens_identical"] = dpo_tokens_identical(spec, tokenizer, trainer.train_dataset)
    return out


def dpo_tokens_identical(spec, tokenizer, theirs) -> bool:
    from alignlab.data.io import read_rows
    from alignlab.data.preference import load_preference_rows
    from alignlab.data.preference_encode import encode_pairs
    from alignlab.data.templates import Templater

    examples, _ = load_preference_rows(read_rows(str(Path(spec["workdir"]) / "dpo_ours.jsonl")), skip_bad_rows=False)
    ours = encode_pairs(examples, Templater(tokenizer), max_length=512, on_long="error")
    return len(ours) == len(theirs) and all(
        (p.prompt_ids, p.chosen_ids, p.rejected_ids) == (t["prompt_ids"], t["chosen_ids"], t["rejected_ids"])
        for p, t in zip(ours, theirs))


def run_worker_role(role: str, spec: dict) -> None:
    common.write_result(spec, {"prepare": worker_prepare, "ours": worker_ours, "trl": worker_trl}[role](spec))


if __name__ == "__main__" and "--worker" in sys.argv:
    run_worker_role(*common.load_spec(sys.argv))
    sys.exit(0)

from real_shape_report import report  # noqa: E402  (the orchestrator's tables; stdlib only)


# ================================================================ orchestration (stdlib only)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--rows", nargs="+", default=ROWS, choices=ROWS)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--dpo-steps", type=int, default=8)
    parser.add_argument("--grpo-steps", type=int, default=6)
    parser.add_argument("--pairs", type=int, default=400)
    parser.add_argument("--eos-rate", type=float, default=0.05, help="EOS probability at the median position (see real_shape_setup)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true", help="reuse the runs a previous, interrupted invocation finished")
    common.add_run_args(parser, "real_shape", threads=1)
    args = parser.parse_args()

    work, src = common.start(args, f"Real shape ({args.layers} layers of Qwen2.5-0.5B): alignlab vs TRL")
    spec = {"workdir": str(work), "model_dir": str(work / f"model-{args.layers}layers-eos{args.eos_rate}"),
            "layers": args.layers, "eos_rate": args.eos_rate, "num_pairs": args.pairs, "seed": args.seed,
            "dpo_steps": args.dpo_steps, "grpo_steps": args.grpo_steps, "threads": args.threads, "alignlab_src": str(src)}
    info = common.run_worker(SCRIPT, "prepare", spec, work, "prepare", timeout=3600)
    print(f"model: {info['parameters'] / 1e6:.1f}M parameters ({args.layers} layers), EOS scale {info['eos_scale']:.3f}; "
          f"DPO data: {info['pairs']} pairs, ~{info['tokens_per_sequence']:.0f} tokens per sequence "
          f"(prompt ~{info['prompt_tokens']:.0f}); torch threads per worker {args.threads or 'default'}")
    runs: dict[tuple[str, str], list[dict]] = {(row, side): [] for row in args.rows for side in ("ours", "trl")}
    stamp = time.strftime("%H%M%S")
    done_file = work / f"done-{args.layers}layers.jsonl"  # every finished run, for --resume after an interruption
    done = {}
    if args.resume and done_file.is_file():
        done = {(d["round"], d["row"], d["side"]): d["result"] for d in map(json.loads, done_file.read_text().splitlines())}
        print(f"resuming: {len(done)} runs already done ({done_file})")
    for r in range(args.rounds):
        for i, row in enumerate(args.rows):
            for side in (("ours", "trl") if (r + i) % 2 == 0 else ("trl", "ours")):
                if (r, row, side) in done:
                    runs[(row, side)].append(done[(r, row, side)])
                    continue
                tag = f"r{r}-{row}-{side}-{stamp}"
                launch = time.time()
                result = common.run_worker(SCRIPT, side, {**spec, "row": row, "run_dir": str(work / "runs" / tag)},
                                           work, tag, timeout=7200)
                result.update(launch=launch, load_average=common.load_average())
                runs[(row, side)].append(result)
                with open(done_file, "a") as handle:
                    handle.write(json.dumps({"round": r, "row": row, "side": side, "result": result}) + "\n")
                steps = common.steady(result["step_s"], 1)
                print(f"round {r + 1}/{args.rounds} {row:9s} {side:4s}: step {common.median(steps):6.2f} s  process "
                      f"{result['process_wall_s']:6.1f} s  first step at {result['marks']['loop_start'] - launch:5.1f} s  "
                      f"peak RSS {result['vmhwm_mib']:6.0f} MiB  losses {[round(x, 4) for x in result['losses'][:3]]}  "
                      f"[threads {result['torch_threads']}, load {common.load_average():.1f}]", flush=True)
    report(runs, args, info)
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "info": info,
                                         "runs": {f"{row}/{side}": v for (row, side), v in runs.items()}}, indent=1))


if __name__ == "__main__":
    main()
