"""Where ZeRO-3's memory goes on CPU: the main process's RSS after `prepare`, after the first
forward and after the first optimizer step, under DDP and under DeepSpeed ZeRO-3 (2 processes, gloo).

A bare accelerate loop (no alignlab trainer) on the model `sharding_memory.py` measures: random-init,
Qwen2.5-0.5B's shape with 8 of its 24 layers, fp32, batch 8 x 64 tokens, AdamW. It separates what
DeepSpeed itself holds from anything alignlab does around it.
Run from the repository root:  python bench/zero3_memory_stages.py [--layers 8]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

SCRIPT = Path(__file__).resolve()
STAGES = ("after prepare", "after first forward", "after first step")


def probe(stage: int, model_dir: str) -> None:
    """One process of the torchrun: train one step, print the main process's RSS at each stage."""
    import torch
    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM

    from alignlab.engine import sharding

    accelerator = Accelerator(cpu=True)
    sharding.enable_on_cpu(accelerator)  # ACCELERATE_USE_DEEPSPEED=true from the parent for ZeRO-3
    if stage:
        sharding.load_models_whole()
        sharding.configure_deepspeed(accelerator, argparse.Namespace(batch_size=8, grad_accum=1, max_grad_norm=1.0))
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    model, optimizer = accelerator.prepare(model, optimizer)
    readings = {STAGES[0]: common.rss_mib()}
    ids = torch.randint(0, 200, (8, 64))
    loss = model(input_ids=ids, labels=ids).loss
    readings[STAGES[1]] = common.rss_mib()
    accelerator.backward(loss)
    if not stage:  # DeepSpeed stepped inside backward
        optimizer.step()
        optimizer.zero_grad()
    readings[STAGES[2]] = common.rss_mib()
    if accelerator.is_main_process:
        print("RESULT " + json.dumps(readings), flush=True)


def main() -> None:
    if "--probe" in sys.argv:
        probe(int(sys.argv[2]), sys.argv[3])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=8)
    common.add_run_args(parser, "sharding_memory")  # shares sharding_memory.py's work dir and model
    options = parser.parse_args()
    workdir, src = common.start(options, "RSS by stage: DDP vs DeepSpeed ZeRO-3, 2 CPU processes")
    env = common.worker_env(workdir, threads=options.threads, src=str(src))
    model_dir = workdir / f"model-{options.layers}layers"
    if not (model_dir / "config.json").is_file():
        subprocess.run([sys.executable, str(SCRIPT.parent / "sharding_memory.py"), "--write-model", str(model_dir),
                        str(options.layers)], env=env, check=True, capture_output=True)
    results = {}
    for name, stage in (("DDP", 0), ("ZeRO-3", 3)):
        run_env = dict(env)
        for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
            run_env.pop(var, None)
        if stage:
            run_env.update(ACCELERATE_USE_DEEPSPEED="true", ACCELERATE_DEEPSPEED_ZERO_STAGE=str(stage),
                           ACCELERATE_DEEPSPEED_ZERO3_INIT="false")
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                               str(SCRIPT), "--probe", str(stage), str(model_dir)], env=run_env, cwd=str(workdir),
                              capture_output=True, text=True, timeout=1800)
        lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f"{name} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
        results[name] = json.loads(lines[-1][len("RESULT "):])
    print(common.table(["main process RSS (MiB)", *results], [[s, *(results[n][s] for n in results)] for s in STAGES]))
    if options.json:
        Path(options.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
