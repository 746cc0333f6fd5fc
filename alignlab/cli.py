"""The `alignlab` command: parses, validates and dispatches. No training logic; the only place that exits.

User errors (bad config, bad data, missing files) print one clear message and exit with code 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from alignlab.errors import AlignlabError, ConfigError, Interrupted
from alignlab.trainers import TRAINERS

TRAIN_HELP = """key=value overrides, e.g. train.lr=1e-4 lora.enabled=true train.report_to=[tensorboard].
Keys are the config's sections and fields (see `alignlab show-config`)."""

# command -> (module, function) so `alignlab --help` does not import torch.


def _add_train_command(sub, name: str, summary: str) -> None:
    parser = sub.add_parser(name, help=summary, description=summary)
    parser.add_argument("-c", "--config", help="YAML config file (defaults come from alignlab.config)")
    parser.add_argument("overrides", nargs="*", help=TRAIN_HELP)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alignlab", description="Post-train language models with SFT, DPO and GRPO: readable, fast, offline-testable."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_train_command(sub, "sft", "supervised fine-tuning on prompt/completion or messages data")
    _add_train_command(sub, "dpo", "Direct Preference Optimization on prompt/chosen/rejected pairs")
    _add_train_command(sub, "grpo", "Group Relative Policy Optimization with verifiable reward functions")

    show = sub.add_parser("show-config", help="print the resolved config (defaults + file + overrides)")
    show.add_argument("-c", "--config")
    show.add_argument("--command", dest="for_command", choices=sorted(TRAINERS) + ["eval", "iterate"], default=None,
                      help="which command's config (default: read from the file, see `alignlab sweep --help`; else sft)")
    show.add_argument("overrides", nargs="*", help=TRAIN_HELP)

    tiny = sub.add_parser("tiny-model", help="write the small random-init offline model and tokenizer (HF format)")
    tiny.add_argument("out_dir")
    tiny.add_argument("--layers", type=int, default=4)
    tiny.add_argument("--hidden", type=int, default=128)
    tiny.add_argument("--heads", type=int, default=4)
    tiny.add_argument("--seed", type=int, default=0)

    _add_inference_commands(sub)
    _add_data_and_grid_commands(sub)

    demo = sub.add_parser("demo", help="the whole SFT -> DPO -> GRPO story on the tiny model, offline, in minutes")
    demo.add_argument("--out", default="runs/demo")
    demo.add_argument("--task", choices=["addition", "count_letters", "tools"], default="addition",
                      help="tools: SFT then GRPO with a multiply tool (3-digit products), default --out runs/demo_tools")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--fast", action="store_true", help="fewer steps (for tests)")
    return parser


def _add_inference_commands(sub) -> None:
    ev = sub.add_parser("eval", help="task metrics (accuracy, pass@k, format, rewards, length) and preference accuracy",
                        description="Evaluate a model on a prompt set (data.prompts) and/or a pair set (data.pairs); "
                        "prints a table and writes JSON (eval.output).")
    ev.add_argument("model", metavar="MODEL_OR_RUN", help="hub id, local model or adapter dir, or run dir (its final/)")
    ev.add_argument("-c", "--config", help="YAML config file with model/data/eval sections")
    ev.add_argument("overrides", nargs="*", help="key=value overrides, e.g. data.prompts=test.jsonl eval.num_samples=8")

    chat = sub.add_parser("chat", help="chat with a model, streaming; --prompt or piped stdin answers once",
                          description="Interactive chat with the chat template: /reset, /system TEXT, /quit. "
                          "With --prompt TEXT or text on a non-terminal stdin it answers once and exits: piped "
                          "text is read whole as one prompt (several lines stay one prompt) unless --each-line.")
    chat.add_argument("model", metavar="MODEL_OR_RUN")
    chat.add_argument("--prompt", help="answer this once and exit")
    chat.add_argument("--each-line", action="store_true",
                      help="answer every non-empty line of piped stdin (or --prompt) as its own prompt, each in a new "
                      "conversation; each answer ends with a newline")
    chat.add_argument("--system", help="system prompt")
    _add_generation_options(chat, max_new_tokens=256)
    chat.add_argument("--temperature", type=float, default=0.7, help="0 = greedy")
    chat.add_argument("--top-p", type=float, default=0.9)
    chat.add_argument("--seed", type=int, default=None)
    chat.add_argument("--tools", help="comma-separated tools the model may call: python, multiply, module:function, "
                      "path/to/file.py:function; each call and its result is shown")
    chat.add_argument("--max-tool-turns", type=int, default=4, help="tool rounds per reply")

    compare = sub.add_parser("compare", help="the same prompts through several models, side by side",
                             description="Greedy answers of each model to the same prompts in one table, plus "
                             "accuracy/format/reward/length per model when the prompts carry answers.")
    compare.add_argument("models", nargs="+", metavar="MODEL_OR_RUN")
    compare.add_argument("--prompts", help="prompt file (default: a built-in set: addition with answers + two questions)")
    compare.add_argument("--rewards", default="answer_format,answer_correct", help="comma-separated reward functions")
    compare.add_argument("--interactive", action="store_true", help="ask for prompts in a loop")
    _add_generation_options(compare, max_new_tokens=64)

    report = sub.add_parser("report", help="one self-contained HTML file with plots, samples and configs of runs")
    report.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    report.add_argument("-o", "--out", help="HTML path (default: RUN_DIR/report.html, or the runs' parent dir)")
    serve = sub.add_parser("vllm-serve", help="a vLLM engine behind an HTTP endpoint, for grpo.vllm_mode=server "
                                              "(generation on other GPUs or another machine)")
    serve.add_argument("model", metavar="MODEL", help="the policy's base model: hub id or local dir")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--dtype", default="auto", help="auto | float32 | bfloat16 | float16")
    serve.add_argument("--max-model-len", type=int, default=2048, help="prompt + completion tokens per sequence")
    serve.add_argument("--gpu-memory-utilization", type=float, default=0.9, help="share of the GPU the engine takes")
    serve.add_argument("--seed", type=int, default=0)


