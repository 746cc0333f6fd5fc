"""Token picking and the lean sampler against transformers' own generate."""

import pytest
import torch

from alignlab.model.tiny import build_model, build_tokenizer
from alignlab.generation.sampler import generate, pick_token


def test_pick_token_top_k_one_and_tiny_top_p_are_argmax():
    torch.manual_seed(0)
    logits = torch.randn(64, 50)
    assert torch.equal(pick_token(logits, 1.0, 1), logits.argmax(-1))
    assert torch.equal(pick_token(logits, 1e-6, 0), logits.argmax(-1))


def test_pick_token_top_p_keeps_only_the_nucleus():
    # probabilities 0.5, 0.3, 0.15, 0.05: top_p=0.7 keeps the first two tokens only.
    logits = torch.log(torch.tensor([[0.05, 0.5, 0.15, 0.3]])).repeat(4000, 1)
    torch.manual_seed(1)
    picks = pick_token(logits, 0.7, 0)
    counts = torch.bincount(picks, minlength=4).float() / len(picks)
    assert counts[0] == 0 and counts[2] == 0
    assert abs(counts[1] - 0.5 / 0.8) < 0.03 and abs(counts[3] - 0.3 / 0.8) < 0.03


def test_greedy_sampler_matches_transformers_generate_with_left_padding():
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, layers=2, hidden=64, seed=5).eval()
    prompts = [tokenizer("12+34=?")["input_ids"], tokenizer("7+8=?")["input_ids"], tokenizer("99+1=?")["input_ids"]]
    ours = generate(model, tokenizer, prompts, num_generations=2, max_new_tokens=6, greedy=True)
    for row, prompt in enumerate(prompts):
        reference = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                   do_sample=False, max_new_tokens=6, pad_token_id=tokenizer.pad_token_id,
                                   eos_token_id=tokenizer.eos_token_id)[0, len(prompt):]
        for copy in range(2):  # both generations of a prompt are identical when greedy
            got = ours.completion_ids[row * 2 + copy][: len(reference)]
            assert torch.equal(got, reference), (row, copy)


# ------------------------------------------------------------------ synced decoding (FSDP)

EOS, PAD, VOCAB = 3, 0, 5


class _Cache:
    def batch_repeat_interleave(self, repeats):
        pass

    def batch_select_indices(self, indices):
        pass


class _CollectiveModel(torch.nn.Module):
    """Stands in for an FSDP model: every forward is an all-reduce, as FSDP's all-gathers are, so
    processes that run different numbers of forwards hang. Emits EOS from its `eos_at`-th token."""

    def __init__(self, eos_at):
        super().__init__()
        self.eos_at, self.calls = eos_at, 0
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, **_):
        torch.distributed.all_reduce(torch.ones(1))
        self.calls += 1
        logits = torch.zeros(input_ids.shape[0], 1, VOCAB)
        logits[..., EOS if self.calls >= self.eos_at else 1] = 10.0
        return type("Out", (), {"logits": logits, "past_key_values": _Cache()})()


def _decode_on_rank(rank, init_file, results):
    import datetime

    from alignlab.generation.sampler import sample

    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2,
                                         timeout=datetime.timedelta(seconds=30))
    model = _CollectiveModel(eos_at=2 if rank == 0 else 6)  # process 0 is done long before process 1
    ids, _ = sample(model, torch.ones(2, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.long), num_generations=1,
                 max_new_tokens=10, stop_ids=[EOS], pad_id=PAD, greedy=True, synced=True)
    results[rank] = (ids.tolist(), model.calls)
    torch.distributed.destroy_process_group()


def test_synced_decoding_runs_until_every_process_is_done(tmp_path):
    """Process 0 finishes after 2 tokens and keeps stepping (padding) until process 1 finishes after
    6: both run 6 forwards (1 prompt + 5 tokens), and process 0's completions still end at its EOS."""
    import torch.multiprocessing as mp

    results = mp.Manager().dict()
    mp.spawn(_decode_on_rank, args=(str(tmp_path / "init"), results), nprocs=2, join=True)
    ids0, calls0 = results[0]
    ids1, calls1 = results[1]
    assert calls0 == calls1 == 6
    assert ids1 == [[1, 1, 1, 1, 1, EOS]] * 2
    assert ids0 == [[1, EOS, PAD, PAD, PAD, PAD]] * 2


# ------------------------------------------------------------------ finished rows leave the decode batch


def _decode(model, prompts, pad_id, *, compact_at, greedy, top_p=1.0, top_k=0, seed=0):
    from alignlab.data.collate import pad_left
    from alignlab.generation.sampler import sample

    torch.manual_seed(seed)
    ids = pad_left(prompts, pad_id)
    mask = pad_left([[1] * len(p) for p in prompts], 0)
    # 30 of the vocabulary's ids end a completion: rows stop at many different steps.
    return sample(model, ids, mask, num_generations=4, max_new_tokens=40, stop_ids=list(range(40, 70)), pad_id=pad_id,
                  temperature=0.8, top_p=top_p, top_k=top_k, greedy=greedy, compact_at=compact_at)


