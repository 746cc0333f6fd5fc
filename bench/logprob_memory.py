"""Peak memory of per-token log-probs at a real vocabulary size: alignlab's chunked
`alignlab.model.logprobs.token_logps` vs the straightforward `full_logits_token_logps` ([B, T, V] float32 logits).

Model: random-init Qwen2 architecture with Qwen2.5's vocabulary (151,936), hidden 256, 2 layers,
4 heads, intermediate 1024, tied embeddings: the LM head (38.9M of ~41M parameters) dominates.
Batch: 8 sequences x 512 tokens, the last 256 of each are completion (loss) tokens. One forward and
backward of loss = -sum(log-probs) per measurement.

Each measurement runs in its own subprocess: peak RSS (VmHWM; ru_maxrss alongside) minus the RSS
just before the forward (model, gradients-to-be excluded, inputs built) is the memory the log-prob
computation itself needed. Alongside: the analytic size of the full logits, B*T*V*4 bytes, and of
one chunk of alignlab's logits, chunk*V*4 bytes (alignlab's default chunk, 1024, and 256). A small extra worker checks that both functions
return the same log-probs and gradients.

Run from the repository root:  python bench/logprob_memory.py [--batch 8 --seq 512 --completion 256] [--rounds 2]
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
GIB = 1024**3


def build(spec: dict):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=spec["vocab"], hidden_size=spec["hidden"], intermediate_size=4 * spec["hidden"],
        num_hidden_layers=spec["layers"], num_attention_heads=4, num_key_value_heads=4,
        max_position_embeddings=max(1024, spec["seq"]), tie_word_embeddings=True,
    )
    torch.manual_seed(spec["seed"])
    model = Qwen2ForCausalLM(config).float().train()
    generator = torch.Generator().manual_seed(spec["seed"] + 1)
    B, T, C = spec["batch"], spec["seq"], spec["completion"]
    input_ids = torch.randint(0, spec["vocab"], (B, T), generator=generator)
    attention = torch.ones(B, T, dtype=torch.long)
    loss_mask = torch.zeros(B, T, dtype=torch.long)
    loss_mask[:, T - C:] = 1
    return model, input_ids, attention, loss_mask


def logps_fn(method: str):
    """"full" or "chunked-<chunk size>"."""
    from alignlab.model.logprobs import full_logits_token_logps, token_logps

    if method.startswith("chunked-"):
        chunk = int(method.split("-")[1])
        return lambda m, i, a, l: token_logps(m, i, a, l, chunk_size=chunk)
    return full_logits_token_logps


def label(method: str) -> str:
    if method.startswith("chunked-"):
        return f"alignlab token_logps, chunk {method.split('-')[1]}"
    return "full_logits_token_logps ([B,T,V] fp32)"


def worker_measure(spec: dict) -> dict:
    import torch

    model, input_ids, attention, loss_mask = build(spec)
    fn = logps_fn(spec["method"])
    before = common.rss_mib()
    start = time.perf_counter()
    logps = fn(model, input_ids, attention, loss_mask)
    forward_s = time.perf_counter() - start
    after_forward = common.peak_rss_mib()["vmhwm_mib"]
    (-logps.sum()).backward()
    seconds = time.perf_counter() - start
    peak = common.peak_rss_mib()
    return {
        "torch_threads": torch.get_num_threads(),
        "rss_before_mib": before,
        "peak_after_forward_mib": after_forward,
        **peak,
        "forward_s": forward_s,
        "forward_backward_s": seconds,
        "logps_sum": float(logps.sum()),
    }


def worker_check(spec: dict) -> dict:
    """Same log-probs and gradients from both functions (small batch, same model)."""
    import torch

    small = {**spec, "batch": 2, "seq": 64, "completion": 32}
    model, input_ids, attention, loss_mask = build(small)
    out = {}
    grads = {}
    for method in ("chunked", "full"):
        model.zero_grad(set_to_none=True)
        fn = logps_fn("chunked-16" if method == "chunked" else "full")  # several chunks even on this small batch
        logps = fn(model, input_ids, attention, loss_mask)
        (-logps.sum()).backward()
        out[method] = logps.detach()
        grads[method] = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return {
        "max_abs_logp_diff": float((out["chunked"] - out["full"]).abs().max()),
        "max_abs_grad_diff": float((grads["chunked"] - grads["full"]).abs().max()),
        "max_abs_grad": float(grads["full"].abs().max()),
    }


def run_worker_role(role: str, spec: dict) -> None:
    common.write_result(spec, worker_check(spec) if role == "check" else worker_measure(spec))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vocab", type=int, default=151_936)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--completion", type=int, default=256)
    parser.add_argument("--chunks", type=int, nargs="+", default=[1024, 256],
                        help="alignlab chunk sizes (rows) to measure; the library default (0) sizes chunks to ~256 MiB of logits")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    common.add_run_args(parser, "logprob_memory", threads=0)
    args = parser.parse_args()

    work, src = common.start(args, "Log-prob memory: chunked vs full logits")
    B, T, C, V, H = args.batch, args.seq, args.completion, args.vocab, args.hidden
    spec = {k: getattr(args, k) for k in ("vocab", "hidden", "layers", "batch", "seq", "completion", "seed", "threads")}
    spec["alignlab_src"] = str(src)
    methods = [f"chunked-{c}" for c in args.chunks] + ["full"]
    full_logits = B * T * V * 4
    params = V * H + args.layers * (4 * H * H + 3 * H * 4 * H)
    print(f"model: vocab {V:,}, hidden {H}, {args.layers} layers, tied embeddings, ~{params / 1e6:.1f}M parameters "
          f"({params * 4 / GIB:.2f} GiB fp32); batch {B} x {T} tokens, {C} completion tokens each")
    print(f"analytic: full logits B*T*V*4 = {full_logits / 2**20:.0f} MiB; one chunk of alignlab's logits "
          + ", ".join(f"{min(c, B * C)}*V*4 = {min(c, B * C) * V * 4 / 2**20:.0f} MiB" for c in args.chunks))

    check = common.run_worker(SCRIPT, "check", spec, work, "check")
    print(f"agreement (2 x 64 tokens): max |log-prob diff| {check['max_abs_logp_diff']:.2e}, "
          f"max |grad diff| {check['max_abs_grad_diff']:.2e} (max |grad| {check['max_abs_grad']:.2e})")

    runs = {m: [] for m in methods}
    stamp = time.strftime("%H%M%S")
    for r, order in enumerate(common.rotations(methods, args.rounds)):
        for method in order:
            result = common.run_worker(SCRIPT, "measure", {**spec, "method": method}, work, f"r{r}-{method}-{stamp}")
            result["delta"] = result["vmhwm_mib"] - result["rss_before_mib"]
            runs[method].append(result)
            print(f"round {r + 1}/{args.rounds} {method:12s} peak RSS {result['vmhwm_mib']:7.0f} MiB "
                  f"(+{result['delta']:.0f} MiB over {result['rss_before_mib']:.0f})  "
                  f"forward+backward {result['forward_backward_s']:.1f} s  [threads {result['torch_threads']}, "
                  f"load {common.load_average():.1f}]", flush=True)

    def med(method, key):
        return common.median([run[key] for run in runs[method]])

    print()
    print(f"## Peak memory of one forward+backward (median of {args.rounds} rounds)")
    rows = []
    for method in methods:
        rows.append([
            label(method), med(method, "vmhwm_mib"), med(method, "ru_maxrss_mib"), med(method, "rss_before_mib"),
            med(method, "delta"), med(method, "peak_after_forward_mib") - med(method, "rss_before_mib"),
            med(method, "forward_backward_s"),
            common.median([f["delta"] / run["delta"] for f, run in zip(runs["full"], runs[method])]),
        ])
    print(common.table(
        ["method", "peak RSS MiB", "ru_maxrss MiB", "RSS before MiB", "peak - before MiB", "forward-only peak - before MiB",
         "forward+backward s", "full / this (peak - before)"],
        rows,
    ))
    print(f"analytic size of the full [B, T, V] float32 logits: {full_logits / 2**20:.0f} MiB. 'before' = RSS with the "
          "model and inputs built, just before the forward; 'peak - before' = what the log-prob forward+backward needed, "
          f"including the parameters' gradients (~{params * 4 / 2**20:.0f} MiB, the same for every method).")
    default = f"chunked-{args.chunks[0]}"
    print(f"ratio full / alignlab ({label(default)}): extra memory "
          f"{common.median([f['delta'] / c['delta'] for f, c in zip(runs['full'], runs[default])]):.1f}x, "
          f"peak RSS {med('full', 'vmhwm_mib') / med(default, 'vmhwm_mib'):.1f}x")
    if args.json:
        args.json.write_text(json.dumps({"spec": spec, "check": check, "runs": runs}, indent=1))


if __name__ == "__main__":
    worker = common.load_spec(sys.argv)
    if worker:
        run_worker_role(*worker)
    else:
        main()
