"""Tests for alignlab.losses.grpo: advantages, the clipped surrogate, aggregations, TRL parity."""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from alignlab.losses.grpo import ADVANTAGE_SCALINGS, LOSS_AGGREGATIONS, group_advantages, grpo_loss

EPS = 1e-4

# ------------------------------------------------------------------------------------- advantages


def test_group_scaling_by_hand():
    """Group [1, 2, 3]: mean 2, unbiased std sqrt((1 + 0 + 1) / 2) = 1 -> (-1, 0, 1) / (1 + 1e-4).
    Group [5, 5, 5]: all equal -> exactly 0."""
    rewards = torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0, 5.0])
    adv = group_advantages(rewards, 3, "group")
    expected = [-1 / (1 + EPS), 0.0, 1 / (1 + EPS), 0.0, 0.0, 0.0]
    assert adv.tolist() == pytest.approx(expected, abs=1e-7)


def test_batch_scaling_by_hand():
    """Same rewards. Baseline is still the group mean; the divisor is the std of all six rewards:
    mean 21/6 = 3.5, squared deviations 6.25 + 2.25 + 0.25 + 3 * 2.25 = 15.5, unbiased variance
    15.5 / 5 = 3.1 -> (-1, 0, 1) / (sqrt(3.1) + 1e-4) and zeros for the constant group."""
    rewards = torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0, 5.0])
    adv = group_advantages(rewards, 3, "batch")
    d = math.sqrt(3.1) + EPS
    assert adv.tolist() == pytest.approx([-1 / d, 0.0, 1 / d, 0.0, 0.0, 0.0], abs=1e-7)


def test_none_scaling_by_hand():
    """Dr. GRPO: r - group mean only. [1, 2, 3] -> (-1, 0, 1); [0, 4] -> (-2, 2) with G = 2 after
    regrouping [1, 2 | 3, 5 | 0, 4]: (-0.5, 0.5), (-1, 1), (-2, 2)."""
    adv = group_advantages(torch.tensor([1.0, 2.0, 3.0, 5.0, 0.0, 4.0]), 2, "none")
    assert adv.tolist() == pytest.approx([-0.5, 0.5, -1.0, 1.0, -2.0, 2.0], abs=1e-7)
    adv = group_advantages(torch.tensor([1.0, 2.0, 3.0]), 3, "none")
    assert adv.tolist() == pytest.approx([-1.0, 0.0, 1.0], abs=1e-7)


