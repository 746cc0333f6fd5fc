"""Tests for alignlab.losses.dpo: hand values, float64 parity with the papers, and TRL parity."""

from __future__ import annotations

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from alignlab.losses import dpo
from alignlab.losses.dpo import DPO_LOSSES, DPOOutput, nll_loss

BETA = 0.5


def _pair_with_margin_one() -> tuple[torch.Tensor, ...]:
    """Policy chosen -1, ref chosen -2 (log-ratio 1); policy rejected -3, ref rejected -3 (log-ratio 0): h = 1."""
    return tuple(torch.tensor([v], dtype=torch.float64) for v in (-1.0, -3.0, -2.0, -3.0))


def _softplus(x: float) -> float:
    return math.log(1.0 + math.exp(x))


# ------------------------------------------------------------------------------------- hand values


def test_sigmoid_by_hand():
    """h = 1, beta = 0.5: loss = -log sigmoid(0.5) = log(1 + e^-0.5) = 0.474077;
    rewards: chosen 0.5 * 1 = 0.5, rejected 0.5 * 0 = 0."""
    out = dpo.sigmoid(*_pair_with_margin_one(), beta=BETA)
    assert isinstance(out, DPOOutput)
    assert out.losses.item() == pytest.approx(_softplus(-0.5), abs=1e-12)
    assert out.losses.item() == pytest.approx(0.4740769841801067, abs=1e-12)
    assert out.chosen_rewards.item() == pytest.approx(0.5)
    assert out.rejected_rewards.item() == pytest.approx(0.0)


def test_conservative_sigmoid_by_hand():
    """cDPO, eps = 0.1, h = 1, beta = 0.5:
    0.9 log(1 + e^-0.5) + 0.1 log(1 + e^0.5) = 0.9 * 0.474077 + 0.1 * 0.974077 = 0.524077
    (log(1 + e^x) - log(1 + e^-x) = x, so this is the eps = 0 value + 0.1 * 0.5)."""
    out = dpo.sigmoid(*_pair_with_margin_one(), beta=BETA, label_smoothing=0.1)
    expected = 0.9 * _softplus(-0.5) + 0.1 * _softplus(0.5)
    assert out.losses.item() == pytest.approx(expected, abs=1e-12)
    assert out.losses.item() == pytest.approx(0.4740769841801067 + 0.05, abs=1e-12)
    assert dpo.conservative is dpo.sigmoid


def test_robust_by_hand():
    """rDPO, eps = 0.1, h = 1, beta = 0.5:
    (0.9 log(1 + e^-0.5) - 0.1 log(1 + e^0.5)) / 0.8 = (0.426669 - 0.097408) / 0.8 = 0.411577;
    with a = log(1 + e^-0.5) and log(1 + e^0.5) = a + 0.5 this is (0.8 a - 0.05) / 0.8 = a - 0.0625."""
    out = dpo.robust(*_pair_with_margin_one(), beta=BETA, label_smoothing=0.1)
    expected = (0.9 * _softplus(-0.5) - 0.1 * _softplus(0.5)) / 0.8
    assert out.losses.item() == pytest.approx(expected, abs=1e-12)
    assert out.losses.item() == pytest.approx(0.4740769841801067 - 0.0625, abs=1e-12)
    # eps = 0 is plain DPO.
    plain = dpo.robust(*_pair_with_margin_one(), beta=BETA)
    assert plain.losses.item() == pytest.approx(_softplus(-0.5), abs=1e-12)


def test_hinge_by_hand():
    """h = 1, beta = 0.5: relu(1 - 0.5) = 0.5. Second pair h = 3: relu(1 - 1.5) = 0 (margin cleared)."""
    pc, pr, rc, rr = _pair_with_margin_one()
    pc = torch.cat([pc, torch.tensor([1.0], dtype=torch.float64)])  # chosen log-ratio 3 on pair 2
    pr, rc, rr = (torch.cat([t, t]) for t in (pr, rc, rr))
    out = dpo.hinge(pc, pr, rc, rr, beta=BETA)
    assert out.losses.tolist() == pytest.approx([0.5, 0.0], abs=1e-12)


