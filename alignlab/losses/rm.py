"""The reward-model loss: Bradley-Terry on scalar scores of a chosen and a rejected response.

With r_c and r_r the reward model's scores of the chosen and rejected response to one prompt, the
Bradley-Terry model (Bradley & Terry 1952; the RM of Ouyang et al. 2022, "InstructGPT", Eq. 1) takes
P(chosen preferred) = sigmoid(r_c - r_r), and the loss is its negative log-likelihood

    loss = -log sigmoid(r_c - r_r - m)

where m is an optional per-pair margin from the data (Touvron et al. 2023, "Llama 2", Eq. 2: a pair
rated "significantly better" must be separated by more; m = 0 without a margin column).

Choices made:
  * Label smoothing eps (the label taken to be right with probability 1 - eps, as cDPO does for DPO):
    -(1 - eps) log sigmoid(d) - eps log sigmoid(-d), d = r_c - r_r - m.
  * Reward centring (Eisenstein et al. 2023, "Helping or Herding?"; TRL's
    `center_rewards_coefficient`): + c (r_c + r_r)^2 per pair, which pulls the mean score towards 0.
    The BT loss sees only differences, so without it the scores drift by an arbitrary offset, which
    matters once the scores are used as a reward without normalisation.
  * Losses are returned per pair, not averaged: the trainer owns reduction and accumulation.
  * Accuracy counts r_c > r_r strictly: a tie (an untrained model scoring both alike) is not a hit.

Left out: per-pair weights, the multi-objective/ordinal losses of some RMs (e.g. Skywork's), and
the pairwise ranking of K > 2 responses (InstructGPT's K-choose-2 batches): give them as pairs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

__all__ = ["RMOutput", "bradley_terry_loss"]


@dataclass
class RMOutput:
    losses: torch.Tensor  # [B] per-pair loss
    margins: torch.Tensor  # [B] r_c - r_r, detached (metrics)
    accuracies: torch.Tensor  # [B] 1.0 where r_c > r_r, detached


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor, *, margin: Optional[torch.Tensor] = None,
                       label_smoothing: float = 0.0, center_coefficient: float = 0.0) -> RMOutput:
    """Per-pair Bradley-Terry loss of scores `chosen`, `rejected` ([B] each), `margin` [B] or None.

    >>> out = bradley_terry_loss(torch.tensor([1.0]), torch.tensor([0.0]))
    >>> round(float(out.losses[0]), 4)  # -log sigmoid(1)
    0.3133
    """
    difference = chosen - rejected  # [B]
    shifted = difference - margin if margin is not None else difference  # [B]
    losses = -(1.0 - label_smoothing) * F.logsigmoid(shifted)  # [B]
    if label_smoothing:
        losses = losses - label_smoothing * F.logsigmoid(-shifted)
    if center_coefficient:
        losses = losses + center_coefficient * (chosen + rejected) ** 2
    margins = difference.detach()
    return RMOutput(losses=losses, margins=margins, accuracies=(margins > 0).to(chosen.dtype))