@pytest.mark.parametrize("scale", sorted(ADVANTAGE_SCALINGS))
def test_group_of_one_is_zero_without_nan_or_warning(scale):
    """G = 1: r - mean = 0 and torch's std of one sample would be NaN (with a warning); we give 0.
    A single reward in the whole batch (batch std of one sample) too."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        adv = group_advantages(torch.tensor([0.3, -1.2, 7.0]), 1, scale)
        single = group_advantages(torch.tensor([2.5]), 1, scale)
    assert torch.equal(adv, torch.zeros(3))
    assert torch.equal(single, torch.zeros(1))


@pytest.mark.parametrize("scale", sorted(ADVANTAGE_SCALINGS))
@pytest.mark.parametrize("value", [0.1, 0.7, 1 / 3, -2.0, 1e6 + 0.1])
def test_all_equal_rewards_are_exactly_zero(scale, value):
    """A constant group gets exactly 0 (not 1e-9 from rounding in the mean, not NaN), in float32 and 64."""
    for dtype in (torch.float32, torch.float64):
        rewards = torch.full((7,), value, dtype=dtype)
        adv = group_advantages(rewards, 7, scale)
        assert torch.equal(adv, torch.zeros(7, dtype=dtype))


def test_integer_rewards_and_errors():
    assert group_advantages(torch.tensor([0, 1]), 2, "none").tolist() == [-0.5, 0.5]
    with pytest.raises(ValueError, match="batch.*group.*none|'batch', 'group', 'none'"):
        group_advantages(torch.tensor([1.0, 2.0]), 2, "whiten")
    with pytest.raises(ValueError, match="group_size=3"):
        group_advantages(torch.tensor([1.0, 2.0, 3.0, 4.0]), 3, "group")


def _trl_advantages(rewards_per_func, num_generations, scale_rewards, aggregation="sum_then_normalize"):
    """TRL 1.16's own advantage block, executed as it is: the lines of
    GRPOTrainer._generate_and_score_completions from the unscorable mask to the NaN-to-zero step
    (sum_then_normalize), taken from its source, since TRL inlines them in a method that also
    generates and scores completions. Returns (advantages, rewards with NaN for unscorable rows)."""
    import inspect
    import textwrap
    from types import SimpleNamespace

    from trl.trainer.grpo_trainer import GRPOTrainer
    from trl.trainer.utils import nanstd

    lines = inspect.getsource(GRPOTrainer._generate_and_score_completions).splitlines()
    first = next(i for i, line in enumerate(lines) if "unscorable_mask = torch.isnan(rewards_per_func)" in line)
    last = next(i for i, line in enumerate(lines) if "advantages = torch.nan_to_num(advantages, nan=0.0)" in line)
    block = textwrap.dedent("\n".join(lines[first : last + 1]))
    trl_self = SimpleNamespace(multi_objective_aggregation=aggregation, scale_rewards=scale_rewards,
                               reward_weights=torch.ones(rewards_per_func.shape[1], dtype=rewards_per_func.dtype),
                               reward_funcs=[None] * rewards_per_func.shape[1])
    scope = {"torch": torch, "nanstd": nanstd, "self": trl_self, "rewards_per_func": rewards_per_func.clone(),
             "num_generations": num_generations, "device": rewards_per_func.device}
    exec(block, scope)
    return scope["advantages"], scope["rewards"]


@pytest.mark.parametrize("scale", sorted(ADVANTAGE_SCALINGS))
def test_advantages_parity_with_trl(scale):
    """Against TRL's own code, with unscorable completions (every reward None -> NaN): one in a
    group, all but one in another, a whole group, and one constant group."""
    pytest.importorskip("trl")
    torch.manual_seed(0)
    per_func = torch.randn(6 * 4, 2, dtype=torch.float64)  # [N, 2 reward functions]
    per_func[8:12] = 0.25  # one constant group
    per_func[1] = float("nan")  # unscorable
    per_func[5, 0] = float("nan")  # one function failed: the other still scores it
    per_func[12:15] = float("nan")  # one scorable completion left in the group
    per_func[16:20] = float("nan")  # a whole group unscorable
    want, trl_rewards = _trl_advantages(per_func, 4, scale)
    ours_rewards = per_func.nansum(dim=1).masked_fill(per_func.isnan().all(dim=1), float("nan"))
    torch.testing.assert_close(ours_rewards, trl_rewards, equal_nan=True)
    got = group_advantages(ours_rewards, 4, scale)
    torch.testing.assert_close(got, want)
    assert got[1] == 0 and (got[12:20] == 0).all()


# -------------------------------------------------------------------------------- loss: by hand


def _one_token(delta, advantage, **kwargs):
    old = torch.zeros(1, 1, dtype=torch.float64)  # [B, T]
    logps = torch.full((1, 1), delta, dtype=torch.float64)  # [B, T]
    adv = torch.tensor([advantage], dtype=torch.float64)  # [B]
    return grpo_loss(logps, old, None, adv, torch.ones(1, 1), **kwargs)


def test_clipping_by_hand():
    """One token, eps 0.2.
    ratio e^0.5 = 1.6487, A = +1: min(1.6487, 1.2) = 1.2 -> loss -1.2, clipped high.
    ratio e^0.5, A = -1: min(-1.6487, -1.2) = -1.6487 -> loss 1.6487, not clipped (wrong side).
    ratio e^-0.5 = 0.6065, A = -1: min(-0.6065, -0.8) = -0.8 -> loss 0.8, clipped low.
    ratio e^-0.5, A = +1: min(0.6065, 0.8) = 0.6065 -> loss -0.6065, not clipped.
    Clip-Higher eps_high = 0.7: ratio e^0.5 < 1.7, A = +1 -> loss -1.6487, not clipped."""
    out = _one_token(0.5, 1.0)
    assert (out.loss.item(), out.clip_ratio.item(), out.clip_ratio_high.item()) == pytest.approx((-1.2, 1.0, 1.0))
    out = _one_token(0.5, -1.0)
    assert (out.loss.item(), out.clip_ratio.item()) == pytest.approx((math.exp(0.5), 0.0))
    out = _one_token(-0.5, -1.0)
    assert (out.loss.item(), out.clip_ratio.item(), out.clip_ratio_low.item()) == pytest.approx((0.8, 1.0, 1.0))
    out = _one_token(-0.5, 1.0)
    assert (out.loss.item(), out.clip_ratio.item()) == pytest.approx((-math.exp(-0.5), 0.0))
    out = _one_token(0.5, 1.0, epsilon_high=0.7)
    assert (out.loss.item(), out.clip_ratio.item()) == pytest.approx((-math.exp(0.5), 0.0))


def test_kl_by_hand():
    """On-policy, A = 0, ref - logp = log 2: k3 = 2 - log 2 - 1 = 0.306853; beta 0.1 -> loss 0.0306853."""
    logps = torch.zeros(1, 1, dtype=torch.float64)
    ref = torch.full((1, 1), math.log(2.0), dtype=torch.float64)
    out = grpo_loss(logps, None, ref, torch.zeros(1, dtype=torch.float64), torch.ones(1, 1), beta=0.1)
    assert out.kl.item() == pytest.approx(1 - math.log(2.0), abs=1e-12)
    assert out.loss.item() == pytest.approx(0.1 * (1 - math.log(2.0)), abs=1e-12)


def test_aggregations_by_hand():
    """On-policy (ratio 1), A = [1, -1], mask [[1, 1], [1, 0]]: per-token loss -A -> [[-1, -1], [1, .]].
    dapo/bnpo: (-1 - 1 + 1) / 3 active tokens = -1/3.
    grpo: sequence means -1 and 1 -> (-1 + 1) / 2 = 0.
    dr_grpo: -1 / (B * T) = -1/4; with max_completion_length 4: -1/8.
    Gradient of dapo w.r.t. logps: -A / 3 on active tokens, 0 on padding."""
    logps = torch.zeros(2, 2, dtype=torch.float64, requires_grad=True)
    adv = torch.tensor([1.0, -1.0], dtype=torch.float64)
    mask = torch.tensor([[1, 1], [1, 0]])
    loss = lambda kind, **kw: grpo_loss(logps, None, None, adv, mask, loss_type=kind, **kw).loss  # noqa: E731
    assert loss("dapo").item() == pytest.approx(-1 / 3)
    assert loss("bnpo").item() == pytest.approx(-1 / 3)
    assert loss("grpo").item() == pytest.approx(0.0)
    assert loss("dr_grpo").item() == pytest.approx(-1 / 4)
    assert loss("dr_grpo", max_completion_length=4).item() == pytest.approx(-1 / 8)
    (grad,) = torch.autograd.grad(loss("dapo"), logps)
    assert grad.flatten().tolist() == pytest.approx([-1 / 3, -1 / 3, 1 / 3, 0.0])
    out = grpo_loss(logps, None, None, adv, mask)
    assert out.kl.item() == 0.0 and out.clip_ratio.item() == 0.0


def test_loss_errors():
    x = torch.zeros(1, 1)
    with pytest.raises(ValueError, match="dapo"):
        grpo_loss(x, None, None, torch.zeros(1), x, loss_type="sum")
    with pytest.raises(ValueError, match="ref_logps"):
        grpo_loss(x, None, None, torch.zeros(1), x, beta=0.1)


# ------------------------------------------------------------- loss: float64 parity with the paper


B, T = 4, 5
EPS_LOW, EPS_HIGH, BETA, MAX_LEN = 0.2, 0.28, 0.04, 8
CLIP_LOSS_TYPES = sorted(set(LOSS_AGGREGATIONS) - {"cispo"})  # cispo: tests/losses/test_grpo_objectives.py


def _batch(seed=0):
    """Ratios exp(delta) with delta in {-0.6, -0.1, 0, 0.1, 0.5}: 0.55 and 1.65 lie outside
    [1 - 0.2, 1 + 0.28], and the advantages have both signs, so both clip sides are active."""
    torch.manual_seed(seed)
    old = -torch.rand(B, T, dtype=torch.float64) * 3  # [B, T]
    deltas = torch.tensor([-0.6, -0.1, 0.0, 0.1, 0.5], dtype=torch.float64)
    delta = deltas[torch.randint(0, 5, (B, T))]  # [B, T]
    delta[:, 0], delta[:, 1] = 0.5, -0.6  # both extremes in every row
    logps = (old + delta).clone().requires_grad_(True)  # [B, T]
    ref = old + 0.3 * torch.randn(B, T, dtype=torch.float64)  # [B, T]
    adv = torch.tensor([1.3, -0.7, 0.4, -1.1], dtype=torch.float64)  # [B]
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 0]])  # [B, T]
    return logps, old, ref, adv, mask


def _paper_loss(logps, old, ref, adv, mask, loss_type):
    """DeepSeekMath Eq. 3 + Eq. 4 term by term, with explicit loops over sequences and tokens."""
    token_terms, per_seq, n_active = [], [], 0
    for b in range(logps.shape[0]):
        seq = []
        for t in range(logps.shape[1]):
            if mask[b, t] == 0:
                continue
            ratio = torch.exp(logps[b, t] - old[b, t])
            surrogate = torch.minimum(ratio * adv[b], torch.clamp(ratio, 1 - EPS_LOW, 1 + EPS_HIGH) * adv[b])
            d = ref[b, t] - logps[b, t]
            k3 = torch.exp(d) - d - 1
            seq.append(-surrogate + BETA * k3)
        n_active += len(seq)
        token_terms.extend(seq)
        per_seq.append(torch.stack(seq).sum() / len(seq))
    if loss_type == "grpo":
        return torch.stack(per_seq).sum() / logps.shape[0]
    if loss_type in ("dapo", "bnpo"):
        return torch.stack(token_terms).sum() / n_active
    return torch.stack(token_terms).sum() / (logps.shape[0] * MAX_LEN)


@pytest.mark.parametrize("loss_type", CLIP_LOSS_TYPES)
def test_parity_with_paper_float64(loss_type):
    logps, old, ref, adv, mask = _batch()
    out = grpo_loss(
        logps, old, ref, adv, mask, epsilon_low=EPS_LOW, epsilon_high=EPS_HIGH, beta=BETA,
        loss_type=loss_type, max_completion_length=MAX_LEN,
    )
    expected = _paper_loss(logps, old, ref, adv, mask, loss_type)
    torch.testing.assert_close(out.loss, expected, rtol=1e-12, atol=1e-12)
    (got,) = torch.autograd.grad(out.loss, logps)
    (want,) = torch.autograd.grad(expected, logps)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)

    # Metrics, counted independently over active tokens.
    ratio = torch.exp(logps.detach() - old)
    active = mask.bool()
    low = (ratio < 1 - EPS_LOW) & (adv[:, None] < 0) & active
    high = (ratio > 1 + EPS_HIGH) & (adv[:, None] > 0) & active
    assert low.any() and high.any()
    n = active.sum().item()
    assert out.clip_ratio_low.item() == pytest.approx(low.sum().item() / n)
    assert out.clip_ratio_high.item() == pytest.approx(high.sum().item() / n)
    assert out.clip_ratio.item() == pytest.approx((low | high).sum().item() / n)
    d = ref - logps.detach()
    assert out.kl.item() == pytest.approx(((torch.exp(d) - d - 1)[active]).mean().item(), abs=1e-12)
    assert not (out.kl.requires_grad or out.clip_ratio.requires_grad)


@pytest.mark.parametrize("loss_type", ["dapo", "bnpo", "grpo", "dr_grpo"])
def test_accumulation_with_full_batch_normalizer(loss_type):
    """Two micro-batches given the whole step's count sum to the full-batch loss (and gradient)."""
    logps, old, ref, adv, mask = _batch(seed=3)
    full_count = {"dapo": mask.sum(), "bnpo": mask.sum(), "grpo": B, "dr_grpo": B * MAX_LEN}[loss_type]
    kwargs = dict(epsilon_low=EPS_LOW, epsilon_high=EPS_HIGH, beta=BETA, loss_type=loss_type, max_completion_length=MAX_LEN)
    full = grpo_loss(logps, old, ref, adv, mask, **kwargs).loss
    halves = [slice(0, 1), slice(1, B)]  # unequal micro-batches: 5 and 9 active tokens
    parts = [grpo_loss(logps[s], old[s], ref[s], adv[s], mask[s], normalizer=full_count, **kwargs).loss for s in halves]
    torch.testing.assert_close(parts[0] + parts[1], full, rtol=1e-12, atol=1e-12)
    (g_full,) = torch.autograd.grad(full, logps)
    (g_parts,) = torch.autograd.grad(parts[0] + parts[1], logps)
    torch.testing.assert_close(g_parts, g_full, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------ TRL parity
#
# What we found in TRL 1.16 (trl/trainer/grpo_trainer.py): the advantage computation is inlined in
# _generate_and_score_completions (generation + reward scoring), so it is reproduced above around
# TRL's own `nanstd`. The per-token loss and its aggregation are inlined in GRPOTrainer._compute_loss,
# which gets its log-probs from self._get_per_token_logps_and_entropies. We call that unbound method
# with a stand-in `self` whose log-prob method returns our tensor, so TRL's own clipping, k3 KL,
# aggregation and clip/KL metrics run on our data. Single process, one accumulation step,
# steps_per_generation 1: TRL's dapo normaliser is then num_items_in_batch, the active-token count.


def _trl_grpo(loss_type, logps, old, ref, adv, mask, importance_sampling_ratio=None, **overrides):
    from trl.trainer.grpo_trainer import GRPOTrainer

    Bn, Tn = logps.shape
    stand_in = SimpleNamespace(**{**dict(
        _get_per_token_logps_and_entropies=lambda *a, **k: (logps, torch.zeros_like(logps), None),
        top_entropy_quantile=1.0,
        off_policy_mask_threshold=None,
        importance_sampling_level="token",
        beta=BETA,
        loss_type=loss_type,
        epsilon_low=EPS_LOW,
        epsilon_high=EPS_HIGH,
        args=SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=1),
        use_vllm=importance_sampling_ratio is not None,
        vllm_importance_sampling_correction=importance_sampling_ratio is not None,
        model=SimpleNamespace(training=True),
        current_gradient_accumulation_steps=1,
        max_completion_length=MAX_LEN,
        accelerator=SimpleNamespace(num_processes=1, reduce=lambda x, reduction: x, gather=lambda x: x),
        _entropy_bonus_enabled=False,
        aux_loss_enabled=False,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
    ), **overrides})  # e.g. importance_sampling_level, epsilon_high
    inputs = {
        "prompt_ids": torch.zeros(Bn, 1, dtype=torch.long),  # [B, 1]
        "prompt_mask": torch.ones(Bn, 1, dtype=torch.long),  # [B, 1]
        "completion_ids": torch.zeros(Bn, Tn, dtype=torch.long),  # [B, T]
        "completion_mask": mask,  # [B, T]
        "advantages": adv,  # [B]
        "old_per_token_logps": old,  # [B, T]
        "ref_per_token_logps": ref,  # [B, T]
        "num_items_in_batch": mask.sum().double(),  # []
    }
    if importance_sampling_ratio is not None:
        inputs["importance_sampling_ratio"] = importance_sampling_ratio  # [B, T] or [B, 1]
    loss = GRPOTrainer._compute_loss(stand_in, None, inputs)
    return loss, stand_in._metrics["train"]