@pytest.mark.parametrize("greedy,top_p,top_k", [(True, 1.0, 0), (False, 1.0, 0), (False, 0.9, 20)])
def test_dropping_finished_rows_gives_the_same_tokens_and_logps(greedy, top_p, top_k):
    """The same seed gives the same completions whether finished rows leave the batch at once
    (compact_at=0), once a quarter of it is done, or never (compact_at=2): every step draws one
    number per row of the whole batch. Lengths vary, so rows did leave."""
    from alignlab.generation.sampler import completion_mask

    tokenizer = build_tokenizer()
    model = build_model(tokenizer, layers=2, hidden=256, seed=3).eval()
    with torch.no_grad():  # larger weights: greedy completions that do not repeat one token
        for weight in (p for p in model.parameters() if p.dim() == 2):
            weight.mul_(3.0)
    prompts = [tokenizer(t)["input_ids"] for t in ("12+34=?", "7+8=?", "99+1=?", "5+5=?", "hello", "abc")]
    pad = tokenizer.pad_token_id
    never_ids, never_logps = _decode(model, prompts, pad, compact_at=2, greedy=greedy, top_p=top_p, top_k=top_k)
    lengths = completion_mask(never_ids, list(range(40, 70)))[0].sum(1)
    assert len(set(lengths.tolist())) > 3 and lengths.min() < lengths.max() - 5, lengths
    for compact_at in (0.0, 0.25):
        ids, logps = _decode(model, prompts, pad, compact_at=compact_at, greedy=greedy, top_p=top_p, top_k=top_k)
        assert torch.equal(ids, never_ids), compact_at
        assert torch.allclose(logps, never_logps, atol=1e-5), compact_at


def test_inverse_cdf_sampling_follows_the_distribution():
    """pick_token by inversion of the cumulative probabilities: frequencies match softmax, and a
    row's token depends only on its own logits and draw."""
    logits = torch.log(torch.tensor([[0.1, 0.0, 0.6, 0.3]])).repeat(20000, 1)
    torch.manual_seed(2)
    picks = pick_token(logits, 1.0, 0)
    counts = torch.bincount(picks, minlength=4).float() / len(picks)
    assert counts[1] == 0
    assert torch.allclose(counts, torch.tensor([0.1, 0.0, 0.6, 0.3]), atol=0.015)
    uniform = torch.tensor([0.0, 0.0999, 0.1001, 0.6999, 0.7001, 0.9999999])
    rows = logits[:6]
    assert pick_token(rows, 1.0, 0, uniform=uniform).tolist() == [0, 0, 2, 2, 3, 3]
    assert pick_token(rows[2:4], 1.0, 0, uniform=uniform[2:4]).tolist() == [2, 2]


# ------------------------------------------------------------------ LoRA merged while decoding


def _lora_model(dtype=torch.float32):
    from peft import LoraConfig, get_peft_model

    tokenizer = build_tokenizer()
    model = build_model(tokenizer, layers=2, hidden=256, seed=3).to(dtype)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"]))
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if "lora_B" in name:  # a trained adapter: B starts at zero
                weight.normal_(0.0, 0.05, generator=torch.Generator().manual_seed(len(name)))
            elif weight.dim() == 2 and "lora" not in name:
                weight.mul_(3.0)  # greedy completions that do not repeat one token
    return model.eval(), tokenizer


def test_merged_lora_decoding_gives_the_same_tokens():
    """generate merges the adapters for decoding (fp32): the same greedy and sampled tokens as the
    unmerged model, sampler log-probs within float tolerance, and the base weights back within one
    float32 ulp (of the merged weight) once it is done: unmerging rounds."""
    from alignlab.model.loading import merged_lora

    model, tokenizer = _lora_model()
    base = {n: w.detach().clone() for n, w in model.named_parameters() if "base_layer" in n}
    prompts = [tokenizer(t)["input_ids"] for t in ("12+34=?", "7+8=?", "hello", "abc")]
    with merged_lora(model) as merged:
        assert merged and all(m.merged for m in model.modules() if hasattr(m, "lora_A"))
        during = {n: w.detach().clone() for n, w in model.named_parameters() if "base_layer" in n}
    assert any(not torch.equal(during[n], base[n]) for n in base)
    for greedy in (True, False):
        runs = {}
        for merge in (False, True):
            torch.manual_seed(0)
            runs[merge] = generate(model, tokenizer, prompts, num_generations=2, max_new_tokens=24, greedy=greedy,
                                   stop_ids=[10**6], merge_lora=merge)
        assert torch.equal(runs[True].completion_ids, runs[False].completion_ids), greedy
        assert torch.allclose(runs[True].sampling_logps, runs[False].sampling_logps, atol=1e-4)
    assert len(set(runs[True].completion_ids[0].tolist())) > 3  # not one repeated token
    assert not any(m.merged for m in model.modules() if hasattr(m, "lora_A"))
    for name, weight in model.named_parameters():
        if "base_layer" in name:
            # One rounding to the merged weight's precision, one back: an ulp of the larger of the two.
            ulp = torch.finfo(torch.float32).eps * torch.maximum(base[name].abs(), during[name].abs())
            assert ((weight - base[name]).abs() <= ulp).all(), name


def test_lora_stays_unmerged_where_unmerging_would_change_the_weights():
    """bf16 base weights would come back changed by up to a bf16 ulp: decoded unmerged, untouched."""
    from alignlab.model.loading import merged_lora

    model, _ = _lora_model(torch.bfloat16)
    before = {n: w.detach().clone() for n, w in model.named_parameters()}
    with merged_lora(model) as merged:
        assert not merged
    with merged_lora(model, enabled=False) as merged:
        assert not merged
    assert all(torch.equal(w, before[n]) for n, w in model.named_parameters())
