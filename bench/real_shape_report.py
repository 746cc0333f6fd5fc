"""The tables bench/real_shape.py prints (standard library only: the orchestrating process stays light)."""

from __future__ import annotations

import common

FLOPS, BANDWIDTH = 260e9, 26e9  # the machine's fp32 matmul rate and memory read bandwidth (FIELD_NOTES)


def summary(run: dict, row: str) -> dict:
    launch, marks, spans = run["launch"], run["marks"], run["spans"]
    first = marks["loop_start"] - launch
    reference = run.get("reference", {}).get("seconds", 0.0)
    out = {
        "step": common.median(common.steady(run["step_s"], 1)),
        "process": run["process_wall_s"],
        "first_step": first,
        "imports": marks["imports_done"] - launch,
        "model_load": spans.get("model_load", float("nan")),
        "tokenisation": spans.get("tokenisation", float("nan")),
        "reference": reference,
        "peak": run["vmhwm_mib"],
    }
    out["other"] = first - out["imports"] - out["model_load"] - out["tokenisation"] - reference
    if row.startswith("grpo"):
        out["generation"] = common.median(common.steady(run["generation_s"], 1))
        out["length"] = common.median([x for x in run["mean_length"] if x is not None])
    return out


def floors(row: str, info: dict, args) -> tuple[float, float]:
    """(per-step floor s, whole-process floor s) at the roofline: matmul FLOPs (2 per parameter per
    token forward; backward 2 more without weight gradients (LoRA), 4 more with them (full)) over
    260 GFLOP/s, and for decoding the larger of that and reading every weight once per token."""
    params, lora = info["parameters"], row.endswith("lora")
    train = (4 if lora else 6) * params
    if row.startswith("dpo"):
        tokens = 4 * 2 * info["tokens_per_sequence"]  # 4 pairs, chosen and rejected, per step
        step = train * tokens / FLOPS
        return step, args.dpo_steps * (step + 2 * params * tokens / FLOPS)  # + the reference forward of those pairs
    rows, new_tokens = 16, 32
    decode = new_tokens * max(2 * params * rows / FLOPS, 4 * params / BANDWIDTH)
    step = decode + train * rows * (info["grpo_prompt_tokens"] + new_tokens) / FLOPS
    return step, args.grpo_steps * step


def report(runs: dict, args, info: dict) -> None:
    rows = [row for row in args.rows if runs[(row, "ours")]]
    s = {key: [summary(run, key[0]) for run in value] for key, value in runs.items()}

    def med(row, side, key):
        return common.median([x[key] for x in s[(row, side)]])

    def ratio(row, key, invert=False):  # per round, then the median over rounds
        pairs = zip(s[(row, "ours")], s[(row, "trl")])
        return common.median([(o[key] / t[key]) if invert else (t[key] / o[key]) for o, t in pairs])

    print()
    print(f"## {args.layers} layers: time, memory and the first losses (median over {args.rounds} rounds; "
          "ratios within a round, then the median)")
    table = []
    for row in rows:
        step_floor, process_floor = floors(row, info, args)
        for side in ("ours", "trl"):
            label = "alignlab" if side == "ours" else "TRL"
            losses = common.median([run["losses"][0] for run in runs[(row, side)]]), [
                round(x, 4) for x in runs[(row, side)][0]["losses"][:3]]
            table.append([
                row, label, med(row, side, "step"), f"{step_floor / med(row, side, 'step'):.0%}",
                med(row, side, "process"), med(row, side, "first_step"), med(row, side, "peak"),
                "" if side == "ours" else f"{ratio(row, 'step'):.2f}",
                "" if side == "ours" else f"{ratio(row, 'process'):.2f}",
                "" if side == "ours" else f"{ratio(row, 'peak', invert=True):.2f}",
                str(losses[1]),
            ])
    print(common.table(["row", "side", "step s", "step / roofline", "process s", "first step at s", "peak RSS MiB",
                        "step TRL/ours", "process TRL/ours", "RSS ours/TRL", "losses, steps 1-3 (round 1)"], table))
    print("step = median optimizer step, the first left out (alignlab: metrics.jsonl step_seconds; TRL: on_step_begin.."
          "on_step_end); process = launch to exit; first step at = launch to the training loop; roofline = the step's "
          "matmul FLOPs at 260 GFLOP/s (decoding: at least every weight read once per token at 26 GB/s).")
    for row in rows:
        if row.startswith("dpo"):
            gaps = [max(abs(a - b) for a, b in zip(o["losses"], t["losses"])) for o, t in zip(runs[(row, "ours")], runs[(row, "trl")])]
            print(f"{row}: max |loss ours - loss TRL| over all steps, per round: {', '.join(f'{g:.1e}' for g in gaps)}; "
                  f"TRL's tokenised rows identical to alignlab's: {all(r.get('tokens_identical') for r in runs[(row, 'trl')])}")
        checks = {run.get("lora_a_checksum") for side in ("ours", "trl") for run in runs[(row, side)]}
        if row.endswith("lora"):
            print(f"{row}: LoRA A init checksum, both sides: {', '.join(f'{c:.6f}' for c in checks)}")
    grpo = [row for row in rows if row.startswith("grpo")]
    if grpo:
        print()
        print("## GRPO: generation and training per step (median)")
        table = [[row, "alignlab" if side == "ours" else "TRL", med(row, side, "step"), med(row, side, "generation"),
                  med(row, side, "step") - med(row, side, "generation"), med(row, side, "length"),
                  "" if side == "ours" else f"{ratio(row, 'generation'):.2f}"]
                 for row in grpo for side in ("ours", "trl")]
        print(common.table(["row", "side", "step s", "generation s", "training s", "mean completion tokens",
                            "generation TRL/ours"], table))
        gaps = [x for run in runs[(grpo[0], "ours")] for x in run.get("logp_gap", []) if x is not None]
        if gaps:
            print(f"alignlab sampling/sampling_logp_difference/mean ({grpo[0]}): max {max(gaps):.2e}")
    print()
    print("## Startup to the first step and the reference pass (median, seconds)")
    table = []
    for row in rows:
        for side in ("ours", "trl"):
            table.append([row, "alignlab" if side == "ours" else "TRL", med(row, side, "first_step"),
                          med(row, side, "imports"), med(row, side, "model_load"), med(row, side, "tokenisation"),
                          med(row, side, "reference") if side == "ours" and row.startswith("dpo") else "",
                          med(row, side, "other")])
    print(common.table(["row", "side", "first step at", "python + imports", "model load", "tokenisation / trainer setup",
                        "reference pass", "other (accelerate, run dir, optimizer)"], table))
    for row in rows:
        if row.startswith("dpo"):
            ref = runs[(row, "ours")][0]["reference"]
            print(f"{row}: alignlab's reference pass scored {ref['computed']} of the {info['pairs']} pairs (the ones "
                  f"{args.dpo_steps} steps x 4 see) in {ref['seconds']:.1f} s (round 1)")