@pytest.mark.parametrize("loss_type", CLIP_LOSS_TYPES)
def test_loss_parity_with_trl(loss_type):
    pytest.importorskip("trl")
    logps, old, ref, adv, mask = _batch(seed=5)
    trl_loss, metrics = _trl_grpo(loss_type, logps, old, ref, adv, mask)
    out = grpo_loss(
        logps, old, ref, adv, mask, epsilon_low=EPS_LOW, epsilon_high=EPS_HIGH, beta=BETA,
        loss_type=loss_type, max_completion_length=MAX_LEN,
    )
    torch.testing.assert_close(out.loss, trl_loss, rtol=1e-12, atol=1e-12)
    (got,) = torch.autograd.grad(out.loss, logps)
    (want,) = torch.autograd.grad(trl_loss, logps)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert out.kl.item() == pytest.approx(metrics["kl"][0], abs=1e-12)
    # TRL casts the clip indicators to float32 before averaging, hence the looser tolerance.
    assert out.clip_ratio.item() == pytest.approx(metrics["clip_ratio/region_mean"][0], abs=1e-6)
    assert out.clip_ratio_low.item() == pytest.approx(metrics["clip_ratio/low_mean"][0], abs=1e-6)
    assert out.clip_ratio_high.item() == pytest.approx(metrics["clip_ratio/high_mean"][0], abs=1e-6)
    assert out.clip_ratio_low.item() > 0 and out.clip_ratio_high.item() > 0


