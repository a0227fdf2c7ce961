"""The vocabulary of revlens: every mode is a ``Literal``, and its tuple of values is derived from it.

One place, so that a mode added here is accepted by the API, validated with the same message
everywhere, and offered as ``choices=`` by the command line.

Example:
    >>> SITE_KINDS[:2]
    ('resid_post', 'resid_pre')
    >>> check_mode("site", "resid_pre", SITE_KINDS)
    'resid_pre'
"""

from collections.abc import Iterable, Iterator, Sequence
from typing import Literal, get_args, no_type_check, overload

from revlens.errors import ConfigError

__all__ = [
    "BLOCK_CONSTRAINTS",
    "BLOCK_METHODS",
    "CONTROL_KINDS",
    "DATA_SPLITS",
    "DIRECTION_METHODS",
    "GENERATION_METHODS",
    "GRAD_BATCHING",
    "INTERVENTION_KINDS",
    "INTERVENTION_POSITIONS",
    "POSITION_RULES",
    "RANK_RULES",
    "SITE_KINDS",
    "STRATEGIES",
    "SVD_METHODS",
    "WEIGHT_BLOCK_MODES",
    "WEIGHT_BLOCK_SIDES",
    "WEIGHT_SIDES",
    "WHICH",
    "BlockConstraint",
    "BlockMethod",
    "ControlKind",
    "DataSplit",
    "DirectionMethod",
    "GenerationMethod",
    "GradBatching",
    "InterventionKind",
    "InterventionPositions",
    "PositionRuleName",
    "RankRule",
    "Registered",
    "SiteKind",
    "Strategy",
    "SvdMethod",
    "WeightBlockMode",
    "WeightBlockSide",
    "WeightSide",
    "Which",
    "check_mode",
    "check_modes",
]

SiteKind = Literal["resid_post", "resid_pre", "resid_mid", "attn_out", "mlp_out", "ln_final"]
"""Where a statistic is read or an intervention applied (see :mod:`revlens.sites`)."""

PositionRuleName = Literal["last", "mean"]
"""Which token positions of a prompt a statistic reads (a bool mask is the third option)."""

DirectionMethod = Literal["mean_diff", "pca", "probe", "whitened", "refusal"]
"""Built-in direction estimators (:mod:`revlens.directions`): the four history estimators
(aligned → base) and ``refusal`` (harmful − harmless on one checkpoint, from labelled probes; not
among ``analyze``'s defaults)."""

Which = Literal["reference", "all", "none"]
"""Which checkpoints get second moments / kept per-prompt activations in :func:`revlens.collect`."""

InterventionKind = Literal["clamp", "patch", "steer"]
"""The built-in causal interventions on the residual stream (:mod:`revlens.causal.kinds`); more
are registered there (``register_intervention``), and :data:`INTERVENTION_KINDS` lists them all."""

InterventionPositions = Literal["all", "last"]
"""Where an ablation study intervenes (a bool mask is the third option)."""

ControlKind = Literal["iso", "cov"]
"""Random control directions: isotropic, or matched to the aligned activation covariance."""

Strategy = Literal["grow", "repeat", "loop"]
"""How batched intervention sweeps share forward passes (:mod:`revlens.causal.batched`)."""

BlockMethod = Literal["update", "gradient", "penalty", "hook"]
"""How :class:`revlens.block.ReversionBlocker` blocks motion along ``v_rev``: the built-in methods,
for annotations. The registry (:data:`revlens.block.METHODS`, :func:`revlens.block.register`) is
what validates a method name, user-registered ones included; a test keeps the two equal."""

GradBatching = Literal["auto", "loop", "vmap"]
"""How the blocker computes its per-layer parameter gradients."""

WeightSide = Literal["left", "right", "both"]
"""Which top-k singular subspace of ``V = W_aligned − W_base`` a weight update is measured in
(:mod:`revlens.weights`): output side (``U_k``), input side (``V_k``), or both (``U_k · V_kᵀ``)."""

WeightBlockSide = Literal["left", "right", "both", "direction"]
"""The subspace :class:`revlens.weights.WeightBlocker` projects updates off or onto (``direction``:
the one flattened direction ``V / ‖V‖``)."""

WeightBlockMode = Literal["off", "onto"]
"""Remove the update's component in the subspace (``off``) or keep only it (``onto``, SafeLoRA-like)."""

SvdMethod = Literal["auto", "full", "lowrank"]
"""How the top-k singular vectors of ``V`` are computed (``auto``: exact Gram eigendecomposition up to
2048 on the short side, randomized low-rank above)."""
BlockConstraint = Literal["equal", "one_sided", "confine"]
"""What :class:`revlens.block.ReversionBlocker` holds: ``s = 0`` along the subspace, ``s ≤ 0`` (no
motion toward base), or the drift confined to the subspace (its complement held at 0)."""