def _add_data_and_grid_commands(sub) -> None:
    pairs = sub.add_parser("pairs", help="ranked or scored responses -> a DPO dataset (prompt/chosen/rejected)",
                           description="Rows with a prompt, responses and scores (higher is better) or ranks "
                           "(1 is best), or raw UltraFeedback rows (instruction, completions with ratings) -> JSONL "
                           "pairs; equal scores are never paired. Prints pairs per prompt and what was dropped and why.")
    pairs.add_argument("input", metavar="IN")
    pairs.add_argument("output", metavar="OUT", help="JSONL file to write")
    pairs.add_argument("--strategy", default="best-vs-worst", choices=["best-vs-worst", "all-pairs", "best-vs-rest"])
    pairs.add_argument("--min-margin", type=float, default=0.0, help="drop pairs whose score difference is smaller")

    iterate = sub.add_parser("iterate", help="iterative (online) DPO: sample, score, pair, train, evaluate; N rounds",
                             description="Each round samples iterate.samples_per_prompt responses per prompt from the "
                             "current policy, scores them with iterate.rewards, builds pairs, trains DPO and evaluates.")
    iterate.add_argument("-c", "--config", help="YAML config with model/data/train/dpo/iterate sections")
    iterate.add_argument("--rounds", type=int, default=None, help="overrides iterate.rounds")
    iterate.add_argument("overrides", nargs="*", help=TRAIN_HELP)

    sweep = sub.add_parser("sweep", help="a grid of runs (key=a,b,c), then a summary table and CSV",
                           description="Every combination of the comma-separated overrides is one run under "
                           "runs/sweep_<time>/<run-name>/; DPO runs share precomputed reference log-probs. "
                           "Failed runs are reported and do not stop the others; the sweep then exits with code 2.")
    sweep.add_argument("-c", "--config", help="YAML config file")
    sweep.add_argument("--command", dest="for_command", choices=sorted(TRAINERS), default=None,
                       help="which trainer (default: read from the config: its first line `# alignlab <command>` "
                       "in a run's config.yaml, a dpo: or grpo: section, or a header comment `alignlab <command> -c "
                       "<this file>`; required when the file does not say)")
    sweep.add_argument("--out", help="sweep directory (default runs/sweep_<time>)")
    sweep.add_argument("--metric", help="sort by this metric (default eval/loss, else loss)")
    sweep.add_argument("--mode", choices=["auto", "min", "max"], default="auto",
                       help="best = min or max of --metric (auto: min for losses, else max)")
    sweep.add_argument("overrides", nargs="*", help="key=v1,v2,... axes of the grid and key=value fixed overrides")


def _add_generation_options(parser, *, max_new_tokens: int) -> None:
    parser.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                        help="auto = bfloat16 on a GPU, float32 on CPU")