# ------------------------------------------------------------------------- importance sampling (vLLM)

IS_MODES = ["token_truncate", "token_mask", "sequence_truncate", "sequence_mask"]


def _sampler_batch(seed=2):
    """Rollout-policy and sampler log-probs whose per-token ratios straddle a cap of 1.5, and whose
    per-completion ratios straddle it too."""
    generator = torch.Generator().manual_seed(seed)
    behaviour = -torch.rand(B, T, generator=generator, dtype=torch.float64) * 3  # [B, T]
    sampling = behaviour - torch.randn(B, T, generator=generator, dtype=torch.float64) * 0.5  # [B, T]
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 0]])  # [B, T]
    return behaviour, sampling, mask


def _is_reference(behaviour, sampling, mask, mode, cap):
    """TRL 1.16's four modes, written out per completion and token in float64: (weights, raw, bounded)."""
    level, bound = mode.split("_")
    weights, raw, bounded = torch.ones(B, T, dtype=torch.float64), [], []
    for b in range(B):
        active = [t for t in range(T) if mask[b, t]]
        if level == "sequence":
            ratio = math.exp(sum(float(behaviour[b, t] - sampling[b, t]) for t in active))
            kept = min(ratio, cap) if bound == "truncate" else (ratio if ratio <= cap else 0.0)
            weights[b, :] = kept
            raw.append(ratio)
            bounded.append(kept)
            continue
        for t in active:
            ratio = math.exp(float(behaviour[b, t] - sampling[b, t]))
            kept = min(ratio, cap) if bound == "truncate" else (ratio if ratio <= cap else 0.0)
            weights[b, t] = kept
            raw.append(ratio)
            bounded.append(kept)
    return weights, torch.tensor(raw, dtype=torch.float64), torch.tensor(bounded, dtype=torch.float64)


