"""The refusal direction of Arditi et al. (2024, arXiv 2406.11717) as a direction candidate.

On **one** checkpoint θ (a history's aligned checkpoint by default, any other checkpoint of it,
or the model you hold), at every collected layer ``l`` and every post-instruction position
(``("post_instruction", k)``: the last ``k`` template tokens after the user's text, DESIGN §6)::

    r_l = mean_{x ∈ harmful} h_l(θ, x) − mean_{x ∈ harmless} h_l(θ, x)

normalised. **Sign: toward refusal** (the harmful side) — unlike the estimators of
:mod:`revlens.directions.estimators`, whose directions point from aligned toward base. ``v_rev``
points toward compliance, so if reversion were "losing the refusal direction",
``cos(v_rev_l, r_l)`` would be clearly negative (:func:`revlens.drift.compare_directions`).

Activations are read through :func:`revlens.collect.collect_checkpoint` (the same hooks, position
weights and float64 sums as every other statistic; every position in the same forward pass).
The harmful and harmless prompts come from one labelled probe set (``probes.where("harmful")``).
:func:`refusal_directions` returns a :class:`RefusalDirections`: one
:class:`~revlens.directions.Directions` per position (method ``"refusal"``, usable wherever
``v_rev`` is: ``analyze(methods=[...])``, ``ablation_study(directions=...)``, the blockers, the
monitor), with the raw (un-normalised) mean differences that activation addition needs. Choosing
one (position, layer) the way Arditi et al. do — on a held-out split, by ablating and adding each
candidate — is :func:`revlens.causal.refusal.select_refusal_direction`.

A layer where the two means coincide (e.g. layer 0 of a RoPE model at a template position: the
embedding of the same token for every prompt) has no direction: it is left out with a
:class:`DegenerateLayerWarning` and named in ``meta["dropped_layers"]``.
"""

import os
import warnings
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, no_type_check

import torch
from jaxtyping import Float
from torch import Tensor

from revlens._config import as_int
from revlens._types import Device
from revlens.collect.collector import collect_checkpoint, resolve_probes
from revlens.collect.degenerate import DegenerateLayerWarning
from revlens.directions.base import Directions
from revlens.errors import ConfigError, HistoryError, ProbeError
from revlens.history import History, HistoryInput
from revlens.model import LensModel, ModelInput
from revlens.modes import SITE_KINDS, SiteKind, check_mode
from revlens.probes import PositionRule, Probes, ProbesInput
from revlens.probes.positions import parse_position, position_name
from revlens.sites import LayerSpec, access

__all__ = [
    "REFUSAL_SIGN",
    "RefusalDirections",
    "is_history",
    "refusal_directions",
    "resolve_source",
    "split_labels",
]

REFUSAL_SIGN = "harmful - harmless (toward refusal)"
"""``meta["sign"]`` of every refusal direction."""

# a layer whose mean difference is below this fraction of the means' norm has no direction
_RTOL = 1e-6


@dataclass(frozen=True)
class RefusalDirections:
    """Refusal directions of one checkpoint, one :class:`Directions` per position.

    Attributes:
        directions: position label (``"-k" .. "-1"``, or ``"last"`` / ``"mean"``) -> unit
            directions per layer (method ``"refusal"``, sign toward refusal).
        diffs: position label -> raw mean differences ``[layer, d]`` (float64) at the same
            layers (what activation addition adds).
        harmful_mean, harmless_mean: position label -> the two means ``[layer, d]`` (float64),
            at every collected layer.
        layers: the collected layers (a position's directions may lack degenerate ones).
        site: the site kind.
        checkpoint: name of the checkpoint the activations were read on.
        fingerprint: content fingerprint of its weights (``None`` when unknown, e.g. weights
            modified in memory).
        meta: provenance: ``n_harmful``, ``n_harmless``, ``position`` rule, chat template.
    """

    directions: Mapping[str, Directions]
    diffs: Mapping[str, Tensor]
    harmful_mean: Mapping[str, Tensor]
    harmless_mean: Mapping[str, Tensor]
    layers: tuple[int, ...]
    site: SiteKind
    checkpoint: str
    fingerprint: str | None
    meta: Mapping[str, Any] = field(default_factory=dict)

    @property
    def positions(self) -> list[str]:
        """The position labels, in order (``"-k" .. "-1"`` for post-instruction positions)."""
        return list(self.directions)

    def __getitem__(self, position: str | int) -> Directions:
        """The directions at one position label (``-1`` and ``"-1"`` alike)."""
        return self.directions[self._label(position)]

    def _label(self, position: str | int) -> str:
        label = str(position)
        if label not in self.directions:
            raise ConfigError(
                f"no refusal direction at position {position!r}; positions: {self.positions}"
            )
        return label

    def raw(self, position: str | int, layer: int) -> Float[Tensor, " d_model"]:
        """The un-normalised mean difference at (position, layer)."""
        label = self._label(position)
        dirs = self.directions[label]
        return self.diffs[label][dirs._pos(layer)]

    def __repr__(self) -> str:
        return (
            f"RefusalDirections(checkpoint={self.checkpoint!r}, positions={self.positions}, "
            f"layers={list(self.layers)}, n_harmful={self.meta.get('n_harmful')}, "
            f"n_harmless={self.meta.get('n_harmless')})"
        )


