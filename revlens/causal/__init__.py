"""Causal mediation along reversion directions (DESIGN §2): interventions, metrics, studies.

- :mod:`~revlens.causal.interventions`: ``clamp`` / ``patch`` / ``steer`` context managers;
- :mod:`~revlens.causal.metrics`: behaviour metrics ``(logits, batch) -> Tensor[batch]``;
- :mod:`~revlens.causal.controls`: isotropic and covariance-matched random directions;
- :mod:`~revlens.causal.batched`: many interventions per forward pass;
- :func:`ablation_study` → :class:`CausalReport`.
"""

from revlens.causal.controls import random_directions
from revlens.causal.interventions import clamp, intervene, patch, steer
from revlens.causal.metrics import greedy_rate, kl_to, logit_diff, task_loss
from revlens.causal.report import CausalReport
from revlens.causal.study import ablation_study

__all__ = [
    "CausalReport",
    "ablation_study",
    "clamp",
    "greedy_rate",
    "intervene",
    "kl_to",
    "logit_diff",
    "patch",
    "random_directions",
    "steer",
    "task_loss",
]