@pytest.mark.parametrize("mode", IS_MODES)
def test_importance_sampling_weights_match_the_formula(mode):
    from alignlab.losses.grpo import importance_sampling_weights

    behaviour, sampling, mask = _sampler_batch()
    out = importance_sampling_weights(behaviour, sampling, mask, mode=mode, cap=1.5)
    weights, raw, bounded = _is_reference(behaviour, sampling, mask, mode, 1.5)
    torch.testing.assert_close(out.weights * mask, weights * mask, rtol=1e-12, atol=0)
    torch.testing.assert_close(out.raw, raw, rtol=1e-12, atol=0)
    torch.testing.assert_close(out.bounded, bounded, rtol=1e-12, atol=0)
    assert (raw > 1.5).any() and (raw <= 1.5).any()  # the cap mattered in this batch
    if mode.endswith("mask"):
        assert (out.bounded == 0).any() and out.bounded.max() <= 1.5


def test_importance_sampling_rejects_an_unknown_mode():
    from alignlab.losses.grpo import importance_sampling_weights

    behaviour, sampling, mask = _sampler_batch()
    with pytest.raises(ValueError, match="sequence_mask"):
        importance_sampling_weights(behaviour, sampling, mask, mode="sequence_clip")


@pytest.mark.parametrize("mode", IS_MODES)
@pytest.mark.parametrize("loss_type", ["grpo", "dapo"])
def test_importance_weights_enter_the_loss_as_in_trl(mode, loss_type):
    """TRL multiplies the per-token loss by its `importance_sampling_ratio` ([B, T], or [B, 1] in the
    sequence modes) before adding the KL term: given the same ratios, the same loss and gradient."""
    pytest.importorskip("trl")
    from alignlab.losses.grpo import importance_sampling_weights

    logps, old, ref, adv, mask = _batch(seed=5)
    behaviour, sampling, _ = _sampler_batch()
    sampled = importance_sampling_weights(behaviour, sampling, mask, mode=mode, cap=1.5)
    trl_ratio = sampled.weights[:, :1] if mode.startswith("sequence") else sampled.weights
    trl_loss, _ = _trl_grpo(loss_type, logps, old, ref, adv, mask, importance_sampling_ratio=trl_ratio)
    out = grpo_loss(logps, old, ref, adv, mask, epsilon_low=EPS_LOW, epsilon_high=EPS_HIGH, beta=BETA,
                    loss_type=loss_type, max_completion_length=MAX_LEN, importance_weights=sampled.weights)
    torch.testing.assert_close(out.loss, trl_loss, rtol=1e-12, atol=1e-12)
    (got,) = torch.autograd.grad(out.loss, logps)
    (want,) = torch.autograd.grad(trl_loss, logps)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    if mode == "sequence_mask":  # a completion past the cap gives no policy gradient, only KL's
        dropped = (sampled.weights[:, 0] == 0).nonzero().flatten().tolist()
        assert dropped
        kl_only = grpo_loss(logps, old, ref, torch.zeros_like(adv), mask, epsilon_low=EPS_LOW,
                            epsilon_high=EPS_HIGH, beta=BETA, loss_type=loss_type, max_completion_length=MAX_LEN)
        (kl_grad,) = torch.autograd.grad(kl_only.loss, logps)
        torch.testing.assert_close(got[dropped], kl_grad[dropped], rtol=1e-10, atol=1e-12)


