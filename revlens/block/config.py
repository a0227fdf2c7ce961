"""``BlockerConfig``: the settings of :class:`~revlens.block.ReversionBlocker`, validated up front.

``method`` is any name registered for a ``ReversionBlocker`` subclass (:mod:`revlens.block.registry`);
what a method cannot honour is checked by its class (``check_config``), not here."""

import sys
from dataclasses import dataclass
from typing import Any, no_type_check

from revlens._config import Config, as_float, as_int, as_str_tuple, option
from revlens.block.registry import MethodNames, method_class
from revlens.errors import ConfigError
from revlens.modes import BLOCK_CONSTRAINTS, GRAD_BATCHING, SITE_KINDS, check_mode

__all__ = ["BlockerConfig"]


def _loaded_blocker() -> type | None:
    """``ReversionBlocker`` once its module has loaded (it imports this one; ``None`` until then)."""
    return getattr(sys.modules.get("revlens.block.blocker"), "ReversionBlocker", None)


_METHODS = MethodNames(_loaded_blocker)


@no_type_check  # validates its own fields (typed errors), also under the test type-checker
@dataclass
class BlockerConfig(Config):
    """Settings of a :class:`ReversionBlocker` (see its docstring for each field)."""

    method: str = option(
        "update", "blocking method (a registered ReversionBlocker method)", choices=_METHODS
    )
    strength: float = option(
        1.0, "fraction of the component removed (update/gradient/hook), or λ (penalty)"
    )
    restore: bool = option(True, "add the restoring term (update only)")
    probe_batch_size: Any = option(
        "auto", "prompts per measurement ('auto', an int, or None: all)", cli=False
    )
    refresh_every: int = option(2, "measure s and the per-layer gradients every k steps")
    grad_batching: str = option(
        "auto", "per-layer gradients: loop, vmap or auto", choices=GRAD_BATCHING
    )
    site: str = option("resid_post", "site kind", choices=SITE_KINDS)
    ridge: float = option(1e-6, "relative ridge of the projection's Gram matrix")
    seed: int = option(0, "seed of the probe-batch order")
    rank: int | None = option(
        None, "block the first k rows of each layer's basis (default: all of them)", metavar="K"
    )
    constraint: str = option(
        "equal",
        "hold the subspace coordinates at 0 ('equal'), stop only motion toward base "
        "('one_sided'), or confine the drift to the subspace ('confine')",
        choices=BLOCK_CONSTRAINTS,
    )
    per_prompt: bool = option(
        False,
        "constrain each probe prompt's projection, not only the batch mean "
        "(batch x k rows per layer)",
    )
    params: tuple[str, ...] = option(
        (),
        "glob patterns of the trained parameters' names to correct, e.g. '*lora_*' "
        "(default: every trainable parameter the optimizer steps)",
        metavar="PATTERN",
    )

    def validate(self) -> None:
        """Check every field (typed errors naming the field)."""
        from revlens.block.blocker import ReversionBlocker

        method = method_class(self.method, ReversionBlocker)
        self.strength = as_float("strength", self.strength, min=0.0)
        if not isinstance(self.restore, bool):
            raise ConfigError(f"restore must be True or False, got {self.restore!r}")
        if self.probe_batch_size not in ("auto", None):
            self.probe_batch_size = as_int("probe_batch_size", self.probe_batch_size, min=1)
        self.refresh_every = as_int("refresh_every", self.refresh_every, min=1)
        check_mode("grad_batching", self.grad_batching, GRAD_BATCHING)
        check_mode("site", self.site, SITE_KINDS)
        self.ridge = as_float("ridge", self.ridge, min=0.0)
        self.seed = as_int("seed", self.seed)
        if self.rank is not None:
            self.rank = as_int("rank", self.rank, min=1)
        check_mode("constraint", self.constraint, BLOCK_CONSTRAINTS)
        self.params = as_str_tuple("params", self.params)
        if not isinstance(self.per_prompt, bool):
            raise ConfigError(f"per_prompt must be True or False, got {self.per_prompt!r}")
        method.check_config(self)
