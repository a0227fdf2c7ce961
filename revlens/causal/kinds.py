"""Intervention kinds as objects, registered once (the seam of TransformerLens' patch setters).

An :class:`Intervention` says

- what **reference** it reads: ``"none"``, ``"mean"`` (the aligned model's mean activation ``μ``
  ``[d]``), ``"source"`` (the aligned model's activation on the same prompt ``[batch, pos, d]``)
  or ``"alpha"`` (a scale per copy ``[copies]``);
- which **test** it is: ``"necessity"`` (run on the fine-tuning checkpoints θ_t, over the
  subspace ranks; read as a mediation fraction of the gap ``M(θ_t) − M(aligned)``) or
  ``"sufficiency"`` (run on the aligned model over the ``alphas`` grid; read as the change
  ``M(aligned + edit) − M(aligned)``, oriented like the reversion);
- the most directions it edits at once (``max_rank``; ``None``: any k);
- **how it edits** ``h``: :meth:`Intervention.edit` ``(h, basis, ref, mask)``, with ``basis`` one
  orthonormal k-frame per copy.

The batched sweep (:mod:`revlens.causal.batched`), the sequential runner
(:mod:`revlens.causal.sequential`) and the context managers (:func:`~revlens.causal.intervene`)
all call the same :meth:`~Intervention.edit`; the study, its plan, its report and the HTML page ask
the kind object. A new kind is one subclass and one :func:`register_intervention` call; its name
joins :data:`revlens.modes.INTERVENTION_KINDS` (validation, CLI ``choices``).

Example:
    >>> class ProjectOut(Intervention):
    ...     '''h ← h − QᵀQ h'''
    ...     def edit(self, h, basis, ref, mask):
    ...         return masked(h, -project(h, basis), mask)
    >>> _ = register_intervention("project_out", ProjectOut)  # doctest: +SKIP
"""

from collections.abc import Iterable, Mapping
from typing import ClassVar, Literal, get_args, no_type_check

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from revlens.errors import ConfigError
from revlens.modes import INTERVENTION_KINDS

RefValue = Tensor | Mapping[int, Tensor] | None
"""What a kind reads besides ``h``: a tensor (a mean, source activations, scales), a per-layer
mapping of them, or nothing."""

__all__ = [
    "Clamp",
    "Intervention",
    "Patch",
    "Reference",
    "Steer",
    "Test",
    "intervention",
    "interventions",
    "kind_is",
    "masked",
    "of_test",
    "project",
    "register_intervention",
    "unregister_intervention",
]

Reference = Literal["none", "mean", "source", "alpha"]
"""What an intervention reads besides ``h``: nothing, ``μ``, the per-prompt source or α."""

Test = Literal["necessity", "sufficiency"]
"""Removing motion on θ_t (necessity) or adding it to the aligned model (sufficiency)."""

_NEEDS: dict[str, str] = {
    "mean": "a reference mean",
    "source": "a source activation",
    "alpha": "alpha",
}


def project(
    x: Float[Tensor, "#copies batch pos d"], basis: Float[Tensor, "copies k d"]
) -> Float[Tensor, "copies batch pos d"]:
    """``QᵀQ x`` per copy (``x`` with one copy broadcasts); k = 1 as an elementwise dot product."""
    q = basis.to(x.dtype)
    if q.shape[1] == 1:
        v = q[:, 0][:, None, None, :]
        return (x * v).sum(-1, keepdim=True) * v
    coords = (
        torch.einsum("bpd,ckd->cbpk", x[0], q)
        if x.shape[0] == 1
        else torch.einsum("cbpd,ckd->cbpk", x, q)
    )
    return torch.einsum("cbpk,ckd->cbpd", coords, q)


def masked(
    h: Float[Tensor, "#copies batch pos d"],
    delta: Float[Tensor, "#copies #batch #pos d"],
    mask: Float[Tensor, "batch pos"] | Bool[Tensor, "batch pos"] | None,
) -> Float[Tensor, "copies batch pos d"]:
    """``h + delta`` where ``mask`` is set (everywhere when ``None``; ``delta`` broadcasts)."""
    if mask is not None:
        delta = delta * mask.to(h.dtype)[None, :, :, None]
    return h + delta


class Intervention:
    """One intervention kind (see the module docstring); subclasses set the class attributes and
    implement :meth:`edit`. ``name`` is set by :func:`register_intervention`."""

    name: str = ""
    reference: ClassVar[Reference] = "none"
    test: ClassVar[Test] = "necessity"
    max_rank: ClassVar[int | None] = None
    on_generated: ClassVar[bool] = True
    """Whether it also edits the new tokens' positions of generation / teacher forcing."""

    def edit(
        self,
        h: Float[Tensor, "#copies batch pos d"],
        basis: Float[Tensor, "copies k d"],
        ref: Tensor | None,
        mask: Tensor | None,
    ) -> Float[Tensor, "copies batch pos d"]:
        """``h`` edited along each copy's orthonormal k-frame, given the reference and the
        ``[batch, pos]`` mask of the positions to change (``None``: all)."""
        raise NotImplementedError

    def pick(
        self,
        *,
        mean: RefValue = None,
        source: RefValue = None,
        alpha: RefValue = None,
        where: str = "",
    ) -> RefValue:
        """The one reference this kind reads among those a caller holds (tensors, or per-layer
        mappings of them; ``ConfigError`` naming the kind, and ``where``, when it is missing)."""
        ref = {"none": None, "mean": mean, "source": source, "alpha": alpha}[self.reference]
        if ref is None and self.reference in _NEEDS:
            raise ConfigError(f"{self.name}{where} needs {_NEEDS[self.reference]}")
        return ref

    def check_rank(self, k: int, where: str = "") -> None:
        """``ConfigError`` when a k-dim subspace is more than this kind edits."""
        if self.max_rank is not None and k > self.max_rank:
            raise ConfigError(
                f"{self.name} needs one direction per copy{where}; got {k}-dim subspaces"
            )

    def mediation_fraction(
        self, clean: float, metric: float, aligned: float, gap_tol: float
    ) -> float:
        """The share of the gap ``clean − aligned`` this edit removed (NaN where the gap is ~0 and
        for a sufficiency test, which is read as a dose–response instead)."""
        gap = clean - aligned
        defined = self.test == "necessity" and abs(gap) > gap_tol * max(
            1.0, abs(clean), abs(aligned)
        )
        return (clean - metric) / gap if defined else float("nan")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, reference={self.reference!r}, test={self.test!r})"


