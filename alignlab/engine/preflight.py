"""Everything a training config names that can be checked before any model, tokenizer or data loads.

A run reads its data and loads its model before it needs a reward function, a tool or a tracker,
so a misspelt name used to surface after 20-30 s on the tiny model and minutes on a real one. Each
check here is cheap (a file's existence, a registry lookup, a plugin import, one TCP probe) and fails
with the key and the value at fault; the run directory does not exist yet when it fails. What cannot
be checked without loading (columns of a hub dataset, a prompt's length in tokens) is left to the
loaders, which name the file, row and field.
"""

from __future__ import annotations

import importlib.util

from alignlab.errors import AlignlabError, ConfigError, DataError


def preflight(config) -> None:
    """Check `config` (a training run's: sft, dpo, grpo) before any work; raise the first problem."""
    check_data_sources(config.data)
    check_model(config.model)
    check_trackers(config.train.report_to)
    if hasattr(config, "dpo"):
        check_dpo(config)
    if hasattr(config, "grpo"):
        check_grpo(config.grpo)
        if "judge" in config.grpo.rewards:
            check_judge(config.judge)


def check_data_sources(data) -> None:
    """Every local data file data.train (a path or a mixture's sources) and data.eval name exists."""
    from alignlab.data.io import check_source
    from alignlab.data.mixture import is_mixture, parse_sources

    if not data.train:
        raise DataError("no training data: set data.train to a .jsonl/.json/.parquet/.csv file or a dataset id")
    if is_mixture(data.train):
        sources = parse_sources(data.train, columns=data.columns, split=data.split)
        for number, source in enumerate(sources):
            check_source(source.path, f"data.train[{number}].path")
    else:
        check_source(data.train, "data.train")
    if data.eval:
        check_source(data.eval, "data.eval")


def check_model(model) -> None:
    """model.name_or_path is a model, adapter or run directory, or a hub id that can be loaded now
    (the hub reachable and not switched off, or the model in the local cache)."""
    from alignlab.model.loading import hub_options, resolve_model_path

    if model.name_or_path == "tiny":  # written on first use
        return
    try:
        hub_options(resolve_model_path(model.name_or_path), model.revision)
    except AlignlabError as exc:  # the loaders' message, with the key it is about
        raise ConfigError(f"model.name_or_path: {exc}") from None


def check_trackers(report_to: list[str]) -> None:
    packages = {"tensorboard": "tensorboard", "wandb": "wandb"}
    for name in report_to:
        if name in ("none", ""):
            continue
        if name not in packages:
            raise ConfigError(f"train.report_to: unknown tracker '{name}' (use tensorboard or wandb)")
        if importlib.util.find_spec(packages[name]) is None:
            raise ConfigError(f"train.report_to=[{name}] needs the {packages[name]} package: pip install {packages[name]}")


def check_dpo(config) -> None:
    from alignlab.losses.dpo import DPO_LOSSES

    dpo = config.dpo
    if dpo.loss_type not in DPO_LOSSES:
        raise ConfigError(f"dpo.loss_type '{dpo.loss_type}' is not one of {sorted(DPO_LOSSES)}")
    if dpo.reference not in ("auto", "adapter", "copy", "none"):
        raise ConfigError(f"dpo.reference must be auto, adapter, copy or none, got '{dpo.reference}'")
    if dpo.reference == "adapter" and not config.lora.enabled:
        raise ConfigError("dpo.reference=adapter needs LoRA (lora.enabled=true)")


def check_grpo(grpo) -> None:
    """Reward functions, tools, the tool-call parser and the environment resolve (plugins are imported,
    as the run would); the vLLM backend is installed; a vLLM server answers at its address."""
    from alignlab.rewards import RewardError, get_reward

    from alignlab.model.loading import resolve_model_path

    for key in ("rewards", "eval_rewards"):
        for number, spec in enumerate(getattr(grpo, key, [])):
            if spec == "judge":  # an LLM judge: check_judge
                continue
            try:
                if isinstance(spec, str) and spec.strip().startswith("rm:"):  # a reward model: is it there?
                    resolve_model_path(spec.strip()[3:])
                else:
                    get_reward(spec)
            except (RewardError, AlignlabError) as exc:
                raise ConfigError(f"grpo.{key}[{number}]: {exc}") from None
    if grpo.tools or grpo.environment:
        from alignlab.generation.tools import get_tool_parser, load_environment, load_tools, tool_schemas

        tools = load_tools(grpo.tools)
        if tools:
            tool_schemas(tools)
            get_tool_parser(grpo.tool_parser)
        load_environment(grpo.environment)
    if grpo.backend == "vllm":
        check_vllm(grpo)


def check_judge(judge) -> None:
    """The `judge` reward: its rubric reads, and one real request gets an answer from its server (a down
    server, a wrong model name or a refused key fails here, in one line, before any model loads)."""
    from alignlab.scoring.judge_reward import judge_client

    judge_client(judge, preflight=True).close()


def check_vllm(grpo) -> None:
    from alignlab.generation.vllm import INSTALL_HINT, vllm_available

    if grpo.vllm_mode == "colocate" and not vllm_available():
        raise ConfigError(f"grpo.backend=vllm: {INSTALL_HINT}")
    if grpo.vllm_mode == "server" and not server_listening(grpo.vllm_server):
        raise ConfigError(f"grpo.vllm_server: cannot reach the vLLM server at {grpo.vllm_server} (nothing answers "
                          "there): start one first with `alignlab vllm-serve MODEL --host HOST --port PORT`, or set "
                          "grpo.vllm_server to its host:port")


def server_listening(address: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to `host:port` (or `http://host:port`) opens within `timeout` seconds."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(address if "://" in address else f"http://{address}")
    try:
        with socket.create_connection((parts.hostname, parts.port or 80), timeout=timeout):
            return True
    except (OSError, TypeError, ValueError):  # refused, no route, no DNS; no host or a bad port in the address
        return False