RankRule = Literal["margin", "max"]
"""How :func:`revlens.causal.ablation_study` chooses the subspace rank k on the selection prompts."""


class Registered(Sequence[str]):
    """A live, read-only tuple of the names a registry holds (validation, CLI ``choices``): the
    registry adds a name when it registers it, so a new kind is known everywhere at once."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._names: list[str] = []

    @overload
    def __getitem__(self, i: int) -> str: ...
    @overload
    def __getitem__(self, i: slice) -> tuple[str, ...]: ...
    def __getitem__(self, i: int | slice) -> str | tuple[str, ...]:
        return tuple(self._names)[i]

    def __len__(self) -> int:
        return len(self._names)

    def __iter__(self) -> Iterator[str]:
        return iter(tuple(self._names))

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def __eq__(self, other: object) -> bool:
        return tuple(self) == (tuple(other) if isinstance(other, (tuple, Registered)) else other)

    def __hash__(self) -> int:
        return id(self)

    def __repr__(self) -> str:
        return repr(tuple(self._names))

    def _add(self, name: str) -> None:
        if name not in self._names:
            self._names.append(name)

    def _remove(self, name: str) -> None:
        self._names.remove(name)


GenerationMethod = Literal["auto", "cached", "full"]
"""How :func:`revlens.metrics.greedy_generate` decodes: KV-cached, full forwards (the reference), or
cached where it reproduces the full path and full otherwise (``auto``)."""

SITE_KINDS: tuple[str, ...] = get_args(SiteKind)
GENERATION_METHODS: tuple[str, ...] = get_args(GenerationMethod)
POSITION_RULES: tuple[str, ...] = get_args(PositionRuleName)
DIRECTION_METHODS: tuple[str, ...] = get_args(DirectionMethod)
WHICH: tuple[str, ...] = get_args(Which)
INTERVENTION_KINDS = Registered("intervention kind")
"""Every registered intervention kind, filled by :mod:`revlens.causal.kinds` (its registry)."""
INTERVENTION_POSITIONS: tuple[str, ...] = get_args(InterventionPositions)
CONTROL_KINDS: tuple[str, ...] = get_args(ControlKind)
STRATEGIES: tuple[str, ...] = get_args(Strategy)
BLOCK_METHODS: tuple[str, ...] = get_args(BlockMethod)
GRAD_BATCHING: tuple[str, ...] = get_args(GradBatching)
WEIGHT_SIDES: tuple[str, ...] = get_args(WeightSide)
WEIGHT_BLOCK_SIDES: tuple[str, ...] = get_args(WeightBlockSide)
WEIGHT_BLOCK_MODES: tuple[str, ...] = get_args(WeightBlockMode)
SVD_METHODS: tuple[str, ...] = get_args(SvdMethod)
BLOCK_CONSTRAINTS: tuple[str, ...] = get_args(BlockConstraint)
RANK_RULES: tuple[str, ...] = get_args(RankRule)

DataSplit = Literal["train", "selection", "held_out"]
"""A published data set's deterministic split (:mod:`revlens.datasets.splits`)."""
DATA_SPLITS: tuple[str, ...] = get_args(DataSplit)


@no_type_check  # validates its own arguments (typed errors), also under the test type-checker
def check_mode(
    name: str, value: str, valid: Sequence[str], *, error: type[Exception] = ConfigError
) -> str:
    """``value`` if it is one of ``valid``; otherwise ``error`` naming ``name``, the value and the
    valid choices."""
    if not isinstance(value, str) or value not in valid:
        raise error(f"{name}={value!r} is not understood; valid: {', '.join(map(repr, valid))}")
    return value


@no_type_check  # validates its own arguments (typed errors), also under the test type-checker
def check_modes(
    name: str, values: str | Iterable[str], valid: Sequence[str], *, allow_empty: bool = False
) -> list[str]:
    """A list of modes: one string (read as one item, never as its characters) or a sequence."""
    items = [values] if isinstance(values, str) else values
    if not isinstance(items, (list, tuple)) and not hasattr(items, "__iter__"):
        raise ConfigError(f"{name}={values!r}: expected one of {list(valid)} or a list of them")
    items = list(items)
    if not items and not allow_empty:
        raise ConfigError(f"{name} is empty; valid: {', '.join(map(repr, valid))}")
    out: list[str] = []
    for item in items:
        check_mode(name, item, valid)
        if item not in out:
            out.append(item)
    return out
