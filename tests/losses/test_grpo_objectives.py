"""The GRPO objectives beyond DeepSeekMath's: GSPO sequence-level ratios, CISPO, RLOO and
REINFORCE++-baseline advantages, normalise-then-sum (GDPO). Each against its paper's formula written
out in float64 loops, and against TRL 1.16 on the same tensors where TRL has the option."""

from __future__ import annotations

import math

import pytest
import torch
from test_losses_grpo import BETA, EPS_HIGH, EPS_LOW, MAX_LEN, _trl_advantages, _trl_grpo

from alignlab.losses.grpo import STD_EPS, group_advantages, grpo_loss

B, T = 4, 5
MASK = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 0]])  # [B, T]


def _batch(seed=0):
    """Per-row log-ratio offsets put one completion's GSPO ratio above 1 + eps_high (A > 0), one below
    1 - eps_low (A < 0) and two inside, with token noise so that token ratios differ from them."""
    generator = torch.Generator().manual_seed(seed)
    old = -torch.rand(B, T, generator=generator, dtype=torch.float64) * 3  # [B, T]
    offsets = torch.tensor([[0.45], [-0.5], [0.05], [-0.1]], dtype=torch.float64)  # [B, 1]
    noise = 0.3 * torch.randn(B, T, generator=generator, dtype=torch.float64)  # [B, T]
    logps = (old + offsets + noise).clone().requires_grad_(True)  # [B, T]
    ref = old + 0.3 * torch.randn(B, T, generator=generator, dtype=torch.float64)  # [B, T]
    adv = torch.tensor([1.3, -0.7, 0.4, -1.1], dtype=torch.float64)  # [B]
    return logps, old, ref, adv, MASK


def _value_and_grad(loss, logps):
    (grad,) = torch.autograd.grad(loss, logps, retain_graph=True)
    return loss.detach(), grad


# --------------------------------------------------------------------------------- GSPO (sequence)


def _gspo_paper(logps, old, adv, mask):
    """GSPO (Zheng et al. 2025) Eq. 5 and 7: s_i = (pi(y_i) / pi_old(y_i)) ** (1 / |y_i|), and
    J = (1/G) sum_i min(s_i A_i, clip(s_i, 1 - eps_low, 1 + eps_high) A_i)."""
    terms = []
    for i in range(logps.shape[0]):
        active = [t for t in range(logps.shape[1]) if mask[i, t]]
        sequence_ratio = torch.exp(sum(logps[i, t] - old[i, t] for t in active))  # pi(y_i) / pi_old(y_i)
        s = sequence_ratio ** (1.0 / len(active))
        terms.append(torch.minimum(s * adv[i], torch.clamp(s, 1 - EPS_LOW, 1 + EPS_HIGH) * adv[i]))
    return -torch.stack(terms).sum() / logps.shape[0]


def test_gspo_matches_the_paper_float64():
    logps, old, _, adv, mask = _batch()
    out = grpo_loss(logps, old, None, adv, mask, epsilon_low=EPS_LOW, epsilon_high=EPS_HIGH, loss_type="grpo",
                    importance_sampling_level="sequence")
    got, want = _value_and_grad(out.loss, logps), _value_and_grad(_gspo_paper(logps, old, adv, mask), logps)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    # Completion 0 is clipped above (5 tokens), completion 1 below (3 tokens): shares of the 14 active tokens.
    assert out.clip_ratio_high.item() == pytest.approx(5 / 14) and out.clip_ratio_low.item() == pytest.approx(3 / 14)
    # Unlike token level, every token of a completion gets the same ratio: the token-level loss differs.
    token = grpo_loss(logps, old, None, adv, mask, epsilon_low=EPS_LOW, epsilon_high=EPS_HIGH, loss_type="grpo")
    assert not torch.allclose(token.loss, out.loss)


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "bnpo", "dr_grpo"])
def test_gspo_parity_with_trl(loss_type):
    pytest.importorskip("trl")
    logps, old, ref, adv, mask = _batch(seed=1)
    trl_loss, metrics = _trl_grpo(loss_type, logps, old, ref, adv, mask, importance_sampling_level="sequence")
    out = grpo_loss(logps, old, ref, adv, mask, epsilon_low=EPS_LOW, epsilon_high=EPS_HIGH, beta=BETA,
                    loss_type=loss_type, max_completion_length=MAX_LEN, importance_sampling_level="sequence")
    torch.testing.assert_close(_value_and_grad(out.loss, logps), _value_and_grad(trl_loss, logps),
                               rtol=1e-10, atol=1e-12)
    assert out.kl.item() == pytest.approx(metrics["kl"][0], abs=1e-12)


