"""Seconds per SFT step on the CPU at several torch thread counts, on an idle and a loaded machine.

    python bench/cpu_threads.py                       # settings default,1,cores,auto; 0 and 1 busy processes
    python bench/cpu_threads.py --busy 0,1,2 --steps 12 --hidden 128

Each setting is one short `alignlab sft` run of the tiny model on the addition data (batch 128, as
configs/sft_tiny.yaml) in its own process; the figure is the median `step_seconds` of its steps after
the first two. Settings: `default` = torch's own thread count (no OMP_NUM_THREADS, train.num_threads
set to it), `1`, `cores` = the cores this process may run on (os.sched_getaffinity), `auto` =
alignlab's default (train.num_threads=auto), or any number. `--busy N` starts N single-threaded
busy-loop processes for the duration of a block of runs, to stand in for other jobs on the machine
(killed by their process id afterwards); the load average is printed with every figure, since
other users' jobs add to it. `--nice -20` runs the training runs ahead of every job at the default
priority, the closest a shared machine comes to an idle one.
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

ROOT = Path(__file__).resolve().parent.parent
BUSY_LOOP = "while True: pass"


def torch_default_threads() -> int:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"], env=env,
                         capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def threads_option(setting: str, default: int) -> str:
    if setting == "auto":
        return "auto"
    if setting == "default":
        return str(default)
    if setting == "cores":
        return str(len(os.sched_getaffinity(0)))
    return str(int(setting))


def one_run(work: Path, model: Path, setting: str, default: int, args) -> tuple[float, int, str]:
    """(median s/step, threads the run used, its load average at the start)."""
    out = work / f"run_{setting}_{time.time_ns()}"
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    load = "%.2f %.2f %.2f" % os.getloadavg()
    command = [sys.executable, "-m", "alignlab.cli", "sft", f"model.name_or_path={model}",
               f"data.train={ROOT / 'data/addition_sft.jsonl'}", f"train.output_dir={out}", "train.progress=false",
               f"train.max_steps={args.steps}", "train.batch_size=128", "train.lr=2e-3", "train.max_length=64",
               f"train.num_threads={threads_option(setting, default)}"]
    nice = (lambda: os.nice(args.nice)) if args.nice else None
    subprocess.run(command, env=env, cwd=work, check=True, capture_output=True, text=True, preexec_fn=nice)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    seconds = [r["step_seconds"] for r in records if "step_seconds" in r][2:]
    used = next((line for line in (out / "train.log").read_text().splitlines() if "torch threads" in line), "")
    threads = int(used.split("torch threads: ")[1].split()[0]) if used else -1
    return statistics.median(seconds), threads, load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", default="default,1,cores,auto")
    parser.add_argument("--busy", default="0,1", help="busy-loop processes started for each block, comma-separated")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=128, help="the tiny model's width (128 = alignlab's tiny)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--nice", type=int, default=0, help="niceness of the training runs; -20 (root) gives them the "
                        "cores ahead of other jobs at nice 0: a stand-in for an idle machine on a shared one")
    args = parser.parse_args()
    default = torch_default_threads()
    print(f"cores available {len(os.sched_getaffinity(0))}, os.cpu_count() {os.cpu_count()}, torch's default "
          f"threads {default}; model hidden {args.hidden} x {args.layers} layers; {args.steps} steps of 128; "
          f"nice {args.nice}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = work / "model"
        subprocess.run([sys.executable, "-m", "alignlab.cli", "tiny-model", str(model), "--hidden", str(args.hidden),
                        "--layers", str(args.layers)], check=True, capture_output=True)
        print(f"{'busy':>4} {'setting':>8} {'threads':>7} {'s/step':>8}  load average at start")
        for busy in (int(b) for b in args.busy.split(",")):
            loops = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(busy)]
            try:
                for setting in args.settings.split(","):
                    seconds, threads, load = one_run(work, model, setting, default, args)
                    print(f"{busy:>4} {setting:>8} {threads:>7} {seconds:8.3f}  {load}", flush=True)
            finally:
                for loop in loops:
                    loop.kill()
                    loop.wait()


if __name__ == "__main__":
    main()