def test_ipo_by_hand():
    """h = 1: beta = 0.5 gives (1 - 1/(2*0.5))^2 = 0; beta = 0.25 gives (1 - 2)^2 = 1; beta = 1 gives
    (1 - 0.5)^2 = 0.25."""
    inputs = _pair_with_margin_one()
    assert dpo.ipo(*inputs, beta=0.5).losses.item() == pytest.approx(0.0, abs=1e-12)
    assert dpo.ipo(*inputs, beta=0.25).losses.item() == pytest.approx(1.0, abs=1e-12)
    assert dpo.ipo(*inputs, beta=1.0).losses.item() == pytest.approx(0.25, abs=1e-12)


def test_nll_loss_by_hand():
    """Summed chosen log-probs -6 over 3 tokens: mean NLL 2; -1.5 over 1 token: 1.5; an empty completion
    (sum 0, length 0) gives 0, not NaN."""
    sums = torch.tensor([-6.0, -1.5, 0.0])
    lengths = torch.tensor([3, 1, 0])
    assert nll_loss(sums, lengths).tolist() == pytest.approx([2.0, 1.5, 0.0])


def test_registry_and_reference_free():
    """Reference-free = zeros as ref log-probs: h = (pc - pr) = (-1) - (-3) = 2, beta = 0.5:
    -log sigmoid(1) = log(1 + e^-1)."""
    assert set(DPO_LOSSES) == {"sigmoid", "robust", "hinge", "ipo"}
    zeros = torch.zeros(1, dtype=torch.float64)
    out = DPO_LOSSES["sigmoid"](torch.tensor([-1.0]).double(), torch.tensor([-3.0]).double(), zeros, zeros, beta=BETA)
    assert out.losses.item() == pytest.approx(_softplus(-1.0), abs=1e-12)
    assert out.chosen_rewards.item() == pytest.approx(-0.5)


def test_label_smoothing_validation():
    inputs = _pair_with_margin_one()
    for eps in (0.5, 0.7, -0.1):
        with pytest.raises(ValueError, match="robust"):
            dpo.robust(*inputs, beta=BETA, label_smoothing=eps)
    with pytest.raises(ValueError):
        dpo.sigmoid(*inputs, beta=BETA, label_smoothing=0.6)
    for name in ("hinge", "ipo"):
        with pytest.raises(ValueError, match=name):
            DPO_LOSSES[name](*inputs, beta=BETA, label_smoothing=0.1)


def test_rewards_are_detached():
    pc, pr, rc, rr = (t.clone().requires_grad_(True) for t in _pair_with_margin_one())
    out = dpo.sigmoid(pc, pr, rc, rr, beta=BETA)
    assert out.losses.requires_grad
    assert not out.chosen_rewards.requires_grad and not out.rejected_rewards.requires_grad


# ---------------------------------------------------------------- float64 parity with the papers


def _paper_loss(name: str, pc, pr, rc, rr, beta: float, eps: float) -> torch.Tensor:
    """The papers' formulas written from scratch, per pair, with log(1 + exp(.)) for -log sigmoid."""
    h = (pc - rc) - (pr - rr)
    neg_log_sig = lambda x: torch.log1p(torch.exp(-x))  # noqa: E731
    if name == "sigmoid":  # DPO Eq. 7 / cDPO
        return (1 - eps) * neg_log_sig(beta * h) + eps * neg_log_sig(-beta * h)
    if name == "robust":  # rDPO
        return ((1 - eps) * neg_log_sig(beta * h) - eps * neg_log_sig(-beta * h)) / (1 - 2 * eps)
    if name == "hinge":
        return torch.clamp(1 - beta * h, min=0)
    if name == "ipo":  # IPO Eq. 17
        return (h - 1 / (2 * beta)) ** 2
    raise AssertionError(name)


