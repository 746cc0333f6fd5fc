"""The config sections and the run config of each command (dataclasses): the only home of defaults."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional


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
    # SFT `messages` rows: auto (per_turn where the chat template rewrites earlier turns, e.g. Qwen3 / R1-Distill
    # drop their reasoning; else all_turns) | per_turn (one example per assistant turn) | last_turn | all_turns
    multi_turn: str = "auto"
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
    max_steps: int = 100  # optimizer steps; when set, it wins over num_epochs
    num_epochs: Optional[float] = None  # passes over the training data: max_steps = ceil(epochs x rows / global batch)
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
    # org/name: at the end, push final/ (a LoRA run: its adapter) and a model card to the Hub, as `alignlab push` does
    push_to_hub: Optional[str] = None
    hub_private: bool = False  # create the push_to_hub repository private
    num_threads: Any = "auto"  # torch CPU threads: auto (OMP_NUM_THREADS, else half the cores on CPU) | N


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
    loss_type: str = "dapo"  # grpo | bnpo | dapo | dr_grpo | cispo (MiniMax-M1: capped, stop-gradient IS weights)
    importance_sampling_level: str = "token"  # token | sequence (GSPO: one length-normalised ratio per completion)
    advantage: str = "group"  # group (scale_rewards) | rloo (leave-one-out) | reinforce_pp_baseline (batch-whitened)
    reward_aggregation: str = "sum_then_normalize"  # | normalize_then_sum (GDPO: each reward by its group first)
    beta: float = 0.0  # KL coefficient; 0 = no reference model
    epsilon_low: float = 0.2
    epsilon_high: float = 0.2
    num_iterations: int = 1  # mu: policy updates per rollout batch
    skip_zero_std_groups: bool = False  # dynamic sampling (DAPO)
    max_resample_rounds: int = 3
    rollout_batch_size: int = 512  # completions decoded together: bounds the KV cache's peak memory
    disable_dropout: bool = True  # the trained forward is the function that sampled (ratios, mismatch metric)
    backend: str = "hf"  # hf (alignlab's KV-cache sampler) | vllm (vLLM; pip install ".[vllm]")
    vllm_mode: str = "colocate"  # colocate (an engine in each training process) | server (alignlab vllm-serve)
    vllm_server: str = "127.0.0.1:8000"  # host:port of `alignlab vllm-serve`, for vllm_mode=server
    vllm_sync: str = "merged"  # LoRA, colocated: merged (W + scale*BA, layer by layer) | adapter (vLLM's LoRA support)
    vllm_gpu_memory_utilization: float = 0.3  # share of GPU memory the engine takes (weights + KV cache)
    vllm_sleep: bool = False  # GPU: release the engine's weights and KV cache while training (vLLM sleep mode)
    vllm_max_model_len: Optional[int] = None  # None = train.max_length
    vllm_importance_sampling_cap: float = 3.0  # truncated importance sampling of the sampler/trainer gap; 0 = off
    # token_truncate | token_mask | sequence_truncate | sequence_mask (TRL 1.16's default): losses/grpo.py
    vllm_importance_sampling_mode: str = "token_truncate"
    # Multi-turn rollouts (alignlab.generation.multi_turn): tools the policy may call, or an environment.
    tools: list[str] = field(default_factory=list)  # python, multiply, module:function, path/to/file.py:function
    tool_parser: str = "qwen"  # qwen (<tool_call>{json}</tool_call>; Qwen2.5/3, Hermes) | module:function
    max_tool_turns: int = 4  # model turns that may act; a trajectory still acting after them is truncated
    tool_timeout: float = 10.0  # seconds per tool call; a call past it is reported to the model as failed
    python_sandbox: str = "isolated"  # the python tool: isolated (own user/mount/PID/net namespaces; refused where
    # the machine allows none) | unsafe (rlimits and an audit hook only: the code can reach what the trainer can)
    environment: Optional[str] = None  # module:Class with reset(**row) -> str, step(text) -> (obs, reward, done)
    environment_reward_weight: float = 1.0  # weight of the summed per-turn environment rewards in the total
    eval_max_prompts: int = 200
    num_samples_logged: int = 4
    # Eval-only rewards (gold checks, e.g. answer_correct): scored and logged at each eval, never trained on.
    # Beside a reward model (rm:PATH) they make reward hacking visible (alignlab/scoring/rewards.py).
    eval_rewards: list[str] = field(default_factory=list)


@dataclass
class RMScoringConfig:
    """How `rm:PATH` rewards score in GRPO and iterate (alignlab/scoring/rewards.py)."""

    normalize: bool = False  # scores -> (s - running mean) / running std over training so far
    clip: Optional[float] = None  # clip scores (after normalisation) to [-clip, clip]
    scoring_batch_size: int = 32  # sequences per reward-model forward


@dataclass
class RMConfig:
    """`alignlab rm`: a Bradley-Terry reward model (alignlab/losses/rm.py, alignlab/trainers/rm.py)."""

    use_margin: bool = True  # subtract the data's `margin` column where a row has one (Llama 2's RM)
    center_coefficient: float = 0.0  # + c (r_c + r_r)^2 per pair, pulling scores towards 0 (TRL's center_rewards_coefficient)
    label_smoothing: float = 0.0  # the preference label taken as right with probability 1 - this


@dataclass
class JudgeConfig:
    """An LLM judge on an OpenAI-compatible server (alignlab/scoring/judge.py): the `judge` reward, pairs, win rates."""

    base_url: Optional[str] = None  # e.g. http://127.0.0.1:8000/v1 (vLLM's server, a hosted API)
    model: Optional[str] = None  # the name the server serves
    api_key_env: str = "OPENAI_API_KEY"  # the key is read from this variable; never written anywhere
    mode: str = "pointwise"  # pointwise | pairwise (vs judge.answer_column, position-swapped) | group (all G at once)
    rubric: str = "helpful"  # helpful | correct | a template file with {prompt}, {completion(s)}, {answer}, ...
    scale: Optional[list[int]] = None  # [min, max] whole-number scores; None = the rubric's (a file: [1, 10])
    answer_column: str = "answer"  # the reference answer (pairwise; a rubric's {answer})
    constrained: str = "auto"  # auto (vLLM structured outputs, else a tolerant parser) | on | off
    temperature: float = 0.0
    max_tokens: int = 16  # per reply (group mode: at least 6 per completion)
    max_concurrency: int = 8  # requests in flight at most
    timeout: float = 60.0  # seconds per request
    max_retries: int = 4  # on 429, 5xx, timeouts and connection errors, with exponential backoff
    backoff: float = 1.0  # seconds before the first retry; doubled each time, with jitter
    max_requests: Optional[int] = None  # the run's request budget (cache hits are free); None = no limit
    cache: bool = True
    cache_dir: Optional[str] = None  # None = ~/.cache/alignlab/judge (or $ALIGNLAB_CACHE/judge)


@dataclass
class DistillConfig:
    """`alignlab distill`: on-policy distillation from a teacher (alignlab/losses/distill.py, alignlab/trainers/distill.py)."""

    teacher: Optional[str] = None  # path, run directory or hub id; must share the student's tokenizer
    loss: str = "reverse_kl"  # reverse_kl (the student's samples, per-token reverse KL as advantage) | jsd (GKD)
    jsd_beta: float = 0.5  # jsd: 0 = forward KL(teacher || student), 1 = reverse KL(student || teacher)
    # Share of batches sampled by the student (on-policy); the rest train on the data's `completion`s
    # (jsd only). TRL's name: `lambda` is a Python keyword.
    lmbda: float = 1.0
    discount: float = 0.0  # reverse_kl: gamma of the discounted future reverse KL in each token's advantage
    num_generations: int = 1  # completions sampled per prompt
    max_completion_length: int = 64
    temperature: float = 1.0  # sampling and every log-prob (student and teacher): softmax(logits / T)
    top_p: float = 1.0
    top_k: int = 0
    rollout_batch_size: int = 512  # completions decoded together
    logprob_chunk_size: int = 0  # jsd: positions per LM-head chunk; 0 = auto (about 256 MiB of float32 logits)
    rewards: list[str] = field(default_factory=lambda: ["answer_format", "answer_correct"])  # eval only: accuracy
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
class RMRunConfig(SFTRunConfig):
    rm: RMConfig = field(default_factory=RMConfig)


@dataclass
class DistillRunConfig(SFTRunConfig):
    distill: DistillConfig = field(default_factory=DistillConfig)


@dataclass
class GRPORunConfig(SFTRunConfig):
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    rm: RMScoringConfig = field(default_factory=RMScoringConfig)


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
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    rm: RMScoringConfig = field(default_factory=RMScoringConfig)


RUN_CONFIGS = {"sft": SFTRunConfig, "dpo": DPORunConfig, "grpo": GRPORunConfig, "iterate": IterateRunConfig,
               "rm": RMRunConfig, "distill": DistillRunConfig}

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
    # diversity/embedding over the k samples: a sentence-transformers id or dir (alignlab.scoring.embeddings);
    # None = the evaluated model's own mean-pooled hidden states (offline; a weaker proxy)
    embedding_model: Optional[str] = None
    batch_size: int = 64  # sequences per generate / forward call
    reference: Optional[str] = None  # reference model for DPO implicit rewards, beta * (log pi - log ref)
    beta: float = 0.1
    max_length: int = 1024  # longer pairs are truncated (the preference data policy)
    seed: int = 0
    output: Optional[str] = None  # JSON path; None = <run dir>/eval.json, or runs/eval/<model>_<time>.json
    backend: str = "hf"  # hf | vllm: the engine that generates for task metrics
    tools: Optional[list[str]] = None  # None = the run's grpo.tools (as grpo.tools otherwise)
    tool_parser: Optional[str] = None  # None = the run's grpo.tool_parser, else qwen
    max_tool_turns: Optional[int] = None  # None = the run's grpo.max_tool_turns, else 4
    environment: Optional[str] = None  # None = the run's grpo.environment
    # Judged win rate against eval.baseline's answers: a pairwise rubric (helpful, correct, or a template file)
    # judged by the `judge` section's server, both orders of each pair; None = no win rate
    judge: Optional[str] = None
    baseline: Optional[str] = None  # the model (hub id, dir, run dir) whose greedy answers are compared


@dataclass
class EvalRunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: EvalDataConfig = field(default_factory=EvalDataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)


RUN_CONFIGS["eval"] = EvalRunConfig


def config_sections(root: Any) -> dict[str, Any]:
    """The sections of a run config (its dataclass-valued fields), by name."""
    values = {f.name: getattr(root, f.name) for f in dataclasses.fields(root)}
    return {name: value for name, value in values.items() if dataclasses.is_dataclass(value)}