def _sweep_command(args) -> str:
    from alignlab.config import infer_command

    if args.for_command:
        return args.for_command
    command = infer_command(args.config)
    if command in TRAINERS:
        return command
    if command is not None:
        raise ConfigError(f"{args.config} is a config for `alignlab {command}`; a sweep runs sft, dpo or grpo")
    where = f"{args.config} does not say which trainer it is for (no dpo: or grpo: section, no `# alignlab <command>` " \
            "first line)" if args.config else "no config file (-c) to tell which trainer to run"
    raise ConfigError(f"{where}: pass --command sft, --command dpo or --command grpo")


def run(args: argparse.Namespace) -> None:
    from alignlab.config import infer_command, load_config, to_yaml

    if args.command in TRAINERS or args.command in ("demo", "eval", "chat", "compare", "iterate", "sweep", "tiny-model"):
        from transformers.utils import logging as hf_logging

        from alignlab.engine.sharding import import_deepspeed_only_when_used

        hf_logging.disable_progress_bar()
        import_deepspeed_only_when_used()

    if args.command in TRAINERS:
        config = load_config(args.command, args.config, args.overrides)
        module, function = TRAINERS[args.command]
        trainer = getattr(importlib.import_module(module), function)
        trainer_run = trainer(config)
        if trainer_run.is_main:  # once, not once per process
            print(f"done: {trainer_run.run_dir}")
    elif args.command == "show-config":
        command = args.for_command or infer_command(args.config) or "sft"
        print(to_yaml(load_config(command, args.config, args.overrides)), end="")
    elif args.command == "vllm-serve":
        from alignlab.generation.vllm import vllm_available, INSTALL_HINT
        from alignlab.generation.vllm_server import serve
        from alignlab.model.loading import ensure_tiny_model, resolve_model_path

        if not vllm_available():
            raise AlignlabError(INSTALL_HINT)
        serve(resolve_model_path(ensure_tiny_model(args.model)), host=args.host, port=args.port, dtype=args.dtype,
              max_model_len=args.max_model_len, gpu_memory_utilization=args.gpu_memory_utilization, seed=args.seed)
    elif args.command == "tiny-model":
        from alignlab.model.tiny import write_tiny_model

        path = write_tiny_model(args.out_dir, layers=args.layers, hidden=args.hidden, heads=args.heads, seed=args.seed)
        print(f"wrote the tiny model to {path}")
    elif args.command == "demo" and args.task == "tools":
        from alignlab.commands.demo.tool_pipeline import run_tool_demo

        run_tool_demo(out="runs/demo_tools" if args.out == "runs/demo" else args.out, seed=args.seed, fast=args.fast)
    elif args.command == "demo":
        from alignlab.commands.demo.pipeline import run_demo

        run_demo(out=args.out, task=args.task, seed=args.seed, fast=args.fast)
    elif args.command == "eval":
        from alignlab.commands.evaluate import eval_command

        eval_command(args.model, args.config, args.overrides)
    elif args.command == "chat":
        from alignlab.commands.chat import chat_command

        chat_command(args.model, prompt=args.prompt, system=args.system, max_new_tokens=args.max_new_tokens,
                     temperature=args.temperature, top_p=args.top_p, dtype=args.dtype, seed=args.seed,
                     each_line=args.each_line, tools=[t for t in (args.tools or "").split(",") if t],
                     max_tool_turns=args.max_tool_turns)
    elif args.command == "compare":
        from alignlab.commands.compare import compare_command

        compare_command(args.models, prompts=args.prompts, rewards=[r for r in args.rewards.split(",") if r],
                        max_new_tokens=args.max_new_tokens, dtype=args.dtype, interactive=args.interactive)
    elif args.command == "pairs":
        from alignlab.data.ranked_pairs import pairs_command

        pairs_command(args.input, args.output, strategy=args.strategy, min_margin=args.min_margin)
    elif args.command == "iterate":
        from alignlab.commands.iterate import iterate_command

        iterate_command(args.config, args.overrides, rounds=args.rounds)
    elif args.command == "sweep":
        from alignlab.commands.sweep import sweep_command

        sweep_command(args.config, args.overrides, command=_sweep_command(args), out=args.out, metric=args.metric,
                      mode=args.mode)
    elif args.command == "report":
        from alignlab.commands.report import write_report

        print(f"wrote {write_report(args.run_dirs, args.out)}")


def main(argv=None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Our own progress bars say what is happening; transformers' per-load bars are noise here.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except Interrupted as exc:
        if os.environ.get("RANK", "0") == "0":  # every process stopped; one says how to resume
            print(f"alignlab {args.command}: {exc}", file=sys.stderr)
        return 130
    except AlignlabError as exc:
        print(f"alignlab {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