def is_history(x: object) -> bool:
    """Whether ``x`` names a history (a History, a mapping, a path) rather than a model."""
    return isinstance(x, (History, Mapping, str, os.PathLike))


def split_labels(probes: Probes, harmful: Hashable, harmless: Hashable) -> tuple[Probes, Probes]:
    """``(probes.where(harmful), probes.where(harmless))``, a typed error naming the missing label."""
    if not isinstance(probes, Probes):
        raise ProbeError(
            f"refusal directions need labelled Probes (harmful / harmless); got {type(probes).__name__}"
        )
    if probes.labels is None:
        raise ProbeError(
            "refusal directions need labelled probes: label each prompt "
            f"{harmful!r} or {harmless!r} (Probes(..., labels=[...]) or a JSONL 'label' field)"
        )
    have = sorted(set(map(str, probes.labels)))
    for label, what in ((harmful, "harmful"), (harmless, "harmless")):
        if label not in probes.labels:
            raise ProbeError(
                f"refusal directions need {what} prompts: no probe is labelled {label!r}; "
                f"labels: {have}"
            )
    return probes.where(harmful), probes.where(harmless)


def resolve_source(
    source: HistoryInput | ModelInput,
    *,
    checkpoint: str | None,
    model: ModelInput | None,
    device: Device | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[LensModel, Any, History | None]:
    """``(model, checkpoint or None, history or None)`` for a history (the checkpoint to load,
    default its aligned one) or a model you hold (its current weights; no ``checkpoint``).

    Raises:
        ConfigError: ``checkpoint`` without a history.
        HistoryError: an unknown checkpoint name (lists the names), before any model is booted.
    """
    if is_history(source):
        hist = History.load(source)
        name = checkpoint if checkpoint is not None else hist.aligned.name
        names = [ck.name for ck in hist]
        if name not in names:
            raise HistoryError(f"no checkpoint {name!r} in the history; names: {names}")
        lm = LensModel.for_history(hist, model, device=device, dtype=dtype)
        return lm, hist[name], hist
    if checkpoint is not None:
        raise ConfigError(
            f"checkpoint={checkpoint!r} needs a history to find it in; with a model you hold, its "
            "current weights are read (leave checkpoint unset)"
        )
    if model is not None:
        raise ConfigError("give the model once: as the first argument, or model= beside a history")
    return LensModel.boot(source), None, None


@no_type_check  # validates its own arguments (typed errors), also under the test type-checker
def refusal_directions(
    source: HistoryInput | ModelInput,
    probes: ProbesInput | None = None,
    *,
    checkpoint: str | None = None,
    position: PositionRule = ("post_instruction", None),
    layers: LayerSpec = "all",
    site: SiteKind = "resid_post",
    harmful: Hashable = "harmful",
    harmless: Hashable = "harmless",
    model: ModelInput | None = None,
    batch_size: int = 32,
    device: Device | None = None,
    dtype: torch.dtype | None = None,
) -> RefusalDirections:
    """Arditi et al.'s refusal directions ``normalise(μ_harmful − μ_harmless)`` on one checkpoint.

    Args:
        source: a history (a :class:`~revlens.History` or anything ``History.load`` accepts: a
            path is always read as a history) or a model object you hold (a
            :class:`~revlens.LensModel`, ``TransformerBridge`` or Hugging Face model: its current
            weights are read; boot a ``save_pretrained`` dir with ``LensModel.boot`` first).
        probes: labelled :class:`~revlens.Probes` (chat probes for post-instruction positions);
            ``None``: the history's default probe set.
        checkpoint: with a history, the checkpoint to read (default: its aligned checkpoint).
        position: ``("post_instruction", k)`` (default: every post-instruction template token), or
            ``"last"`` / ``"mean"``.
        layers, site: where to read (see :mod:`revlens.sites`; default every ``resid_post`` layer).
        harmful, harmless: the two labels.
        model: with a history, a booted model of its architecture to reuse.
        batch_size, device, dtype: as for :func:`revlens.collect`.

    Returns:
        :class:`RefusalDirections` (one :class:`Directions` per position).

    Raises:
        ProbeError: unlabelled probes, no harmful or no harmless prompt (before any forward).
        HistoryError: an unknown checkpoint (before the model is booted).
        SiteError: a layer out of range, a position rule chat probes are needed for.
        ConfigError: another bad setting.
    """
    check_mode("site", site, SITE_KINDS)
    batch_size = as_int("batch_size", batch_size, min=1)
    rule = parse_position(position)
    if is_history(source) and probes is None:
        probes = resolve_probes(History.load(source), None)
    if isinstance(probes, (str, Path)):
        probes = Probes.from_jsonl(probes)
    bad, good = split_labels(probes, harmful, harmless)
    bad, good = bad.with_position(rule), good.with_position(rule)
    lm, ck, hist = resolve_source(
        source, checkpoint=checkpoint, model=model, device=device, dtype=dtype
    )
    if hist is not None and bad.is_chat and bad.template is None:
        bad, good = resolve_probes(hist, bad), resolve_probes(hist, good)
    sites = access(lm).sites(layers, site)
    tok_bad = bad.tokenize(lm.tokenizer, n_ctx=lm.n_ctx)
    tok_good = good.tokenize(lm.tokenizer, n_ctx=lm.n_ctx)
    kw = {"n_bootstrap": 0, "batch_size": batch_size}
    st_bad = collect_checkpoint(lm, ck, tok_bad, sites, **kw)
    st_good = collect_checkpoint(lm, None, tok_good, sites, **kw)  # the same weights, now loaded
    if not tok_bad.multi:
        st_bad, st_good = {tok_bad.position: st_bad}, {tok_good.position: st_good}
    name = ck.name if ck is not None else (lm.loaded or "model")
    fingerprint = ck.model_fingerprint() if ck is not None else lm.fingerprint
    meta = {
        "checkpoint": name,
        "fingerprint": fingerprint,
        "position": position_name(rule),
        "sign": REFUSAL_SIGN,
        "n_harmful": len(bad),
        "n_harmless": len(good),
        "site": site,
        "chat_template": tok_bad.template,
    }
    return _assemble(st_bad, st_good, [s.layer for s in sites], site, name, fingerprint, meta)


def _assemble(
    st_bad: Mapping[str, Any],
    st_good: Mapping[str, Any],
    layers: list[int],
    site: SiteKind,
    name: str,
    fingerprint: str | None,
    meta: dict[str, Any],
) -> RefusalDirections:
    """Per position: the two means, their difference, the unit directions at non-degenerate layers."""
    directions, diffs, mu_bad, mu_good = {}, {}, {}, {}
    for raw_label in st_bad:
        label = raw_label.rsplit("@", 1)[-1]
        a, b = st_bad[raw_label].mean, st_good[raw_label].mean
        diff = a - b
        scale = torch.maximum(a.norm(dim=-1), b.norm(dim=-1)).clamp_min(1e-300)
        keep = [i for i in range(len(layers)) if float(diff[i].norm()) > _RTOL * float(scale[i])]
        dropped = [layers[i] for i in range(len(layers)) if i not in keep]
        if dropped:
            warnings.warn(
                f"refusal direction at position {label}: layer(s) {dropped} have the same mean on harmful "
                "and harmless prompts (no direction there); left out",
                DegenerateLayerWarning,
                stacklevel=3,
            )
        if not keep:
            raise ConfigError(
                f"refusal direction at position {label}: harmful and harmless prompts have the same "
                f"mean at every layer {layers}"
            )
        kept = [layers[i] for i in keep]
        norms = diff[keep].norm(dim=-1)
        directions[label] = Directions.from_tensor(
            diff[keep],
            kept,
            method="refusal",
            site=site,
            meta={
                **meta,
                "position": label,
                "rule": meta["position"],
                "dropped_layers": dropped,
                "norm": [float(x) for x in norms],
            },
        )
        diffs[label], mu_bad[label], mu_good[label] = diff[keep], a, b
    return RefusalDirections(
        directions, diffs, mu_bad, mu_good, tuple(layers), site, name, fingerprint, meta
    )