CASES = [
    ("sigmoid", 0.0),
    ("sigmoid", 0.1),
    ("sigmoid", 0.3),
    ("robust", 0.0),
    ("robust", 0.1),
    ("robust", 0.3),
    ("hinge", 0.0),
    ("ipo", 0.0),
]


@pytest.mark.parametrize("name,eps", CASES)
def test_parity_with_paper_formulas_float64(name, eps):
    torch.manual_seed(0)
    B = 16
    leaves = [(torch.randn(B, dtype=torch.float64) * 4 - 20) for _ in range(4)]  # [B] each
    beta = 0.3
    ours_in = [t.clone().requires_grad_(True) for t in leaves]
    ref_in = [t.clone().requires_grad_(True) for t in leaves]
    out = DPO_LOSSES[name](*ours_in, beta=beta, label_smoothing=eps)
    expected = _paper_loss(name, *ref_in, beta=beta, eps=eps)
    torch.testing.assert_close(out.losses, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.chosen_rewards, beta * (leaves[0] - leaves[2]), rtol=0, atol=1e-12)
    torch.testing.assert_close(out.rejected_rewards, beta * (leaves[1] - leaves[3]), rtol=0, atol=1e-12)
    # Non-uniform weights so the check covers every pair's gradient, not just their sum.
    weights = torch.linspace(0.5, 2.0, B, dtype=torch.float64)
    ours_grads = torch.autograd.grad((out.losses * weights).sum(), ours_in[:2])
    paper_grads = torch.autograd.grad((expected * weights).sum(), ref_in[:2])
    for got, want in zip(ours_grads, paper_grads):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------------------ TRL parity
#
# What we found in TRL 1.16 (trl/trainer/dpo_trainer.py): every DPO loss lives inline in
# DPOTrainer._compute_loss, an if/elif chain that also runs the model forward. There is no
# module-level function. We call that unbound method with a minimal stand-in `self` (the attributes it
# reads) and a fake model whose `log_probs` output is a tensor we own, with precomputed reference
# log-probs passed in `inputs`. That runs TRL's own loss code, including its IPO length normalisation,
# on our tensors, and lets autograd compare gradients too.
# Notes: TRL 1.16 no longer applies label_smoothing in "sigmoid" (only robust, exo_pair and aot use
# it), so cDPO is checked against TRL's "aot" loss with one pair per call: with B = 1 its sort is the
# identity and its formula is exactly cDPO. TRL's IPO divides each sequence's summed log-ratio by its
# completion length; our ipo expects the caller to pass per-token means, which is what we pass here.


def _trl_dpo(loss_type, beta, label_smoothing, per_token_logps, completion_mask, ref_chosen, ref_rejected):
    from trl.trainer.dpo_trainer import DPOTrainer

    identity = lambda t: t  # noqa: E731 - single process: gather is the identity
    two_b, seq_len = per_token_logps.shape  # [2B, T-1]
    stand_in = SimpleNamespace(
        model=SimpleNamespace(training=False),
        accelerator=SimpleNamespace(device=torch.device("cpu"), gather=identity, gather_for_metrics=identity),
        aux_loss_enabled=False,
        ld_alpha=None,
        precompute_ref_logps=True,
        f_divergence_type="reverse_kl",
        loss_types=[loss_type],
        loss_weights=[1.0],
        beta=beta,
        label_smoothing=label_smoothing,
        use_weighting=False,
        args=SimpleNamespace(),
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
    )
    zeros = torch.zeros(two_b, seq_len, dtype=per_token_logps.dtype)  # [2B, T-1]

    def fake_model(**kwargs):
        return SimpleNamespace(log_probs=per_token_logps, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool())

    inputs = {
        "input_ids": torch.randint(0, 50, completion_mask.shape),  # [2B, T]
        "attention_mask": torch.ones_like(completion_mask),  # [2B, T]
        "completion_mask": completion_mask,  # [2B, T]
        "ref_chosen_logps": ref_chosen,  # [B]
        "ref_rejected_logps": ref_rejected,  # [B]
    }
    loss = DPOTrainer._compute_loss(stand_in, fake_model, inputs, False)
    return loss, stand_in._metrics["eval"]