def test_importance_sampling_stats_report_before_and_after_the_cap():
    from alignlab.losses.grpo import importance_sampling_weights
    from alignlab.trainers.grpo_stats import ImportanceSamplingStats

    behaviour, sampling, mask = _sampler_batch()
    single_process = SimpleNamespace(num_processes=1, global_sums=lambda values: [float(v) for v in values])
    stats = ImportanceSamplingStats()
    for rows in ([0, 1], [2, 3]):  # two micro-batches
        stats.add(importance_sampling_weights(behaviour[rows], sampling[rows], mask[rows], mode="token_mask", cap=1.5))
    metrics = stats.metrics(single_process)
    _, raw, bounded = _is_reference(behaviour, sampling, mask, "token_mask", 1.5)
    for name, values in (("sampling/raw_importance_sampling_ratio", raw),
                         ("sampling/importance_sampling_ratio", bounded)):
        assert metrics[f"{name}/mean"] == pytest.approx(float(values.mean()), rel=1e-12)
        assert metrics[f"{name}/max"] == pytest.approx(float(values.max()), rel=1e-12)
        assert metrics[f"{name}/min"] == pytest.approx(float(values.min()), rel=1e-12)
    assert metrics["sampling/raw_importance_sampling_ratio/max"] > 1.5 >= metrics["sampling/importance_sampling_ratio/max"]
