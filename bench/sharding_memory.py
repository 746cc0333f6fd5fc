"""Per-process peak memory and speed of 2-process training on CPU: data parallel (DDP) against
FSDP2 and DeepSpeed ZeRO-2 / ZeRO-3, all through accelerate.

Model: random-init, Qwen2.5-0.5B's shape (hidden 896, 14 heads / 2 KV heads, intermediate 4864,
vocabulary 151,936, tied embeddings) with fewer layers (default 8 of 24) so that two DDP processes
with full AdamW state fit in this machine's memory. Work: `alignlab sft` on data/addition_sft.jsonl,
full fine-tuning and LoRA (r=16, all linear layers), 2 processes x batch 8, fp32.

Each run is a real `torchrun --nproc_per_node 2` (gloo); the sharded runs get the variables
`accelerate launch --config_file configs/accelerate/{fsdp,deepspeed_zero2,deepspeed_zero3}.yaml` exports. Every process reports its
own peak RSS (VmHWM) at exit, which includes saving (gathering the full weights and optimizer state
to the main process under FSDP); the main process's peak while training is read from its last
`memory/peak_rss_mib` in metrics.jsonl. Step time: median `step_seconds` after the first 2 steps.
Run from the repository root:  python bench/sharding_memory.py [--layers 8] [--steps 8] [--modes ddp,fsdp,zero2,zero3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

SCRIPT = Path(__file__).resolve()
FSDP_ENV = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP"}
MODES = {  # mode: (environment, what train.log must say)
    "ddp": ({}, "data parallel"),
    "fsdp": (FSDP_ENV, "FSDP"),
    **{f"zero{stage}": ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": str(stage),
                         "ACCELERATE_DEEPSPEED_ZERO3_INIT": "false"}, f"DeepSpeed ZeRO-{stage}") for stage in (2, 3)},
}


def write_model(out_dir: Path, layers: int) -> dict:
    """Random-init model of Qwen2.5-0.5B's shape (with `layers` blocks) and the tiny byte tokenizer."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from alignlab.model.tiny import build_tokenizer

    config = Qwen2Config(
        vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=layers, num_attention_heads=14,
        num_key_value_heads=2, max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    tokenizer = build_tokenizer()
    model.config.eos_token_id = tokenizer.eos_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return {"parameters": sum(p.numel() for p in model.parameters())}


def probe(argv: list[str]) -> None:
    """One process of a torchrun: train with alignlab, then record this process's peak RSS."""
    result_dir = Path(os.environ["PROBE_DIR"])
    from alignlab.cli import main

    code = main(argv)
    peak = common.peak_rss_mib()
    rank = os.environ.get("RANK", "0")
    (result_dir / f"rank{rank}.json").write_text(json.dumps({"code": code, **peak}))


def run(mode: str, lora: bool, model_dir: Path, workdir: Path, steps: int, src: Path, threads: int) -> dict:
    tag = f"{mode}-{'lora' if lora else 'full'}"
    probe_dir = workdir / tag
    shutil.rmtree(probe_dir, ignore_errors=True)  # a fresh run directory every time
    probe_dir.mkdir(parents=True)
    args = [
        "sft", f"model.name_or_path={model_dir}", f"data.train={common.REPO / 'data' / 'addition_sft.jsonl'}",
        f"train.output_dir={probe_dir / 'run'}", "train.progress=false", f"train.max_steps={steps}", "train.batch_size=8",
        "train.lr=1e-5", "train.save_every=0", "data.eval_fraction=0", "data.max_rows=512",
    ]
    if lora:
        args += ["lora.enabled=true", "lora.r=16"]
    env = common.worker_env(workdir, threads=threads, src=str(src))
    mode_env, expected = MODES[mode]
    env.update(PROBE_DIR=str(probe_dir), **mode_env)
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(SCRIPT),
               "--probe", *args]
    with open(workdir / f"{tag}.log", "w") as log:
        proc = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=str(workdir), timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"{tag} failed; see {workdir / f'{tag}.log'}")
    train_log = (probe_dir / "run" / "train.log").read_text()
    assert expected in train_log, f"{tag}: train.log does not say {expected}"
    ranks = [json.loads((probe_dir / f"rank{r}.json").read_text()) for r in (0, 1)]
    if any(r["code"] != 0 for r in ranks):
        raise RuntimeError(f"{tag}: alignlab exited with {[r['code'] for r in ranks]}; see {workdir / f'{tag}.log'}")
    records = [json.loads(l) for l in (probe_dir / "run" / "metrics.jsonl").read_text().splitlines() if l.strip()]
    seconds = [r["step_seconds"] for r in records if "step_seconds" in r]
    return {
        "tag": tag,
        "peak_rss_mib": [r["vmhwm_mib"] for r in ranks],
        "training_peak_mib": [r for r in records if "memory/peak_rss_mib" in r][-1]["memory/peak_rss_mib"],
        "step_s": statistics.median(common.steady(seconds, 2)),
        "tokens_per_s": statistics.median(common.steady([r["tokens_per_second"] for r in records if "tokens_per_second" in r], 2)),
        "final_loss": records[-1].get("loss"),
    }


def main() -> None:
    if "--probe" in sys.argv:
        probe(sys.argv[sys.argv.index("--probe") + 1 :])
        return
    if "--write-model" in sys.argv:
        out, layers = Path(sys.argv[2]), int(sys.argv[3])
        print(json.dumps(write_model(out, layers)))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated, from " + ", ".join(MODES))
    common.add_run_args(parser, "sharding_memory")
    options = parser.parse_args()
    modes = options.modes.split(",")
    unknown = [m for m in modes if m not in MODES]
    if unknown or "ddp" not in modes:
        parser.error(f"--modes must include ddp (the baseline) and name only {', '.join(MODES)}")
    workdir, src = common.start(options, f"2-process training on CPU: {' vs '.join(modes)}, per-process peak memory")
    model_dir = workdir / f"model-{options.layers}layers"
    if not (model_dir / "config.json").is_file():
        made = subprocess.run([sys.executable, str(SCRIPT), "--write-model", str(model_dir), str(options.layers)],
                              env=common.worker_env(workdir, threads=options.threads, src=str(src)), capture_output=True,
                              text=True)
        if made.returncode != 0:
            raise RuntimeError(made.stderr[-3000:])
    config = json.loads((model_dir / "config.json").read_text())
    print(f"model: random-init Qwen2.5-0.5B shape with {config['num_hidden_layers']} layers, fp32; 2 processes x batch 8, "
          f"{options.steps} steps, {options.threads} thread(s) per process\n", flush=True)
    rows = []
    for lora in (False, True):
        results = {mode: run(mode, lora, model_dir, workdir, options.steps, src, options.threads) for mode in modes}
        for mode, r in results.items():
            rows.append([r["tag"], r["training_peak_mib"], max(r["peak_rss_mib"]), r["step_s"], r["tokens_per_s"],
                         r["final_loss"]])
        ddp = results["ddp"]
        for mode in modes[1:]:
            other = results[mode]
            rows.append([f"DDP / {mode} ({'lora' if lora else 'full'})", ddp["training_peak_mib"] / other["training_peak_mib"],
                         max(ddp["peak_rss_mib"]) / max(other["peak_rss_mib"]), ddp["step_s"] / other["step_s"],
                         float("nan"), float("nan")])
    print(common.table(["run", "training peak, main (MiB)", "peak incl. save, max proc (MiB)", "step s", "tokens/s",
                        "final loss"], rows))


if __name__ == "__main__":
    main()
