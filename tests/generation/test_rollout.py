"""Token picking and the lean sampler against transformers' own generate."""

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
