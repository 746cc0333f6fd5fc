"""Typed, closed run configs: the only home of defaults.

A config is a dataclass of sections (`model`, `data`, `train`, `lora`, plus `dpo` or `grpo`).
It is built from a YAML file and `a.b=c` overrides; an unknown key fails before any work with the
closest valid key, and a value of the wrong type names the key and the type expected.
This module imports nothing from alignlab but the error type.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from alignlab.errors import ConfigError


@dataclass
class ModelConfig:
    name_or_path: str = "tiny"  # hub id or local dir; "tiny" = the offline model alignlab builds
    dtype: str = "float32"  # float32 | bfloat16 | float16 | auto
    trust_remote_code: bool = False
    load_in_4bit: bool = False  # QLoRA (bitsandbytes NF4, CUDA only)
    attn_implementation: Optional[str] = None
    revision: Optional[str] = None  # a hub model's branch, tag or commit


@dataclass
class LoraConfig:
    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: Optional[list[str]] = None  # None = per-architecture default (models.py)


@dataclass
class DataConfig:
    train: Any = None  # path / hub id (str), or a list of sources (dicts with path, weight, ...)
    eval: Optional[str] = None
    eval_fraction: float = 0.0  # split this share off train when no eval set is given
    split: str = "train"  # split of a hub dataset
    eval_split: Optional[str] = None
    columns: dict[str, str] = field(default_factory=dict)  # our name -> the dataset's column name
    system_prompt: Optional[str] = None  # prepended as a system message to every prompt
    chat_template: bool = True  # apply the tokenizer's chat template when it has one
    on_long: str = "drop"  # rows longer than train.max_length: drop (with a warning) | truncate | error
    skip_bad_rows: bool = False  # count and skip malformed rows instead of failing
    max_rows: Optional[int] = None
    format: str = "auto"  # auto (detected from the columns) | one of DATA_FORMATS (alignlab/data/public_formats.py)
    min_score_ratio: Optional[float] = None  # Stanford SHP: keep pairs whose score_ratio is at least this


# data.format's values: the table of alignlab/data/public_formats.py (a test keeps the two lists equal).
DATA_FORMATS = ("auto", "preference", "shp", "webgpt", "ultrafeedback",
                "prompt", "gsm8k", "math-answer", "math", "math-messages")


@dataclass
class TrainConfig:
    output_dir: Optional[str] = None  # None = runs/<command>_<model>_lr<lr>_<date-time>
    max_steps: int = 100  # optimizer steps
    batch_size: int = 8  # per process and micro-batch: sequences (SFT), pairs (DPO), prompts (GRPO)
    grad_accum: int = 1
    sort_by_length: bool = True  # micro-batches of one step formed from length-sorted examples: same gradient, less padding
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    lr_scheduler: str = "constant"  # constant | linear | cosine (transformers' schedulers)
    max_grad_norm: float = 1.0  # 0 = no clipping
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    max_length: int = 512
    seed: int = 0
    mixed_precision: str = "no"  # no | bf16 | fp16 (accelerate)
    gradient_checkpointing: bool = False
    log_every: int = 1
    eval_every: int = 0  # 0 = only at the end
    eval_batch_size: int = 32
    save_every: int = 0  # 0 = only the final checkpoint
    save_total_limit: Optional[int] = None
    resume: Any = False  # true = continue the run in output_dir; or a run directory path; auto = continue one if there
    report_to: list[str] = field(default_factory=list)  # tensorboard, wandb
    progress: bool = True
    max_bad_steps: int = 5  # consecutive non-finite losses before aborting


@dataclass
class DPOConfig:
    beta: float = 0.1
    loss_type: str = "sigmoid"  # a key of alignlab.losses.dpo.DPO_LOSSES
    label_smoothing: float = 0.0
    sft_weight: float = 0.0  # RPO: weight of the NLL term on chosen
    # Per-token mean log-probs instead of sums. None = on for IPO (its 1/(2 beta) target is set for
    # per-token margins, as TRL and the IPO authors do), off for the other losses.
    length_normalize: Optional[bool] = None
    reference: str = "auto"  # auto | adapter | copy | none (reference-free, SimPO style)
    precompute_ref: bool = True
    ref_cache_dir: Optional[str] = None  # None = <runs root>/.ref_cache
    logprob_chunk_size: int = 0  # rows per LM-head chunk; 0 = auto (about 256 MiB of float32 logits)
    num_samples_logged: int = 4  # eval prompts answered greedily at each eval, into samples.jsonl (0 = none)
    sample_max_new_tokens: int = 64


@dataclass
class GRPOConfig:
    num_generations: int = 8  # G completions per prompt
    max_completion_length: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    rewards: list[str] = field(default_factory=lambda: ["answer_format", "answer_correct"])
    reward_weights: Optional[list[float]] = None
    reward_errors: str = "raise"  # raise | none (score a failing row None)
    scale_rewards: str = "group"  # group | batch | none (Dr. GRPO)
    loss_type: str = "dapo"  # grpo | bnpo | dapo | dr_grpo
    beta: float = 0.0  # KL coefficient; 0 = no reference model
    epsilon_low: float = 0.2
    epsilon_high: float = 0.2
    num_iterations: int = 1  # mu: policy updates per rollout batch
    skip_zero_std_groups: bool = False  # dynamic sampling (DAPO)
    max_resample_rounds: int = 3
    rollout_batch_size: int = 512  # completions decoded together: bounds the KV cache's peak memory
    backend: str = "hf"  # hf (alignlab's KV-cache sampler) | vllm (a colocated vLLM engine; pip install ".[vllm]")
    vllm_gpu_memory_utilization: float = 0.3  # share of GPU memory the engine takes (weights + KV cache)
    vllm_sleep: bool = False  # GPU: release the engine's KV cache while training (vLLM sleep mode)
    vllm_max_model_len: Optional[int] = None  # None = train.max_length
    vllm_importance_sampling_cap: float = 3.0  # truncated importance sampling of the sampler/trainer gap; 0 = off
    eval_max_prompts: int = 200
    num_samples_logged: int = 4


@dataclass
class SFTRunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class DPORunConfig(SFTRunConfig):
    dpo: DPOConfig = field(default_factory=DPOConfig)


@dataclass
class GRPORunConfig(SFTRunConfig):
    grpo: GRPOConfig = field(default_factory=GRPOConfig)


@dataclass
class IterateConfig:
    """`alignlab iterate`: rounds of sample -> score -> pair -> DPO -> evaluate (alignlab/iterate.py)."""

    rounds: int = 2
    prompts: Optional[str] = None  # prompt file / hub id to sample from (a prompt plus reward columns, e.g. answer)
    eval_prompts: Optional[str] = None  # held-out prompts evaluated after every round (None = no task eval)
    prompts_per_round: Optional[int] = None  # a fresh random subset each round; None = every prompt
    samples_per_prompt: int = 4  # K responses sampled per prompt from the current policy
    rewards: list[str] = field(default_factory=lambda: ["answer_format", "answer_correct"])  # GRPO's registry
    reward_weights: Optional[list[float]] = None
    strategy: str = "best-vs-worst"  # best-vs-worst | best-vs-rest | all-pairs (alignlab pairs)
    min_margin: float = 0.0
    max_new_tokens: int = 32
    temperature: float = 1.0
    eval_samples: int = 4  # sampled completions per eval prompt for eval/sampled_reward (0 = greedy only)
    eval_max_prompts: int = 200
    backend: str = "hf"  # hf | vllm: the engine that samples each round's responses and evaluates


@dataclass
class IterateRunConfig(DPORunConfig):
    iterate: IterateConfig = field(default_factory=IterateConfig)


RUN_CONFIGS = {"sft": SFTRunConfig, "dpo": DPORunConfig, "grpo": GRPORunConfig, "iterate": IterateRunConfig}


# ---------------------------------------------------------------- parsing


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads 1e-4 (no dot) as a string; users mean a float, in files and lists alike."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def parse_value(text: str) -> Any:
    """An override's value as YAML reads it, so `true`, `3`, `1e-4`, `[a,b]` and `null` work."""
    try:
        value = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError:
        return text
    # YAML 1.1 reads 1e-4 as a string; users mean a float.
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _closest(name: str, options: list[str], prefix: str = "") -> str:
    match = difflib.get_close_matches(str(name), options, n=1, cutoff=0.5)  # YAML keys may be numbers or null
    if match:
        return f" Did you mean '{prefix}{match[0]}'?"
    return f" Valid keys: {', '.join(prefix + o for o in sorted(options))}."


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):  # Optional[int] is "int or null", not "Optional"
        return " or ".join("null" if a is type(None) else _type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        return str(tp).replace("typing.", "")
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`, converting the safe cases (int -> float, str -> list)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"config key '{key}' expects {_type_name(tp)}, got {value!r}")
    if origin is list:
        (item_tp,) = typing.get_args(tp) or (Any,)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]  # report_to=wandb means [wandb]
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}' expects a list, got {value!r}")
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' expects a mapping, got {value!r}")
        _, value_tp = typing.get_args(tp) or (Any, Any)
        return {str(k): _coerce(v, value_tp, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}' expects true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"config key '{key}' expects an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and value.strip().lower() in ("inf", "+inf"):  # YAML spells it .inf
            return float("inf")
        raise ConfigError(f"config key '{key}' expects a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"config key '{key}' expects a string, got {value!r}")
    return value


# YAML 1.1 reads `no` (and `off`) as false, so `mixed_precision: no`, the documented default,
# arrives as False: for these keys false stands for the word.
_FALSE_MEANS = {"train.mixed_precision": "no"}


def _sections(root: Any) -> dict[str, Any]:
    values = {f.name: getattr(root, f.name) for f in dataclasses.fields(root)}
    return {name: value for name, value in values.items() if dataclasses.is_dataclass(value)}


def _suggest(key: str, names: list[str], prefix: str, root: Any) -> str:
    """The key meant: the same field in another section first (`lr` -> `train.lr`), then the
    nearest spelling of a key here or, at the top level, of any section's field (`lrr` -> `train.lr`)."""
    key = str(key)  # YAML keys may be numbers or null
    fields: dict[str, list[str]] = {}  # field name -> its dotted keys
    for section_name, section in _sections(root).items():
        for f in dataclasses.fields(section):
            fields.setdefault(f.name, []).append(f"{section_name}.{f.name}")
    if key in fields:
        return f" Did you mean {' or '.join(repr(k) for k in fields[key])}?"
    options = {name: [f"{prefix}{name}"] for name in names}  # a key here wins a tie with a field elsewhere
    if not prefix:
        options.update({name: dotted for name, dotted in fields.items() if name not in options})
    match = difflib.get_close_matches(key, list(options), n=1, cutoff=0.5)
    if match:
        return f" Did you mean {' or '.join(repr(k) for k in options[match[0]])}?"
    return _closest(key, names, prefix)


def _set_section(section: Any, values: dict, prefix: str, root: Any = None, set_keys: Optional[set] = None) -> None:
    root = section if root is None else root
    hints = typing.get_type_hints(type(section))
    names = [f.name for f in dataclasses.fields(section)]
    for key, value in values.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"unknown config key '{full}'.{_suggest(key, names, prefix, root)}")
        current = getattr(section, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{full}' is a section; give it a mapping, e.g. {full}.<key>=...")
            _set_section(current, value, f"{full}.", root, set_keys)
        else:
            if value is False and full in _FALSE_MEANS:
                value = _FALSE_MEANS[full]
            setattr(section, key, _coerce(value, hints[key], full))
            if set_keys is not None:
                set_keys.add(full)


def _nest(dotted: dict[str, Any]) -> dict:
    nested: dict = {}
    for key, value in dotted.items():
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"config key '{key}' sets a field inside a value that is not a section")
        node[parts[-1]] = value
    return nested


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    dotted = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value (e.g. train.lr=1e-4)")
        key, text = item.split("=", 1)
        dotted[key.strip()] = parse_value(text)
    return dotted


def load_config(command: str, path: Optional[str] = None, overrides: Optional[list[str]] = None):
    """The run config for `command` from a YAML file plus `a.b=c` overrides (overrides win)."""
    config = RUN_CONFIGS[command]()
    set_keys: set[str] = set()
    if path:
        file = Path(path)
        if not file.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            values = yaml.load(file.read_text(encoding="utf-8"), Loader=_Loader) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path} is not UTF-8 text") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: expected a mapping of sections at the top level")
        _set_section(config, values, "", set_keys=set_keys)
    if overrides:
        _set_section(config, _nest(parse_overrides(overrides)), "", set_keys=set_keys)
    validate(config)
    config._set_keys = frozenset(set_keys)  # not a field: to_dict and config.yaml leave it out
    return config


def was_set(config, key: str) -> bool:
    """Whether the dotted `key` was given in the config file or on the command line (not for a
    default, nor in a config built in code)."""
    return key in getattr(config, "_set_keys", ())


def infer_command(path: Optional[str]) -> Optional[str]:
    """The command a config file is for, or None when it does not say: the `# alignlab <command>`
    line that alignlab writes first in a run's config.yaml, a section only that command has
    (iterate, dpo, grpo, eval), or the shipped configs' header naming the file
    (`alignlab sft -c configs/sft_tiny.yaml`)."""
    if not path:
        return None
    try:
        text = Path(path).read_text(encoding="utf-8")
        values = yaml.load(text, Loader=_Loader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    first = re.match(r"#\s*alignlab\s+(\w+)", text)
    if first and first.group(1) in RUN_CONFIGS:
        return first.group(1)
    for name in ("iterate", "dpo", "grpo", "eval"):
        if isinstance(values, dict) and name in values:
            return name
    named = set(re.findall(rf"^#.*\balignlab\s+(\w+)\s+-c\s+\S*\b{re.escape(Path(path).name)}\b", text, re.M))
    named &= set(RUN_CONFIGS)
    return named.pop() if len(named) == 1 else None


# The allowed range of every numeric key that has an obvious one: "> 0", ">= 1", "[0, 1)" (interval
# brackets: [ ] include the bound, ( ) exclude it), and why, where the range is not self-evident.
# Checked when a config loads, so a bad value fails before any work with the key and its range.
RANGES: dict[str, tuple[str, str]] = {
    "train.max_steps": (">= 1", ""),
    "train.batch_size": (">= 1", ""),
    "train.grad_accum": (">= 1", ""),
    "train.max_length": (">= 1", ""),
    "train.lr": ("> 0", ""),
    "train.weight_decay": (">= 0", ""),
    "train.warmup_steps": (">= 0", ""),
    "train.max_grad_norm": (">= 0", "0 = no clipping"),
    "train.adam_beta1": ("[0, 1)", ""),
    "train.adam_beta2": ("[0, 1)", ""),
    "train.log_every": (">= 1", ""),
    "train.eval_every": (">= 0", "0 = only at the end"),
    "train.eval_batch_size": (">= 1", ""),
    "train.save_every": (">= 0", "0 = only the final checkpoint"),
    "train.save_total_limit": (">= 1", "null keeps every checkpoint"),
    "train.max_bad_steps": (">= 1", ""),
    "lora.r": (">= 1", ""),
    "lora.alpha": ("> 0", ""),
    "lora.dropout": ("[0, 1)", ""),
    "data.eval_fraction": ("[0, 1)", ""),
    "data.max_rows": (">= 1", "null reads every row"),
    "dpo.beta": ("> 0", ""),
    "dpo.label_smoothing": ("[0, 0.5)", "at 0.5 each label is as likely flipped as not: the loss prefers neither response"),
    "dpo.sft_weight": (">= 0", ""),
    "dpo.logprob_chunk_size": (">= 0", "0 = auto"),
    "dpo.num_samples_logged": (">= 0", ""),
    "dpo.sample_max_new_tokens": (">= 1", ""),
    "grpo.num_generations": (">= 2", "advantages compare completions within a group: with 1 every advantage is 0"),
    "grpo.max_completion_length": (">= 1", ""),
    "grpo.temperature": ("> 0", ""),
    "grpo.top_p": ("(0, 1]", ""),
    "grpo.top_k": (">= 0", "0 = no top-k"),
    "grpo.beta": (">= 0", "0 = no KL term and no reference model"),
    "grpo.epsilon_low": ("[0, 1)", ""),
    "grpo.epsilon_high": (">= 0", ""),
    "grpo.num_iterations": (">= 1", ""),
    "grpo.max_resample_rounds": (">= 0", ""),
    "grpo.rollout_batch_size": (">= 1", ""),
    "grpo.eval_max_prompts": (">= 1", ""),
    "grpo.num_samples_logged": (">= 0", ""),
    "iterate.rounds": (">= 1", ""),
    "iterate.samples_per_prompt": (">= 2", "pairs need two responses"),
    "iterate.prompts_per_round": (">= 1", "null uses every prompt"),
    "iterate.min_margin": (">= 0", ""),
    "iterate.max_new_tokens": (">= 1", ""),
    "iterate.temperature": ("> 0", ""),
    "iterate.eval_samples": (">= 0", "0 = greedy only"),
    "iterate.eval_max_prompts": (">= 1", ""),
    "eval.num_samples": (">= 1", ""),
    "eval.max_new_tokens": (">= 1", ""),
    "eval.temperature": ("> 0", "greedy accuracy is always measured"),
    "eval.batch_size": (">= 1", ""),
    "eval.beta": ("> 0", ""),
    "eval.max_length": (">= 1", ""),
}


def in_range(value: float, spec: str) -> bool:
    """`value` within `spec` (a RANGES entry): ">= 1", "> 0", "[0, 1)", "(0, 1]". NaN never is."""
    if spec.startswith((">", "<")):
        op, bound = spec.split()
        bound = float(bound)
        return {">": value > bound, ">=": value >= bound, "<": value < bound, "<=": value <= bound}[op]
    low, high = (float(x) for x in spec[1:-1].split(","))
    above = value >= low if spec[0] == "[" else value > low
    below = value <= high if spec[-1] == "]" else value < high
    return above and below


def check_ranges(config) -> None:
    sections = _sections(config)
    for key, (spec, why) in RANGES.items():
        section_name, name = key.split(".")
        section = sections.get(section_name)
        if section is None or not hasattr(section, name):  # a key of another command's config
            continue
        value = getattr(section, name)
        if value is None or isinstance(value, bool):  # null where it is allowed; type errors are caught when set
            continue
        if not in_range(value, spec):
            allowed = spec if spec.startswith((">", "<")) else f"in {spec}"
            raise ConfigError(f"config key '{key}' must be {allowed}, got {value}" + (f" ({why})" if why else ""))


def validate(config) -> None:
    check_ranges(config)
    if isinstance(config, EvalRunConfig):
        return validate_eval(config)
    train = config.train
    if train.lr_scheduler not in ("constant", "linear", "cosine"):
        raise ConfigError(f"train.lr_scheduler must be constant, linear or cosine, got '{train.lr_scheduler}'")
    if train.mixed_precision not in ("no", "bf16", "fp16"):
        raise ConfigError(f"train.mixed_precision must be no, bf16 or fp16, got '{train.mixed_precision}'")
    if config.data.on_long not in ("drop", "truncate", "error"):
        raise ConfigError(f"data.on_long must be drop, truncate or error, got '{config.data.on_long}'")
    if config.data.format not in DATA_FORMATS:
        raise ConfigError(f"data.format must be one of {', '.join(DATA_FORMATS)}, got '{config.data.format}'")
    if config.data.min_score_ratio is not None and config.data.min_score_ratio <= 0:
        raise ConfigError(f"data.min_score_ratio must be positive (or null), got {config.data.min_score_ratio}")
    if config.model.dtype not in ("float32", "bfloat16", "float16", "auto"):
        raise ConfigError(f"model.dtype must be float32, bfloat16, float16 or auto, got '{config.model.dtype}'")
    if hasattr(config, "iterate"):
        it = config.iterate
        if it.strategy not in ("best-vs-worst", "best-vs-rest", "all-pairs"):
            raise ConfigError(f"iterate.strategy must be best-vs-worst, best-vs-rest or all-pairs, got '{it.strategy}'")
        if it.reward_weights is not None and len(it.reward_weights) != len(it.rewards):
            raise ConfigError(f"iterate.reward_weights has {len(it.reward_weights)} values for {len(it.rewards)} rewards")
    if hasattr(config, "grpo"):
        grpo = config.grpo
        if grpo.reward_weights is not None and len(grpo.reward_weights) != len(grpo.rewards):
            raise ConfigError(
                f"grpo.reward_weights has {len(grpo.reward_weights)} values for {len(grpo.rewards)} rewards"
            )
        if grpo.reward_errors not in ("raise", "none"):
            raise ConfigError(f"grpo.reward_errors must be raise or none, got '{grpo.reward_errors}'")


def to_dict(config) -> dict:
    return dataclasses.asdict(config)


def to_yaml(config) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False, allow_unicode=True)


# ---------------------------------------------------------------- `alignlab eval`


@dataclass
class EvalDataConfig:
    prompts: Optional[str] = None  # prompt file / hub id for task metrics (prompt + answer, GSM8K question/answer)
    pairs: Optional[str] = None  # preference file / hub id for preference accuracy
    split: str = "test"  # split of a hub dataset
    columns: dict[str, str] = field(default_factory=dict)  # our name -> the dataset's column name
    system_prompt: Optional[str] = None
    chat_template: bool = True
    max_rows: Optional[int] = None
    skip_bad_rows: bool = False


@dataclass
class EvalConfig:
    rewards: list[str] = field(default_factory=lambda: ["answer_format", "answer_correct"])
    num_samples: int = 1  # k: sampled completions per prompt for pass@k (1 = greedy only)
    max_new_tokens: int = 256
    temperature: float = 1.0  # for the k samples; accuracy is always also measured greedily
    batch_size: int = 64  # sequences per generate / forward call
    reference: Optional[str] = None  # reference model for DPO implicit rewards, beta * (log pi - log ref)
    beta: float = 0.1
    max_length: int = 1024  # longer pairs are truncated (the preference data policy)
    seed: int = 0
    output: Optional[str] = None  # JSON path; None = <run dir>/eval.json, or runs/eval/<model>_<time>.json
    backend: str = "hf"  # hf | vllm: the engine that generates for task metrics


@dataclass
class EvalRunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: EvalDataConfig = field(default_factory=EvalDataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


RUN_CONFIGS["eval"] = EvalRunConfig


def validate_eval(config: EvalRunConfig) -> None:
    if config.model.dtype not in ("float32", "bfloat16", "float16", "auto"):
        raise ConfigError(f"model.dtype must be float32, bfloat16, float16 or auto, got '{config.model.dtype}'")
