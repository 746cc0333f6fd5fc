"""Checks a loaded config before any work: every numeric key's range, and the choices and lists that
must agree."""

from __future__ import annotations

from alignlab.config.sections import DATA_FORMATS, EvalRunConfig, config_sections
from alignlab.errors import ConfigError


# The LoRA ranks a vLLM engine can be set up for (vLLM's `max_lora_rank` choices, 0.32): an adapter of
# rank r is served by the smallest one >= r.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)

# How the sampler/trainer importance ratio is applied (alignlab.losses.grpo.importance_sampling_weights).
IMPORTANCE_SAMPLING_MODES = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")

# The allowed range of every numeric key that has an obvious one: "> 0", ">= 1", "[0, 1)" (interval
# brackets: [ ] include the bound, ( ) exclude it), and why, where the range is not self-evident.
# Checked when a config loads, so a bad value fails before any work with the key and its range.
RANGES: dict[str, tuple[str, str]] = {
    "train.max_steps": (">= 1", ""),
    "train.num_epochs": ("> 0", "null = train.max_steps decides"),
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
    "rm.center_coefficient": (">= 0", ""),
    "rm.clip": ("> 0", "null = no clipping"),
    "rm.scoring_batch_size": (">= 1", ""),
    "rm.label_smoothing": ("[0, 0.5)", "at 0.5 each label is as likely flipped as not: the loss prefers neither response"),
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
    "grpo.max_tool_turns": (">= 0", "0 = the model may not act on tool results"),
    "grpo.tool_timeout": ("> 0", ""),
    "distill.jsd_beta": ("[0, 1]", "0 = forward KL(teacher || student), 1 = reverse KL(student || teacher)"),
    "distill.lmbda": ("[0, 1]", "the share of batches the student samples"),
    "distill.discount": ("[0, 1]", ""),
    "distill.num_generations": (">= 1", ""),
    "distill.max_completion_length": (">= 1", ""),
    "distill.temperature": ("> 0", ""),
    "distill.top_p": ("(0, 1]", ""),
    "distill.top_k": (">= 0", "0 = no top-k"),
    "distill.rollout_batch_size": (">= 1", ""),
    "distill.logprob_chunk_size": (">= 0", "0 = auto"),
    "distill.eval_max_prompts": (">= 1", ""),
    "distill.num_samples_logged": (">= 0", ""),
    "iterate.rounds": (">= 1", ""),
    "iterate.samples_per_prompt": (">= 2", "pairs need two responses"),
    "iterate.prompts_per_round": (">= 1", "null uses every prompt"),
    "iterate.min_margin": (">= 0", ""),
    "iterate.max_new_tokens": (">= 1", ""),
    "iterate.temperature": ("> 0", ""),
    "iterate.eval_samples": (">= 0", "0 = greedy only"),
    "iterate.eval_max_prompts": (">= 1", ""),
    "judge.temperature": (">= 0", ""),
    "judge.max_tokens": (">= 1", ""),
    "judge.max_concurrency": (">= 1", ""),
    "judge.timeout": ("> 0", "seconds per request"),
    "judge.max_retries": (">= 0", ""),
    "judge.backoff": (">= 0", ""),
    "judge.max_requests": (">= 1", "null = no limit"),
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
    sections = config_sections(config)
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


def validate_judge(config) -> None:
    """The `judge` section's choices (the rubric itself is read when the judge is used: a file may come later)."""
    judge = getattr(config, "judge", None)
    if judge is None:
        return
    if judge.mode not in ("pointwise", "pairwise", "group"):
        raise ConfigError(f"judge.mode must be pointwise, pairwise or group, got '{judge.mode}'")
    if judge.constrained not in ("auto", "on", "off"):
        raise ConfigError(f"judge.constrained must be auto, on or off, got '{judge.constrained}'")
    scale = judge.scale
    if scale is not None and (not isinstance(scale, list) or len(scale) != 2 or scale[0] >= scale[1]
                              or not all(isinstance(v, int) and not isinstance(v, bool) for v in scale)):
        raise ConfigError(f"judge.scale must be [min, max], two whole numbers with min < max (or null), got {scale!r}")


def validate_grpo_objective(grpo) -> None:
    """The GRPO objective's choices (alignlab/losses/grpo.py) and the combinations that would silently do nothing."""
    choices = {"importance_sampling_level": ("token", "sequence"), "advantage": ("group", "rloo", "reinforce_pp_baseline"),
               "reward_aggregation": ("sum_then_normalize", "normalize_then_sum")}
    for key, allowed in choices.items():
        if getattr(grpo, key) not in allowed:
            raise ConfigError(f"grpo.{key} must be one of {', '.join(allowed)}, got '{getattr(grpo, key)}'")
    if grpo.scale_rewards != "group" and (grpo.advantage != "group" or grpo.reward_aggregation != "sum_then_normalize"):
        raise ConfigError(f"grpo.scale_rewards={grpo.scale_rewards} only applies to grpo.advantage=group with "
                          "sum_then_normalize: rloo does not scale, reinforce_pp_baseline and normalize_then_sum whiten "
                          "over the batch; remove grpo.scale_rewards")
    if grpo.reward_aggregation == "normalize_then_sum" and grpo.advantage != "group":
        raise ConfigError("grpo.reward_aggregation=normalize_then_sum whitens the summed rewards over the batch itself "
                          f"(GDPO); remove grpo.advantage={grpo.advantage}")
    if grpo.reward_aggregation == "normalize_then_sum" and grpo.environment:
        raise ConfigError("grpo.reward_aggregation=normalize_then_sum does not cover grpo.environment's rewards yet; "
                          "use sum_then_normalize")


def validate(config) -> None:
    check_ranges(config)
    validate_judge(config)
    if isinstance(config, EvalRunConfig):
        return validate_eval(config)
    train = config.train
    if train.lr_scheduler not in ("constant", "linear", "cosine"):
        raise ConfigError(f"train.lr_scheduler must be constant, linear or cosine, got '{train.lr_scheduler}'")
    if train.mixed_precision not in ("no", "bf16", "fp16"):
        raise ConfigError(f"train.mixed_precision must be no, bf16 or fp16, got '{train.mixed_precision}'")
    threads = train.num_threads
    if threads != "auto" and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"train.num_threads must be auto or a whole number >= 1, got {threads!r}")
    if config.data.on_long not in ("drop", "truncate", "error"):
        raise ConfigError(f"data.on_long must be drop, truncate or error, got '{config.data.on_long}'")
    if config.data.multi_turn not in ("auto", "per_turn", "last_turn", "all_turns"):
        raise ConfigError("data.multi_turn must be auto, per_turn, last_turn or all_turns, "
                          f"got '{config.data.multi_turn}'")
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
        if grpo.backend not in ("hf", "vllm"):
            raise ConfigError(f"grpo.backend must be hf or vllm, got '{grpo.backend}'")
        if grpo.vllm_sync not in ("merged", "adapter"):
            raise ConfigError(f"grpo.vllm_sync must be merged or adapter, got '{grpo.vllm_sync}'")
        if grpo.vllm_mode not in ("colocate", "server"):
            raise ConfigError(f"grpo.vllm_mode must be colocate or server, got '{grpo.vllm_mode}'")
        if grpo.vllm_importance_sampling_mode not in IMPORTANCE_SAMPLING_MODES:
            raise ConfigError("grpo.vllm_importance_sampling_mode must be one of "
                              f"{', '.join(IMPORTANCE_SAMPLING_MODES)}, got '{grpo.vllm_importance_sampling_mode}'")
        adapter_sync = grpo.backend == "vllm" and grpo.vllm_sync == "adapter" and config.lora.enabled
        if adapter_sync and config.lora.r > max(VLLM_LORA_RANKS):
            raise ConfigError(f"lora.r={config.lora.r} with grpo.vllm_sync=adapter: vLLM serves LoRA ranks up to "
                              f"{max(VLLM_LORA_RANKS)}; lower lora.r or use grpo.vllm_sync=merged")
        validate_grpo_objective(grpo)
        if grpo.reward_errors not in ("raise", "none"):
            raise ConfigError(f"grpo.reward_errors must be raise or none, got '{grpo.reward_errors}'")
        if grpo.python_sandbox not in ("isolated", "unsafe"):
            raise ConfigError(f"grpo.python_sandbox must be isolated or unsafe, got '{grpo.python_sandbox}'")

    if hasattr(config, "distill"):
        validate_distill(config.distill)


def validate_distill(distill) -> None:
    if distill.loss not in ("reverse_kl", "jsd"):
        raise ConfigError(f"distill.loss must be reverse_kl or jsd, got '{distill.loss}'")
    if distill.loss == "reverse_kl" and distill.lmbda < 1:
        raise ConfigError(f"distill.lmbda={distill.lmbda} with distill.loss=reverse_kl: the per-token reverse KL is "
                          "a policy gradient on the student's own samples, with no meaning on the data's completions; "
                          "use distill.loss=jsd for a mix of sampled and data batches, or distill.lmbda=1")


def validate_eval(config: EvalRunConfig) -> None:
    if config.model.dtype not in ("float32", "bfloat16", "float16", "auto"):
        raise ConfigError(f"model.dtype must be float32, bfloat16, float16 or auto, got '{config.model.dtype}'")