def _trl_batch(B=4, T=7, seed=0):
    torch.manual_seed(seed)
    completion_mask = torch.zeros(2 * B, T, dtype=torch.long)  # [2B, T]; 2 prompt tokens, then completion
    for row in range(2 * B):
        completion_mask[row, 2 : 2 + 1 + (row * 3) % (T - 2)] = 1
    shifted = completion_mask[:, 1:].double()  # [2B, T-1], the positions TRL scores
    # The model's log_probs are 0 where labels are -100; TRL sums them unmasked.
    leaf = (-torch.rand(2 * B, T - 1, dtype=torch.float64) * 3).requires_grad_(True)  # [2B, T-1]
    ref = -torch.rand(2 * B, dtype=torch.float64) * 3 * shifted.sum(1)  # [2B]
    return completion_mask, shifted, leaf, ref[:B], ref[B:]


@pytest.mark.parametrize(
    "name,eps", [("sigmoid", 0.0), ("hinge", 0.0), ("ipo", 0.0), ("robust", 0.0), ("robust", 0.1), ("robust", 0.3)]
)
def test_parity_with_trl(name, eps):
    pytest.importorskip("trl")
    beta = 0.2
    completion_mask, shifted, leaf, ref_chosen, ref_rejected = _trl_batch()
    B = ref_chosen.shape[0]
    trl_loss, metrics = _trl_dpo(name, beta, eps, leaf * shifted, completion_mask, ref_chosen, ref_rejected)
    (trl_grad,) = torch.autograd.grad(trl_loss, leaf)

    sums = (leaf * shifted).sum(dim=1)  # [2B]
    refs = torch.cat([ref_chosen, ref_rejected])  # [2B]
    if name == "ipo":
        lengths = completion_mask.sum(dim=1).double()  # [2B]
        sums, refs = sums / lengths, refs / lengths
    out = DPO_LOSSES[name](sums[:B], sums[B:], refs[:B], refs[B:], beta=beta, label_smoothing=eps)
    ours = out.losses.mean()
    (our_grad,) = torch.autograd.grad(ours, leaf)

    torch.testing.assert_close(ours, trl_loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(our_grad, trl_grad, rtol=1e-10, atol=1e-12)
    if name != "ipo":  # TRL's reward metrics use the unnormalised log-ratios
        assert out.chosen_rewards.mean().item() == pytest.approx(metrics["rewards/chosen"][0], abs=1e-12)
        assert out.rejected_rewards.mean().item() == pytest.approx(metrics["rewards/rejected"][0], abs=1e-12)


@pytest.mark.parametrize("eps", [0.1, 0.25])
def test_cdpo_parity_with_trl_aot_single_pair(eps):
    pytest.importorskip("trl")
    beta = 0.2
    completion_mask, shifted, leaf, ref_chosen, ref_rejected = _trl_batch(B=3, seed=1)
    B = ref_chosen.shape[0]
    sums = (leaf * shifted).sum(dim=1)  # [2B]
    ours = dpo.sigmoid(sums[:B], sums[B:], ref_chosen, ref_rejected, beta=beta, label_smoothing=eps).losses
    for i in range(B):
        rows = [i, B + i]
        trl_loss, _ = _trl_dpo(
            "aot", beta, eps, (leaf * shifted)[rows], completion_mask[rows], ref_chosen[i : i + 1], ref_rejected[i : i + 1]
        )
        torch.testing.assert_close(ours[i], trl_loss, rtol=1e-12, atol=1e-12)
