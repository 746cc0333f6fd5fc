"""Where a GRPO-LoRA step's time goes at Qwen2.5-0.5B's width (torch.profiler, CPU).

Runs alignlab's GRPO through its trainer on the model real_shape.py builds (random init, --layers of
24, EOS reachable at a set rate), 4 prompts x 4 completions x up to 32 tokens, LoRA r=16 on every
linear layer, and profiles --steps steps after one warm-up step. Prints the top operators by self CPU
time for the whole step, and the split of the step into generation and training (alignlab's own
`time/generation` and `time/training` metrics).

Run from the repository root:  python bench/profile_grpo_step.py [--layers 4] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/alignlab-bench/profile_grpo"))
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(args.threads)
    from real_shape_setup import build_model_dir, write_data
    from transformers import AutoTokenizer

    from alignlab.config import load_config
    from alignlab.trainers import grpo as grpo_module

    work = args.workdir
    model_dir = work / f"model-{args.layers}layers"
    if not (model_dir / "config.json").is_file():
        build_model_dir(model_dir, args.layers, 0.05)
    write_data(work, 16, 512, 0, AutoTokenizer.from_pretrained(model_dir))
    run_dir = work / f"run-{time.strftime('%H%M%S')}"
    config = load_config("grpo", None, [
        f"model.name_or_path={model_dir}", f"train.output_dir={run_dir}", "train.progress=false",
        f"data.train={work / 'prompts.jsonl'}", f"train.max_steps={args.steps + 1}", "train.batch_size=4",
        "train.lr=1e-5", "grpo.num_generations=4", "grpo.max_completion_length=32", "grpo.beta=0.0",
        "grpo.loss_type=dapo", "lora.enabled=true", "lora.r=16", "lora.alpha=32", "lora.dropout=0.0",
        f"grpo.rewards=[{work / 'reward.py'}:spread]",
    ])
    trainer = grpo_module.GRPOTrainer(config)
    step = trainer.step
    calls = {"n": 0}
    prof = profile(activities=[ProfilerActivity.CPU], record_shapes=False)

    def profiled_step(index):
        calls["n"] += 1
        if calls["n"] == 2:  # after one warm-up step
            prof.__enter__()
        out = step(index)
        if calls["n"] == args.steps + 1:
            prof.__exit__(None, None, None)
        return out

    trainer.step = profiled_step
    trainer.fit()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    records = [r for r in records if "time/generation" in r][1:]
    total = sum(r["step_seconds"] for r in records)
    generation = sum(r["time/generation"] for r in records)
    training = sum(r["time/training"] for r in records)
    print(f"# GRPO-LoRA step at {args.layers} layers of Qwen2.5-0.5B's shape, {args.threads} thread(s), "
          f"{len(records)} profiled steps")
    print(f"step {total / len(records):.2f} s = generation {generation / len(records):.2f} s "
          f"+ training {training / len(records):.2f} s (+ {(total - generation - training) / len(records):.2f} s other)")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))


if __name__ == "__main__":
    main()
