"""Interventions on the residual stream, as context managers (DESIGN §2 "Causal mediation").

Every registered kind (:mod:`revlens.causal.kinds`; :func:`intervene` takes any) at one or more
revlens layers (see :mod:`revlens.sites`), with ``v`` a unit direction (or an orthonormal basis
``Q`` of a subspace); the built-in three:

- ``clamp``: ``h ← h − ((h − μ)·v) v`` — remove the drift along ``v`` relative to a reference
  mean ``μ`` (usually ``μ_l(aligned)``);
- ``patch``: ``h ← h − ((h − a)·v) v`` — take the ``v``-coordinate from a source activation
  ``a`` of the same prompt (usually the aligned checkpoint's: activation patching across
  checkpoints); with ``Q = I`` this is full-vector activation patching;
- ``steer``: ``h ← h + α v``.

Each hook calls the kind's :meth:`~revlens.causal.kinds.Intervention.edit`, the same one the
batched sweep calls; what reference it reads (``reference_mean``, ``source_acts``, ``alpha``) is
the kind's ``reference``.

Interventions apply at **every position** of the sequence by default; pass ``positions`` (a bool
mask ``[batch, pos]``) to change only some. Hooks are registered on enter and always removed
on exit, also when the block raises.

**With generation and teacher forcing** (:mod:`revlens.metrics.generation`, continuation scores):
the forward runs the prompt followed by new tokens (:mod:`revlens.sites.layout`). ``clamp`` and
``steer`` (every kind with ``on_generated``) then act at every prompt position *and* at every
generated position — the same edit at each step of the decoding, as if the clamped model were
run step by step (tested); pass ``generated=False`` to leave the new tokens' positions alone.
``positions`` masks the prompt columns. ``patch`` takes the v-coordinate from the source at the
**prompt** positions only (the source model's run covers the prompt, not tokens it never
generated); at generated positions the stream is left as the patched prompt makes it.

Example:
    >>> with clamp(lm, v_rev, layers=[2], reference_mean=stats.mean("aligned")[2]):  # doctest: +SKIP
    ...     logits = lm.bridge(tokens)
"""

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from revlens._types import ModuleLike
from revlens.causal.kinds import Intervention, intervention
from revlens.directions import Directions
from revlens.errors import ConfigError, NonFiniteError, ShapeMismatchError
from revlens.modes import InterventionKind, SiteKind
from revlens.sites import LayerSpec, access
from revlens.sites.cached import positionwise
from revlens.sites.layout import current_layout

__all__ = ["Kind", "apply_intervention", "clamp", "intervene", "patch", "steer"]

Kind = InterventionKind
DirectionsLike = Directions | Tensor
PerLayer = Tensor | Mapping[int, Tensor]


def apply_intervention(
    h: Float[Tensor, "#copies batch pos d_model"],
    kind: str,
    vectors: Float[Tensor, "copies d_model"],
    *,
    reference: Float[Tensor, "*ref d_model"] | None = None,
    alpha: Float[Tensor, " copies"] | None = None,
    mask: Bool[Tensor, "batch pos"] | None = None,
) -> Float[Tensor, "copies batch pos d_model"]:
    """Apply ``kind`` along one direction per copy; ``h`` may have 1 copy (broadcast): the kind's
    :meth:`~revlens.causal.kinds.Intervention.edit` with k = 1.

    ``reference`` is ``μ`` ``[d]`` for ``clamp`` and the source activation ``[batch, pos, d]``
    for ``patch``; ``alpha`` ``[copies]`` is used by ``steer``.
    """
    obj = intervention(kind)
    return obj.edit(
        h, vectors[:, None], obj.pick(mean=reference, source=reference, alpha=alpha), mask
    )


def _basis(directions: DirectionsLike, layers: list[int], d_model: int) -> dict[int, Tensor]:
    """layer -> orthonormal rows ``[k, d]`` (k = 1 for a direction)."""
    if isinstance(directions, Directions):
        directions.check_d_model(d_model)
        return {layer: directions.subspace(layer).float() for layer in layers}
    t = torch.as_tensor(directions).detach().float()
    if t.ndim == 1:
        t = t[None].expand(len(layers), -1)
    if t.ndim not in (2, 3) or t.shape[0] != len(layers):
        raise ShapeMismatchError(
            f"directions of shape {tuple(t.shape)} need one row per layer {layers}; "
            "give [d_model], [layer, d_model] or [layer, k, d_model]"
        )
    if t.shape[-1] != d_model:
        raise ShapeMismatchError(
            f"directions have d_model={t.shape[-1]} but the model has d_model={d_model}"
        )
    if not bool(torch.isfinite(t).all()):
        raise NonFiniteError("directions hold NaN or inf")
    dirs = Directions.from_tensor(t, layers)  # normalised / orthonormalised, zero rows refused
    return {layer: dirs.subspace(layer).float() for layer in layers}


