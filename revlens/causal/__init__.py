"""Causal mediation along reversion directions (DESIGN §2): interventions, studies, controls.

- :mod:`~revlens.causal.kinds`: the intervention kinds (``clamp``, ``patch``, ``steer``) as
  objects registered once: what reference each reads, necessity or sufficiency test, its ``edit``;
- :mod:`~revlens.causal.interventions`: ``clamp`` / ``patch`` / ``steer`` context managers;
- :mod:`~revlens.causal.controls`: isotropic and covariance-matched random directions;
- :mod:`~revlens.causal.batched`: many interventions per forward pass;
- :func:`ablation_study` (settings: :class:`AblationConfig`) → :class:`CausalReport`.

Behaviour metrics live in :mod:`revlens.metrics` (re-exported here). A new intervention kind is
one :class:`~revlens.causal.kinds.Intervention` subclass and one :func:`register_intervention` call.
"""

from revlens.causal.config import AblationConfig
from revlens.causal.controls import random_directions
from revlens.causal.interventions import clamp, intervene, patch, steer
from revlens.causal.kinds import Intervention, intervention, register_intervention
from revlens.causal.refusal import RefusalSelection, directional_ablation, select_refusal_direction
from revlens.causal.report import CausalReport
from revlens.causal.study import ablation_study
from revlens.metrics import greedy_rate, kl_to, logit_diff, logit_rate, task_loss

__all__ = [
    "AblationConfig",
    "CausalReport",
    "Intervention",
    "RefusalSelection",
    "ablation_study",
    "clamp",
    "directional_ablation",
    "greedy_rate",
    "intervene",
    "intervention",
    "kl_to",
    "logit_diff",
    "logit_rate",
    "patch",
    "random_directions",
    "register_intervention",
    "select_refusal_direction",
    "steer",
    "task_loss",
]