class Clamp(Intervention):
    """``h ← h − QᵀQ(h − μ)``: remove the drift in the subspace relative to a reference mean."""

    reference: ClassVar[Reference] = "mean"

    def edit(self, h: Tensor, basis: Tensor, ref: Tensor | None, mask: Tensor | None) -> Tensor:
        return masked(h, -project(h - ref.to(h.dtype), basis), mask)  # type: ignore[union-attr]


class Patch(Clamp):
    """``h ← h − QᵀQ(h − a)``: take the subspace coordinates from the source activation ``a`` of
    the same prompt (at the prompt positions only: no source at generated ones)."""

    reference: ClassVar[Reference] = "source"
    on_generated: ClassVar[bool] = False


class Steer(Intervention):
    """``h ← h + α v``: a sufficiency test on the aligned model, one direction per copy."""

    reference: ClassVar[Reference] = "alpha"
    test: ClassVar[Test] = "sufficiency"
    max_rank: ClassVar[int | None] = 1

    def edit(self, h: Tensor, basis: Tensor, ref: Tensor | None, mask: Tensor | None) -> Tensor:
        v = basis[:, 0].to(h.dtype)[:, None, None, :]
        return masked(h, ref.to(h.dtype)[:, None, None, None] * v, mask)  # type: ignore[union-attr]


_REGISTRY: dict[str, Intervention] = {}
_BUILTIN = ("clamp", "patch", "steer")


@no_type_check  # validates its own arguments (typed errors), also under the test type-checker
def register_intervention(name: str, cls: type[Intervention]) -> Intervention:
    """Make ``cls`` known as the intervention kind ``name`` everywhere (studies, configs, CLI
    ``choices``, the context managers); returns its instance.

    Raises:
        ConfigError: ``name`` is not an identifier, is taken by another class, or ``cls`` is not
            an :class:`Intervention` subclass.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ConfigError(f"register_intervention: name {name!r} must be an identifier")
    if not (isinstance(cls, type) and issubclass(cls, Intervention)):
        raise ConfigError(
            f"register_intervention({name!r}): {cls!r} is not an Intervention subclass"
        )
    if cls.test not in get_args(Test) or cls.reference not in get_args(Reference):
        raise ConfigError(
            f"register_intervention({name!r}): test={cls.test!r} / reference={cls.reference!r} is "
            "not understood"
        )
    if cls.reference == "alpha" and cls.test == "necessity":
        raise ConfigError(
            f"register_intervention({name!r}): a necessity test runs on the checkpoints without a "
            "scale; a kind reading alpha is a sufficiency test (run once per alpha)"
        )
    if name in _REGISTRY:
        if type(_REGISTRY[name]) is cls:
            return _REGISTRY[name]
        raise ConfigError(
            f"intervention kind {name!r} is already registered ({type(_REGISTRY[name]).__name__})"
        )
    obj = cls()
    obj.name = name
    _REGISTRY[name] = obj
    INTERVENTION_KINDS._add(name)
    return obj


def unregister_intervention(name: str) -> None:
    """Forget a registered kind (tests; the built-in kinds stay)."""
    if name in _BUILTIN:
        raise ConfigError(f"the built-in intervention kind {name!r} cannot be unregistered")
    if _REGISTRY.pop(name, None) is not None:
        INTERVENTION_KINDS._remove(name)


@no_type_check  # validates its own arguments (typed errors), also under the test type-checker
def intervention(kind: "str | Intervention") -> Intervention:
    """The registered kind ``kind`` (an :class:`Intervention` passes through).

    Raises:
        ConfigError: an unknown name, listing the registered ones.
    """
    if isinstance(kind, Intervention):
        return kind
    if not isinstance(kind, str) or kind not in _REGISTRY:
        raise ConfigError(
            f"kind={kind!r} is not understood; valid: {', '.join(map(repr, _REGISTRY))}"
        )
    return _REGISTRY[kind]


def interventions(
    names: Iterable[str] | None = None, *, test: Test | None = None
) -> list[Intervention]:
    """The kinds named (default: every registered one), in that order, of one ``test`` if given."""
    objs = [intervention(n) for n in (_REGISTRY if names is None else names)]
    return [o for o in objs if test is None or o.test == test]


def of_test(names: Iterable[str], test: Test) -> list[str]:
    """The names among ``names`` whose kind is a ``test`` (``"necessity"`` / ``"sufficiency"``)."""
    return [o.name for o in interventions(names, test=test)]


def kind_is(kinds: Iterable[str], test: Test) -> list[bool]:
    """Per item of ``kinds`` (e.g. a table's ``kind`` column): whether its kind is a ``test``."""
    known: dict[str, bool] = {}
    for k in set(map(str, kinds)):
        known[k] = intervention(k).test == test
    return [known[str(k)] for k in kinds]


register_intervention("clamp", Clamp)
register_intervention("patch", Patch)
register_intervention("steer", Steer)
