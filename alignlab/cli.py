"""The `alignlab` command: parses, validates and dispatches. No training logic; the only place that exits.

User errors (bad config, bad data, missing files) print one clear message and exit with code 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from alignlab.errors import AlignlabError

TRAIN_HELP = """key=value overrides, e.g. train.lr=1e-4 lora.enabled=true report_to=[tensorboard].
Keys are the config's sections and fields (see `alignlab show-config`)."""

# command -> (module, function) so `alignlab --help` does not import torch.
TRAINERS = {
    "sft": ("alignlab.trainers.sft", "train_sft"),
    "dpo": ("alignlab.trainers.dpo", "train_dpo"),
    "grpo": ("alignlab.trainers.grpo", "train_grpo"),
}


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
    show.add_argument("--command", dest="for_command", choices=sorted(TRAINERS), default=None,
                      help="which trainer's config (default: guessed from the file's sections, else sft)")
    show.add_argument("overrides", nargs="*", help=TRAIN_HELP)

    tiny = sub.add_parser("tiny-model", help="write the small random-init offline model and tokenizer (HF format)")
    tiny.add_argument("out_dir")
    tiny.add_argument("--layers", type=int, default=4)
    tiny.add_argument("--hidden", type=int, default=128)
    tiny.add_argument("--heads", type=int, default=4)
    tiny.add_argument("--seed", type=int, default=0)

    demo = sub.add_parser("demo", help="the whole SFT -> DPO -> GRPO story on the tiny model, offline, in minutes")
    demo.add_argument("--out", default="runs/demo")
    demo.add_argument("--task", choices=["addition", "count_letters"], default="addition")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--fast", action="store_true", help="fewer steps (for tests)")
    return parser


def _guess_command(path):
    if not path:
        return "sft"
    import yaml

    try:
        with open(path) as handle:
            sections = yaml.safe_load(handle) or {}
    except (OSError, yaml.YAMLError):
        return "sft"
    for name in ("dpo", "grpo"):
        if isinstance(sections, dict) and name in sections:
            return name
    return "sft"


def run(args: argparse.Namespace) -> None:
    from alignlab.config import load_config, to_yaml

    if args.command in TRAINERS or args.command == "demo":
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

    if args.command in TRAINERS:
        config = load_config(args.command, args.config, args.overrides)
        module, function = TRAINERS[args.command]
        trainer = getattr(importlib.import_module(module), function)
        trainer_run = trainer(config)
        print(f"done: {trainer_run.run_dir}")
    elif args.command == "show-config":
        command = args.for_command or _guess_command(args.config)
        print(to_yaml(load_config(command, args.config, args.overrides)), end="")
    elif args.command == "tiny-model":
        from alignlab.demo.tiny import write_tiny_model

        path = write_tiny_model(args.out_dir, layers=args.layers, hidden=args.hidden, heads=args.heads, seed=args.seed)
        print(f"wrote the tiny model to {path}")
    elif args.command == "demo":
        from alignlab.demo.pipeline import run_demo

        run_demo(out=args.out, task=args.task, seed=args.seed, fast=args.fast)


def main(argv=None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Our own progress bars say what is happening; transformers' per-load bars are noise here.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except AlignlabError as exc:
        print(f"alignlab {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