def test_gspo_on_policy_ratio_is_one_with_the_policy_gradient():
    """old_logps=None (mu = 1): the sequence ratio is 1 and the gradient that of sum_i A_i mean_t log pi / B."""
    logps, _, _, adv, mask = _batch()
    out = grpo_loss(logps, None, None, adv, mask, loss_type="grpo", importance_sampling_level="sequence")
    (grad,) = torch.autograd.grad(out.loss, logps)
    want = -adv[:, None] * mask / mask.sum(1, keepdim=True) / B  # [B, T]
    torch.testing.assert_close(grad, want, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------- CISPO


def _cispo_paper(logps, old, adv, mask):
    """MiniMax-M1 Eq. 4 (no lower bound on the weight, as the paper runs it):
    J = 1 / sum_i |o_i| * sum_i sum_t sg(min(r_it, 1 + eps_high)) A_i log pi(o_it)."""
    total, tokens = 0.0, 0
    for i in range(logps.shape[0]):
        for t in range(logps.shape[1]):
            if mask[i, t]:
                weight = min(math.exp(float(logps[i, t].detach() - old[i, t])), 1 + EPS_HIGH)  # a number: no gradient
                total = total + weight * adv[i] * logps[i, t]
                tokens += 1
    return -total / tokens


def test_cispo_matches_the_paper_float64():
    logps, old, _, adv, mask = _batch()
    out = grpo_loss(logps, old, None, adv, mask, epsilon_low=EPS_LOW, epsilon_high=EPS_HIGH, loss_type="cispo")
    torch.testing.assert_close(_value_and_grad(out.loss, logps), _value_and_grad(_cispo_paper(logps, old, adv, mask), logps),
                               rtol=1e-12, atol=1e-12)
    capped = (torch.exp(logps.detach() - old) > 1 + EPS_HIGH) & mask.bool()
    assert capped.any() and out.clip_ratio_high.item() == pytest.approx(capped.sum().item() / mask.sum().item())
    assert out.clip_ratio_low.item() == 0
    # Every token keeps a gradient, even where the clipped surrogate would have zeroed it.
    (grad,) = torch.autograd.grad(out.loss, logps)
    assert (grad[mask.bool()] != 0).all()


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_cispo_parity_with_trl(level):
    """TRL caps the weight at epsilon_high itself (ScaleRL's eps_max); ours at 1 + epsilon_high (MiniMax-M1)."""
    pytest.importorskip("trl")
    logps, old, ref, adv, mask = _batch(seed=2)
    trl_loss, _ = _trl_grpo("cispo", logps, old, ref, adv, mask, importance_sampling_level=level,
                            epsilon_high=1 + EPS_HIGH)
    out = grpo_loss(logps, old, ref, adv, mask, epsilon_low=EPS_LOW, epsilon_high=EPS_HIGH, beta=BETA,
                    loss_type="cispo", importance_sampling_level=level)
    torch.testing.assert_close(_value_and_grad(out.loss, logps), _value_and_grad(trl_loss, logps),
                               rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------------- advantages


def _rewards(seed=0):
    """[6 * 4] rewards in groups of 4: one unscorable completion, one group with a single scored one,
    one constant group."""
    generator = torch.Generator().manual_seed(seed)
    rewards = torch.randn(24, generator=generator, dtype=torch.float64)
    rewards[1] = float("nan")
    rewards[8:12] = 0.5
    rewards[12:15] = float("nan")
    return rewards


def _std(values):
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def test_rloo_matches_the_paper_float64():
    """RLOO (Ahmadian et al. 2024, Eq. 5): A_i = r_i - 1/(k-1) sum_{j != i} r_j over the k scored
    completions of the group; unscorable ones and a lone scored one get 0."""
    rewards = _rewards()
    got = group_advantages(rewards, 4, "group", estimator="rloo")
    for g in range(6):
        scored = [i for i in range(4 * g, 4 * g + 4) if not math.isnan(rewards[i])]
        for i in range(4 * g, 4 * g + 4):
            others = [float(rewards[j]) for j in scored if j != i]
            want = float(rewards[i]) - sum(others) / len(others) if i in scored and len(scored) > 1 else 0.0
            assert got[i].item() == pytest.approx(want, abs=1e-12)


def test_rloo_parity_with_trl():
    """TRL 1.16's RLOOTrainer advantage lines, run as they are (normalize_advantages off, its default)."""
    pytest.importorskip("trl")
    import inspect
    import textwrap

    from trl.trainer.rloo_trainer import RLOOTrainer

    lines = inspect.getsource(RLOOTrainer._generate_and_score_completions).splitlines()
    first = next(i for i, line in enumerate(lines) if "scorable_counts = " in line)
    last = next(i for i, line in enumerate(lines) if "advantages = torch.nan_to_num(advantages" in line)
    rewards = _rewards(seed=3)
    scope = {"torch": torch, "rewards": rewards.clone(), "grouped_rewards": rewards.view(-1, 4), "num_generations": 4,
             "self": type("S", (), {"normalize_advantages": False})()}
    exec(textwrap.dedent("\n".join(lines[first : last + 1])), scope)
    torch.testing.assert_close(group_advantages(rewards, 4, "group", estimator="rloo"), scope["advantages"])


def test_reinforce_pp_baseline_matches_the_paper_float64():
    """REINFORCE++-baseline (Hu et al. 2025, Eq. 9-10): A' = r - mean_group(r), then
    A = (A' - mean_batch(A')) / std_batch(A'), over the scored completions of the whole batch."""
    rewards = _rewards(seed=1)
    got = group_advantages(rewards, 4, "group", estimator="reinforce_pp_baseline")
    centered = {}
    for g in range(6):
        scored = [i for i in range(4 * g, 4 * g + 4) if not math.isnan(rewards[i])]
        mean = sum(float(rewards[i]) for i in scored) / len(scored)
        centered.update({i: float(rewards[i]) - mean for i in scored})
    batch_mean, batch_std = sum(centered.values()) / len(centered), _std(list(centered.values()))
    for i in range(24):
        constant = 8 <= i < 16  # the constant group and the lone scored completion
        want = 0.0 if i not in centered or constant else (centered[i] - batch_mean) / (batch_std + STD_EPS)
        assert got[i].item() == pytest.approx(want, abs=1e-12)


def test_normalize_then_sum_matches_gdpo_float64():
    """GDPO (Liu et al. 2026, Eq. 4-6): each reward standardised within its group, the weighted sum,
    then standardised over the batch. Here through the trainer's choice of estimator (module docstring)."""
    generator = torch.Generator().manual_seed(4)
    parts = torch.randn(16, 2, generator=generator, dtype=torch.float64)  # [N, K]: groups of 4, 2 rewards
    parts[:, 1] = (parts[:, 1] > 0).double()  # a 0/1 reward beside a continuous one
    weights = [1.0, 2.0]
    got = group_advantages(parts, 4, "group", estimator="reinforce_pp_baseline", aggregation="normalize_then_sum",
                           weights=weights)
    summed = []
    for i in range(16):
        g = i // 4
        total = 0.0
        for k in range(2):
            group = [float(parts[j, k]) for j in range(4 * g, 4 * g + 4)]
            spread = _std(group)
            total += weights[k] * (0.0 if spread == 0 else (float(parts[i, k]) - sum(group) / 4) / (spread + STD_EPS))
        summed.append(total)
    mean, spread = sum(summed) / 16, _std(summed)
    want = torch.tensor([(s - mean) / (spread + STD_EPS) for s in summed], dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_normalize_then_sum_parity_with_trl():
    pytest.importorskip("trl")
    generator = torch.Generator().manual_seed(5)
    parts = torch.randn(24, 2, generator=generator, dtype=torch.float64)  # [N, K]
    parts[1] = float("nan")  # unscorable
    parts[5, 0] = float("nan")  # one reward failed: the other still scores it
    want, _ = _trl_advantages(parts, 4, "group", aggregation="normalize_then_sum")
    got = group_advantages(parts, 4, "group", estimator="reinforce_pp_baseline", aggregation="normalize_then_sum")
    # TRL's nanstd computes Bessel's count / (count - 1) from integer counts, in float32: ~4e-8 relative.
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9)


def test_normalize_then_sum_keeps_a_reward_the_sum_would_drown():
    """Why GDPO: with a 0/1 reward beside one 100x larger, summing first leaves the small reward's
    ordering almost no weight; normalising first gives both the same scale."""
    big = torch.tensor([100.0, 300.0, 200.0, 400.0], dtype=torch.float64)
    small = torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    parts = torch.stack([big, small], dim=1)  # [4, 2]
    summed = group_advantages(parts, 4, "group")
    normalised = group_advantages(parts, 4, "group", estimator="reinforce_pp_baseline", aggregation="normalize_then_sum")
    # Completions 0 and 2 differ by 100 in `big`; `small` favours 0. Sum first: 2 wins; normalise first: 0 wins.
    assert summed[2] > summed[0] and normalised[0] > normalised[2]


def test_unknown_choices_are_named():
    with pytest.raises(ValueError, match="reinforce_pp_baseline"):
        group_advantages(torch.zeros(4), 2, "group", estimator="ppo")
    with pytest.raises(ValueError, match="normalize_then_sum"):
        group_advantages(torch.zeros(4), 2, "group", aggregation="mean")
    with pytest.raises(ValueError, match="sequence"):
        grpo_loss(torch.zeros(1, 1), None, None, torch.zeros(1), torch.ones(1, 1), importance_sampling_level="seq")
