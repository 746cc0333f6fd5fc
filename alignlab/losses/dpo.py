"""Pairwise preference losses: DPO and the variants that share its log-ratio margin.

All variants are functions of one margin per pair,

    h = (log pi(y_w|x) - log ref(y_w|x)) - (log pi(y_l|x) - log ref(y_l|x)),

the quantity inside the sigmoid of Rafailov et al. 2023, "Direct Preference Optimization", Eq. 7.

Variants (keys of `DPO_LOSSES`):
  sigmoid  DPO, Eq. 7: -log sigmoid(beta h). With label smoothing eps this is conservative DPO
           (cDPO, Mitchell 2023): the label is taken to be right with probability 1 - eps, giving
           -(1-eps) log sigmoid(beta h) - eps log sigmoid(-beta h). `conservative` is an alias.
  robust   rDPO, Chowdhury et al. 2024, "Provably Robust DPO" (the de-biased loss of their Sec. 3):
           ((1-eps) * -log sigmoid(beta h) - eps * -log sigmoid(-beta h)) / (1 - 2 eps). Unlike cDPO it
           is an unbiased estimate of the clean-label loss when labels flip at rate eps, hence
           eps < 0.5 (the division blows up at 0.5 and the sign flips beyond it).
  hinge    SLiC-HF calibration loss (Zhao et al. 2023) on the reference-normalised margin, as in
           RSO (Liu et al. 2024): relu(1 - beta h).
  ipo      IPO, Azar et al. 2023, Eq. 17 (beta plays their tau): (h - 1/(2 beta))^2. The paper's
           margin is per-token in practice, so a trainer should pass per-token mean log-probs here.

Choices made:
  * Inputs are one log-prob per sequence, shape [B]. Whether that is a sum over completion tokens or a
    per-token mean is the caller's choice (`dpo.length_normalize`), so every variant sees the same
    numbers. The trainer's default matches TRL (which length-normalises inside its IPO branch, as
    confirmed with the IPO authors): per-token means for ipo, sums for the others; with sums, IPO's
    target 1/(2 beta) is compared with a margin that grows with length and beta loses its meaning.
  * Losses are returned per pair, not averaged, so the trainer owns reduction and accumulation.
  * Rewards are the implicit rewards beta (log pi - log ref) of the DPO paper, Eq. 5 up to the
    partition term, detached because they are metrics only.
  * Reference-free training (no reference model) is the caller passing zeros as the reference
    log-probs: h then reduces to the policy's own chosen-minus-rejected margin.
  * Label smoothing is rejected by hinge and ipo instead of being silently ignored: neither paper
    defines it.
  * `nll_loss` is the NLL-on-chosen term of RPO (Pang et al. 2024, "Iterative Reasoning Preference
    Optimization", the DPO+NLL objective); the trainer adds it weighted by `dpo.sft_weight`. It is
    normalised by the lengths the caller passes (completion tokens here; the paper also counts the
    prompt).

Left out: TRL's other loss types (exo_pair, nca_pair, bco_pair, sppo_hard, aot, apo, discopop,
sigmoid_norm), f-divergence scores, WPO weighting and length desensitisation (ld_alpha).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

__all__ = [
    "DPOOutput",
    "DPO_LOSSES",
    "sigmoid",
    "conservative",
    "robust",
    "hinge",
    "ipo",
    "nll_loss",
]


@dataclass
class DPOOutput:
    losses: torch.Tensor  # [B]
    chosen_rewards: torch.Tensor  # [B], detached
    rejected_rewards: torch.Tensor  # [B], detached


def _margin_and_rewards(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    chosen_logratios = policy_chosen_logps - ref_chosen_logps  # [B]
    rejected_logratios = policy_rejected_logps - ref_rejected_logps  # [B]
    margin = chosen_logratios - rejected_logratios  # [B], h
    chosen_rewards = beta * chosen_logratios.detach()  # [B]
    rejected_rewards = beta * rejected_logratios.detach()  # [B]
    return margin, chosen_rewards, rejected_rewards


def _reject_label_smoothing(name: str, label_smoothing: float) -> None:
    if label_smoothing != 0.0:
        raise ValueError(
            f"label_smoothing={label_smoothing} has no meaning for the {name!r} DPO loss; "
            "use 'sigmoid' (cDPO) or 'robust' (rDPO), or set label_smoothing to 0"
        )


def sigmoid(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float,
    label_smoothing: float = 0.0,
) -> DPOOutput:
    """DPO (Eq. 7); with label_smoothing = eps > 0 it is cDPO."""
    if not 0.0 <= label_smoothing <= 0.5:
        # Past 0.5 the smoothed target prefers the rejected answer: almost surely a config mistake.
        raise ValueError(f"label_smoothing must lie in [0, 0.5] for the 'sigmoid' DPO loss, got {label_smoothing}")
    margin, chosen_rewards, rejected_rewards = _margin_and_rewards(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta
    )
    logits = beta * margin  # [B]
    # logsigmoid rather than log(sigmoid()) so large negative margins give a finite loss and gradient.
    losses = -(1.0 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)  # [B]
    return DPOOutput(losses, chosen_rewards, rejected_rewards)


conservative = sigmoid


def robust(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float,
    label_smoothing: float = 0.0,
) -> DPOOutput:
    """rDPO: label_smoothing is the assumed flip rate eps of the preference labels, 0 <= eps < 0.5."""
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(
            f"label_smoothing (the label flip rate) must lie in [0, 0.5) for the 'robust' DPO loss, "
            f"got {label_smoothing}"
        )
    margin, chosen_rewards, rejected_rewards = _margin_and_rewards(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta
    )
    logits = beta * margin  # [B]
    # The flipped-label term enters with a minus sign: that subtraction is what removes the noise bias,
    # and it makes the loss unbounded below, unlike cDPO.
    losses = (
        -(1.0 - label_smoothing) * F.logsigmoid(logits) + label_smoothing * F.logsigmoid(-logits)
    ) / (1.0 - 2.0 * label_smoothing)  # [B]
    return DPOOutput(losses, chosen_rewards, rejected_rewards)


def hinge(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float,
    label_smoothing: float = 0.0,
) -> DPOOutput:
    """SLiC hinge: zero loss (and gradient) once beta h clears a margin of 1."""
    _reject_label_smoothing("hinge", label_smoothing)
    margin, chosen_rewards, rejected_rewards = _margin_and_rewards(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta
    )
    losses = torch.relu(1.0 - beta * margin)  # [B]
    return DPOOutput(losses, chosen_rewards, rejected_rewards)


def ipo(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float,
    label_smoothing: float = 0.0,
) -> DPOOutput:
    """IPO: regress h onto 1/(2 beta) instead of pushing it to infinity, which bounds overfitting."""
    _reject_label_smoothing("ipo", label_smoothing)
    margin, chosen_rewards, rejected_rewards = _margin_and_rewards(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta
    )
    losses = (margin - 1.0 / (2.0 * beta)) ** 2  # [B]
    return DPOOutput(losses, chosen_rewards, rejected_rewards)


DPOLossFn = Callable[..., DPOOutput]

DPO_LOSSES: dict[str, DPOLossFn] = {
    "sigmoid": sigmoid,
    "robust": robust,
    "hinge": hinge,
    "ipo": ipo,
}


def nll_loss(chosen_logps_sum: torch.Tensor, chosen_lengths: torch.Tensor) -> torch.Tensor:
    """Per-pair mean negative log-likelihood of the chosen completion, shape [B] (the RPO term).

    chosen_logps_sum: [B] summed log-probs of the chosen completion tokens.
    chosen_lengths: [B] number of those tokens (int or float).
    """
    # An empty completion contributes 0 rather than 0/0 = NaN, which would poison the whole batch.
    lengths = chosen_lengths.to(chosen_logps_sum.dtype).clamp(min=1.0)  # [B]
    return -chosen_logps_sum / lengths  # [B]