def _per_layer(value: PerLayer, layers: list[int], name: str, pos: int) -> dict[int, Tensor]:
    if isinstance(value, Mapping):
        missing = [layer for layer in layers if layer not in value]
        if missing:
            raise ShapeMismatchError(f"{name} has no entry for layer(s) {missing}")
        return {layer: torch.as_tensor(value[layer]) for layer in layers}
    t = torch.as_tensor(value)
    if len(layers) == 1 and t.ndim == pos:
        return {layers[0]: t}
    if t.ndim != pos + 1 or t.shape[0] != len(layers):
        raise ShapeMismatchError(
            f"{name} of shape {tuple(t.shape)} needs a leading layer axis of size {len(layers)}"
        )
    return {layer: t[i] for i, layer in enumerate(layers)}


def _prompt_mask(positions: Tensor | None, h: Tensor, layer: int) -> Tensor | None:
    """``positions`` checked against an ordinary forward's batch ``h`` ``[batch, pos, d]``; ``[batch, pos]``."""
    if positions is None:
        return None
    if tuple(positions.shape) != tuple(h.shape[:2]):
        raise ShapeMismatchError(
            f"positions mask {tuple(positions.shape)} does not match the batch {tuple(h.shape[:2])}"
        )
    return positions.to(h.device).to(h.dtype)


def _extended_mask(positions: Tensor | None, h: Tensor, width: int, generated: bool) -> Tensor:
    """The mask ``[batch, pos]`` of an extended forward (prompt columns ``< width``, then new
    tokens, see :mod:`revlens.sites.layout`): the prompt part from ``positions`` (all when
    ``None``), the new columns from ``generated``."""
    b, n = h.shape[:2]
    if positions is not None and tuple(positions.shape) != (b, width):
        raise ShapeMismatchError(
            f"positions mask {tuple(positions.shape)} does not match the prompts ({b}, {width})"
        )
    head = (
        torch.ones(b, width, device=h.device)
        if positions is None
        else positions.to(h.device).float()
    )
    tail = torch.full((b, n - width), float(generated), device=h.device)
    return torch.cat([head, tail], 1).to(h.dtype)


def _make_edit(
    kind: Intervention,
    q: Tensor,
    layer: int,
    reference: Tensor | None,
    positions: Tensor | None,
    generated: bool = True,
) -> Any:
    def edit(h: Tensor) -> Tensor:
        layout = current_layout()
        width = (
            layout.prompt_width
            if layout is not None and h.shape[1] >= layout.prompt_width
            else None
        )
        ref = reference.to(h.device) if reference is not None else None
        if ref is not None and kind.reference == "source":
            expected = tuple(h.shape) if width is None else (h.shape[0], width, h.shape[2])
            if tuple(ref.shape) != expected:
                raise ShapeMismatchError(
                    f"{kind.name} at layer {layer}: source activation has shape {tuple(ref.shape)}, the forward "
                    f"pass has {expected} (same prompts, same padding expected)"
                )
            if width is not None:  # the source covers the prompt columns only
                ref = torch.cat([ref.to(h.dtype), h[:, width:]], 1)
        mask = (
            _prompt_mask(positions, h, layer)
            if width is None
            else _extended_mask(positions, h, width, generated and kind.on_generated)
        )
        return kind.edit(h[None], q[None].to(h.device), ref, mask)[0]

    return edit


# what intervene() takes for each reference an intervention kind reads: (keyword, dims, what it is)
_KEYWORDS = {
    "mean": ("reference_mean", 1, "e.g. the aligned model's mean activation"),
    "source": ("source_acts", 3, "the source model's activations on the same prompts"),
}


def reference_keyword(kind: Intervention, ref: Any) -> dict[str, Any]:
    """The keyword of :func:`intervene` that passes ``ref``, the reference ``kind`` reads."""
    if kind.reference == "alpha":
        return {"alpha": float(ref)}
    return {} if kind.reference == "none" else {_KEYWORDS[kind.reference][0]: ref}


def _references(
    kind: Intervention, layers: list[int], given: dict[str, Any]
) -> dict[int, Tensor | None]:
    """layer -> the reference ``kind`` reads there, from the keyword of :func:`intervene` that holds it."""
    if kind.reference == "alpha":
        alpha = given["alpha"]
        if alpha is None or not torch.isfinite(torch.tensor(float(alpha))):
            raise ConfigError(f"{kind.name} needs a finite alpha; got {alpha!r}")
        return dict.fromkeys(layers, torch.tensor([float(alpha)], dtype=torch.float64))
    if kind.reference == "none":
        return dict.fromkeys(layers)
    keyword, dims, what = _KEYWORDS[kind.reference]
    if given[keyword] is None:
        raise ConfigError(f"{kind.name} needs {keyword} ({what})")
    return dict(_per_layer(given[keyword], layers, keyword, dims))


