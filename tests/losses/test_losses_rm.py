"""alignlab.losses.rm: the Bradley-Terry loss against hand values and float64 formulas (and TRL's RewardTrainer formula)."""

from __future__ import annotations

import math

import pytest
import torch

from alignlab.losses.rm import bradley_terry_loss


def reference(rc: float, rr: float, m: float = 0.0, eps: float = 0.0, c: float = 0.0) -> float:
    """The loss written out with math: -(1-eps) log s(d) - eps log s(-d) + c (rc + rr)^2, d = rc - rr - m."""
    d = rc - rr - m
    log_sigmoid = lambda x: -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))  # noqa: E731
    return -(1 - eps) * log_sigmoid(d) - eps * log_sigmoid(-d) + c * (rc + rr) ** 2


def test_hand_value():
    """r_c = 2, r_r = 1: -log sigmoid(1) = log(1 + e^-1) = 0.31326168751822286."""
    out = bradley_terry_loss(torch.tensor([2.0], dtype=torch.float64), torch.tensor([1.0], dtype=torch.float64))
    assert out.losses.item() == pytest.approx(0.31326168751822286, abs=1e-15)
    assert out.margins.item() == 1.0 and out.accuracies.item() == 1.0


@pytest.mark.parametrize("m,eps,c", [(0.0, 0.0, 0.0), (0.5, 0.0, 0.0), (0.0, 0.1, 0.0), (0.0, 0.0, 0.01),
                                     (1.5, 0.2, 0.05)])
def test_float64_parity(m, eps, c):
    gen = torch.Generator().manual_seed(0)
    chosen = torch.randn(64, generator=gen, dtype=torch.float64) * 4
    rejected = torch.randn(64, generator=gen, dtype=torch.float64) * 4
    margin = torch.full((64,), m, dtype=torch.float64) if m else None
    out = bradley_terry_loss(chosen, rejected, margin=margin, label_smoothing=eps, center_coefficient=c)
    expected = [reference(a, b, m, eps, c) for a, b in zip(chosen.tolist(), rejected.tolist())]
    assert out.losses.tolist() == pytest.approx(expected, abs=1e-12)
    assert out.accuracies.tolist() == [float(a > b) for a, b in zip(chosen.tolist(), rejected.tolist())]
    assert out.margins.tolist() == pytest.approx((chosen - rejected).tolist(), abs=0)


def test_margin_per_pair_and_ties():
    """The margin is per pair (Llama 2); a tie is not counted as accurate."""
    chosen = torch.tensor([1.0, 0.0], dtype=torch.float64)
    rejected = torch.tensor([0.0, 0.0], dtype=torch.float64)
    out = bradley_terry_loss(chosen, rejected, margin=torch.tensor([1.0, -2.0], dtype=torch.float64))
    assert out.losses.tolist() == pytest.approx([math.log(2), reference(0, 0, -2)], abs=1e-12)
    assert out.accuracies.tolist() == [1.0, 0.0]


def test_gradient_matches_formula():
    """d loss / d r_c = -(1 - eps) s(-d) + eps s(d) + 2 c (r_c + r_r)."""
    chosen = torch.tensor([0.3], dtype=torch.float64, requires_grad=True)
    rejected = torch.tensor([-0.4], dtype=torch.float64, requires_grad=True)
    eps, c = 0.1, 0.05
    bradley_terry_loss(chosen, rejected, label_smoothing=eps, center_coefficient=c).losses.sum().backward()
    d = 0.7
    s = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert chosen.grad.item() == pytest.approx(-(1 - eps) * s(-d) + eps * s(d) + 2 * c * (-0.1), abs=1e-12)
    assert rejected.grad.item() == pytest.approx((1 - eps) * s(-d) - eps * s(d) + 2 * c * (-0.1), abs=1e-12)


def test_trl_reward_loss_formula():
    """TRL 1.16 RewardTrainer.compute_loss, as written there: -logsigmoid(r_c - r_r - margin).mean()
    + center_rewards_coefficient * mean((r_c + r_r)^2); ours averaged over the batch is the same."""
    gen = torch.Generator().manual_seed(1)
    chosen, rejected, margin = (torch.randn(16, generator=gen, dtype=torch.float64) for _ in range(3))
    trl_loss = -torch.nn.functional.logsigmoid(chosen - rejected - margin).mean() + 0.01 * torch.mean(
        (chosen + rejected) ** 2)
    ours = bradley_terry_loss(chosen, rejected, margin=margin, center_coefficient=0.01).losses.mean()
    assert ours.item() == pytest.approx(trl_loss.item(), abs=1e-12)
