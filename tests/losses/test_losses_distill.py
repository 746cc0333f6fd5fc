"""Distillation losses against their formulas in float64 (and TRL's GKD loss where it has one)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from alignlab.losses.distill import (chunked_generalized_jsd, generalized_jsd, policy_gradient_loss,
                                     reverse_kl_advantages)

D = torch.float64


def _logps(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=D).log_softmax(-1)


# ------------------------------------------------------------------ reverse KL as a per-token advantage


def test_advantage_is_minus_the_token_reverse_kl_without_discount():
    student = torch.tensor([[-1.0, -2.0, -0.5], [-0.1, -3.0, -1.0]], dtype=D)
    teacher = torch.tensor([[-1.5, -1.0, -0.5], [-0.2, -0.3, -9.0]], dtype=D)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=D)
    adv = reverse_kl_advantages(student, teacher, mask)
    # By hand: -(s - t) where the student wrote the token, 0 on padding.
    want = torch.tensor([[-0.5, 1.0, 0.0], [-0.1, 2.7, 0.0]], dtype=D)
    torch.testing.assert_close(adv, want)


@pytest.mark.parametrize("gamma", [0.5, 1.0])
def test_discounted_advantage_is_the_discounted_future_sum(gamma):
    student, teacher = _logps(3, 6, 4, seed=1)[:, :, 0].clone(), _logps(3, 6, 4, seed=2)[:, :, 0].clone()
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 0, 1, 0, 0], [1, 0, 0, 0, 0, 0]], dtype=D)
    adv = reverse_kl_advantages(student, teacher, mask, discount=gamma)
    kl = (student - teacher) * mask
    want = torch.zeros_like(kl)
    for b in range(3):
        for t in range(6):
            want[b, t] = -sum(gamma ** (k - t) * kl[b, k] for k in range(t, 6)) * mask[b, t]
    torch.testing.assert_close(adv, want)
    assert not adv.requires_grad


def test_policy_gradient_with_the_current_policy_is_advantage_times_score():
    logps = _logps(2, 5, 4, seed=3)[:, :, 0].clone().requires_grad_(True)
    adv = torch.randn(2, 5, dtype=D)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=D)
    out = policy_gradient_loss(logps, None, adv, mask, normalizer=8.0)
    out.loss.backward()
    # ratio = 1 in value, so the loss is -sum(A) / N and its gradient -A / N on each trained token.
    assert float(out.loss.detach()) == pytest.approx(float(-(adv * mask).sum() / 8.0))
    torch.testing.assert_close(logps.grad, -adv * mask / 8.0)
    assert float(out.clip_ratio) == 0.0


def test_policy_gradient_clips_like_ppo():
    logps = torch.tensor([[0.0, 0.0, 0.0, 0.0]], dtype=D, requires_grad=True)
    old = torch.tensor([[-0.5, 0.5, -0.5, 0.5]], dtype=D)  # ratios e^.5, e^-.5, e^.5, e^-.5
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]], dtype=D)
    mask = torch.ones(1, 4, dtype=D)
    out = policy_gradient_loss(logps, old, adv, mask, epsilon_low=0.2, epsilon_high=0.3, normalizer=4.0)
    ratio = torch.exp(logps.detach() - old)
    want = -torch.minimum(ratio * adv, ratio.clamp(0.8, 1.3) * adv).sum() / 4
    assert float(out.loss.detach()) == pytest.approx(float(want))
    out.loss.backward()
    # Clipped: token 0 (ratio > 1.3, A > 0) and token 3 (ratio < 0.8, A < 0): no gradient there.
    assert logps.grad[0, 0] == 0 and logps.grad[0, 3] == 0
    assert logps.grad[0, 1] != 0 and logps.grad[0, 2] != 0
    assert float(out.clip_ratio) == pytest.approx(0.5)


# ------------------------------------------------------------------ generalised JSD


def _jsd_by_definition(s, t, beta):
    """Directly from probabilities: beta KL(T||M) + (1-beta) KL(S||M), M = beta T + (1-beta) S."""
    p_s, p_t = s.exp(), t.exp()
    m = beta * p_t + (1 - beta) * p_s
    return beta * (p_t * (p_t / m).log()).sum(-1) + (1 - beta) * (p_s * (p_s / m).log()).sum(-1)


@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
def test_jsd_matches_the_definition(beta):
    s, t = _logps(4, 11, seed=4), _logps(4, 11, seed=5)
    torch.testing.assert_close(generalized_jsd(s, t, beta), _jsd_by_definition(s, t, beta))


def test_jsd_limits_are_the_forward_and_reverse_kl():
    s, t = _logps(3, 7, seed=6), _logps(3, 7, seed=7)
    forward = (t.exp() * (t - s)).sum(-1)  # KL(teacher || student)
    reverse = (s.exp() * (s - t)).sum(-1)  # KL(student || teacher)
    torch.testing.assert_close(generalized_jsd(s, t, 0.0), forward)
    torch.testing.assert_close(generalized_jsd(s, t, 1.0), reverse)
    assert torch.all(generalized_jsd(s, s, 0.5).abs() < 1e-12)
    # A distribution with an exact zero stays finite (0 log 0 = 0).
    s0 = torch.tensor([[0.0, -math.inf]], dtype=D)
    assert torch.isfinite(generalized_jsd(s0, torch.log(torch.tensor([[0.5, 0.5]], dtype=D)), 1.0)).all()


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_jsd_parity_with_trl(beta):
    pytest.importorskip("trl")
    from trl.experimental.gkd.gkd_trainer import GKDTrainer

    g = torch.Generator().manual_seed(8)
    student_logits, teacher_logits = torch.randn(2, 3, 13, generator=g, dtype=D), torch.randn(2, 3, 13, generator=g, dtype=D)
    temperature = 0.7
    theirs = GKDTrainer.generalized_jsd_loss(student_logits, teacher_logits, beta=beta, temperature=temperature,
                                             reduction="sum")
    ours = generalized_jsd((student_logits / temperature).log_softmax(-1), (teacher_logits / temperature).log_softmax(-1),
                           beta).sum()
    assert float(ours) == pytest.approx(float(theirs), rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
def test_chunked_jsd_equals_the_full_tensor_formula(beta):
    g = torch.Generator().manual_seed(9)
    N, H_s, H_t, V, temperature = 10, 6, 8, 17, 0.8
    w_s = torch.randn(V, H_s, generator=g, dtype=D, requires_grad=True)
    w_t = torch.randn(V, H_t, generator=g, dtype=D)
    h_s = torch.randn(N, H_s, generator=g, dtype=D, requires_grad=True)
    h_t = torch.randn(N, H_t, generator=g, dtype=D)

    full = generalized_jsd((h_s @ w_s.T / temperature).log_softmax(-1), (h_t @ w_t.T / temperature).log_softmax(-1),
                           beta)  # [N]: the whole [N, V] at once
    (grad_h_full, grad_w_full) = torch.autograd.grad(full.sum(), (h_s, w_s))

    chunked = chunked_generalized_jsd(h_s, h_t, lambda h: h @ w_s.T / temperature, lambda h: h @ w_t.T / temperature,
                                      beta=beta, chunk_size=3)
    (grad_h, grad_w) = torch.autograd.grad(chunked.sum(), (h_s, w_s))
    torch.testing.assert_close(chunked, full)
    torch.testing.assert_close(grad_h, grad_h_full)
    torch.testing.assert_close(grad_w, grad_w_full)


def test_chunked_jsd_holds_one_chunk_of_logits_at_a_time():
    """The teacher's logits are recomputed per chunk, never kept whole: count the rows each head sees at once."""
    widest = {"student": 0, "teacher": 0}

    def head(name, w):
        def logits(h):
            widest[name] = max(widest[name], h.shape[0])
            return h @ w.T
        return logits

    w = torch.randn(5, 4, dtype=D)
    h = torch.randn(20, 4, dtype=D, requires_grad=True)
    out = chunked_generalized_jsd(h, h.detach(), head("student", w), head("teacher", w.flip(0)), beta=0.5, chunk_size=4)
    out.sum().backward()
    assert widest == {"student": 4, "teacher": 4}
    assert out.shape == (20,) and (out > 0).all()
    assert F.mse_loss(h.grad, torch.zeros_like(h.grad)) > 0