@contextmanager
def intervene(
    model: ModuleLike,
    kind: "str | Intervention",
    directions: DirectionsLike,
    layers: LayerSpec | None = None,
    *,
    reference_mean: PerLayer | None = None,
    source_acts: PerLayer | None = None,
    alpha: float | None = None,
    positions: Bool[Tensor, "batch pos"] | None = None,
    site: SiteKind = "resid_post",
    generated: bool = True,
) -> Iterator[None]:
    """Apply one intervention kind while the block runs (see the module docstring).

    Args:
        model: a :class:`~revlens.model.LensModel`, a ``TransformerBridge`` or a Hugging Face model.
        kind: a registered intervention kind (``"clamp"``, ``"patch"``, ``"steer"`` or one added with
            :func:`~revlens.causal.kinds.register_intervention`) or an
            :class:`~revlens.causal.kinds.Intervention`.
        directions: a :class:`Directions`, or a tensor ``[d]`` (same at every layer),
            ``[layer, d]`` (one per layer) or ``[layer, k, d]`` (a subspace per layer).
        layers: revlens layer indices (default: the layers of a ``Directions``).
        reference_mean: ``clamp`` only: ``μ`` per layer, ``[layer, d]`` / ``[d]`` / mapping.
        source_acts: ``patch`` only: the source activations per layer ``[layer, batch, pos, d]``
            or a mapping layer -> ``[batch, pos, d]`` (must match the forward's shape).
        alpha: ``steer`` only: the step along ``v`` (finite).
        positions: bool mask ``[batch, pos]``: change only these positions (default: all). During
            generation / teacher forcing it covers the prompt columns (see the module docstring).
        site: site kind (``"resid_post"`` default; see :func:`revlens.sites.resolve_sites`).
        generated: during generation / teacher forcing, also intervene at the new tokens' positions
            (default; ``clamp`` / ``steer`` only: ``patch`` has no source there).

    Raises:
        ConfigError: unknown kind, missing argument, non-finite alpha.
        SiteError: a layer the model does not have.
        ShapeMismatchError: directions / references of the wrong shape.
    """
    obj = intervention(kind)
    acc = access(model)
    if layers is None:
        if not isinstance(directions, Directions):
            raise ConfigError("layers=None needs a Directions object; give layers explicitly")
        layers = list(directions.layers)
    sites = acc.sites(layers, site)
    chosen = [s.layer for s in sites]
    basis = _basis(directions, chosen, acc.d_model)
    refs = _references(
        obj, chosen, {"reference_mean": reference_mean, "source_acts": source_acts, "alpha": alpha}
    )
    wide = [
        layer
        for layer, q in basis.items()
        if obj.max_rank is not None and q.shape[0] > obj.max_rank
    ]
    if wide:
        raise ConfigError(
            f"{obj.name} needs one direction per layer, got a subspace at layer(s) {wide}"
        )
    # position-wise edits (revlens.sites.cached): the KV-cached generation path may run them
    edits = [
        (
            s,
            positionwise(
                _make_edit(obj, basis[s.layer], s.layer, refs[s.layer], positions, generated)
            ),
        )
        for s in sites
    ]
    with acc.hooked(edits):
        yield


def clamp(
    model: ModuleLike,
    directions: DirectionsLike,
    layers: LayerSpec | None = None,
    reference_mean: PerLayer | None = None,
    *,
    positions: Bool[Tensor, "batch pos"] | None = None,
    site: SiteKind = "resid_post",
    generated: bool = True,
) -> Any:
    """Context manager: ``h ← h − ((h − μ)·v) v`` at ``layers`` (see :func:`intervene`)."""
    return intervene(
        model,
        "clamp",
        directions,
        layers,
        reference_mean=reference_mean,
        positions=positions,
        site=site,
        generated=generated,
    )


def patch(
    model: ModuleLike,
    directions: DirectionsLike,
    layers: LayerSpec | None = None,
    source_acts: PerLayer | None = None,
    *,
    positions: Bool[Tensor, "batch pos"] | None = None,
    site: SiteKind = "resid_post",
) -> Any:
    """Context manager: ``h ← h − ((h − a)·v) v`` with ``a`` the source activation (see :func:`intervene`)."""
    return intervene(
        model, "patch", directions, layers, source_acts=source_acts, positions=positions, site=site
    )


def steer(
    model: ModuleLike,
    directions: DirectionsLike,
    layers: LayerSpec | None = None,
    alpha: float | None = None,
    *,
    positions: Bool[Tensor, "batch pos"] | None = None,
    site: SiteKind = "resid_post",
    generated: bool = True,
) -> Any:
    """Context manager: ``h ← h + α v`` at ``layers`` (see :func:`intervene`)."""
    return intervene(
        model,
        "steer",
        directions,
        layers,
        alpha=alpha,
        positions=positions,
        site=site,
        generated=generated,
    )
