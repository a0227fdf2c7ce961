"""A refusal-direction penalty in the spirit of ProCon (arXiv 2509.06795): penalise the change of
each prompt's hidden-state projection on a direction ``r`` (the refusal direction, or any
:class:`~revlens.directions.Directions`) while fine-tuning.

With ``r_l`` the (unit) direction at layer ``l`` and ``h_l(θ, x)`` the position-weighted residual of
probe prompt ``x`` (revlens' site conventions), the added loss term is

    strength · Σ_l Σ_{x ∈ batch} ( r_l·h_l(θ, x) − r_l·h_l(θ_aligned, x) )²

— revlens' ``penalty`` method with ``per_prompt=True`` (its gradient added to ``.grad`` before
each optimizer step; the probe batch rotates through the probe set). *In the spirit of*, not a
reproduction: ProCon's own term, its weighting and the data it is computed on (the paper's
training batches vs a fixed probe set here — pass the fine-tuning prompts as ``probes`` to come
closer) were not checked against the paper. ``r`` is an input: the contrastive refusal direction
is estimated elsewhere (``revlens.directions``); a rank-k basis gives one term per basis row.
Full and LoRA fine-tuning (the corrected tensors are the trained ones).
"""

from typing import Any

from revlens.block.config import BlockerConfig
from revlens.block.methods import Penalty
from revlens.block.registry import register
from revlens.errors import ConfigError

__all__ = ["ProConPenalty"]


@register("procon")
class ProConPenalty(Penalty):
    """The per-prompt projection penalty of the module docstring. Arguments as
    :class:`~revlens.block.ReversionBlocker` (``directions`` = ``r``, ``probes``, ``reference`` =
    the aligned model, ``strength`` = the penalty's weight); ``per_prompt`` is always on."""

    def __init__(self, directions: Any, probes: Any, reference: Any, **kwargs: Any) -> None:
        config = kwargs.get("config")
        if kwargs.get("per_prompt") is False or (config is not None and not config.per_prompt):
            raise ConfigError(
                "method='procon' penalises each prompt's projection: per_prompt must be True"
            )
        kwargs["per_prompt"] = True
        super().__init__(directions, probes, reference, **kwargs)

    @classmethod
    def check_config(cls, config: BlockerConfig) -> None:
        """Equality constraint only (``per_prompt`` is forced on by the constructor)."""
        if config.constraint != "equal":
            raise ConfigError(
                f"method='procon' holds each projection at its aligned value (constraint='equal'), "
                f"not constraint={config.constraint!r}"
            )
