"""Arditi-style selection of one refusal direction, and directional ablation at every layer.

Arditi et al. (2024, arXiv 2406.11717, §2.3 and their pipeline's ``select_direction``) estimate a
candidate ``r`` at every (post-instruction position, layer) (:func:`revlens.directions.refusal_directions`)
and choose one on a held-out **selection split** of harmful and harmless prompts. For each
candidate, with the refusal score ``s`` (:class:`revlens.metrics.RefusalScore`: log-odds of the
tokens a refusal starts with, at the first generated position):

- ``bypass``: mean ``s`` on the harmful prompts under **directional ablation** of the unit ``r̂``
  (:func:`directional_ablation`: ``h ← h − (h·r̂) r̂`` at the stream entering every block and on
  every attention and MLP output, at every position: the direction is never written) — should
  drop below the clean model's;
- ``induce``: mean ``s`` on the harmless prompts under **activation addition** of the raw mean
  difference ``r`` at the candidate's own layer (``h ← h + r`` at every position, the
  :func:`~revlens.causal.steer` context manager with ``α = ‖r‖``) — should rise;
- ``kl``: mean ``KL(p_clean ‖ p_ablated)`` of the next-token distribution at the last prompt token
  on the harmless prompts under the same ablation — ablating ``r̂`` should leave them alone.

**Filter** (Arditi et al.'s defaults): drop candidates at layers ``l ≥ int(n_layers · (1 −
prune_fraction))`` (the last 20 %: directions there act on the logits directly; with
``prune_fraction = 0`` layer ``n_layers``, the stream after the last block, is still left out), with
``kl ≥ kl_threshold`` (0.1), or with ``induce ≤ induce_threshold`` (0: adding ``r`` must make the
harmless prompts lean toward refusal). **Score** = ``baseline_harmful − bypass`` (how far ablation
lowers the refusal score); the chosen candidate is the eligible row of largest score (Arditi's
"lowest bypass score"). When no candidate passes the filter, a :class:`RefusalSelectionWarning`
says so and the largest score over all candidates is taken (``table.attrs["fallback"]``).

Layer convention: revlens' ``resid_post`` layer ``l`` is the stream entering block ``l`` (Arditi's
``resid_pre`` of layer ``l``), so a candidate's layer index means the same in both.
"""

import warnings
from collections.abc import Hashable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, no_type_check

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from revlens._config import as_float, as_int
from revlens._types import ModuleLike
from revlens.causal.interventions import clamp, steer
from revlens.directions import Directions
from revlens.directions.refusal import RefusalDirections, is_history, resolve_source, split_labels
from revlens.errors import ConfigError, MetricError
from revlens.history import HistoryInput
from revlens.metrics import MetricLike, RefusalScore
from revlens.metrics.tokens import TokenSpec
from revlens.model import ModelInput
from revlens.modes import SITE_KINDS, check_modes
from revlens.probes import ProbesInput
from revlens.sites import access

__all__ = [
    "ABLATION_SITES",
    "RefusalSelection",
    "RefusalSelectionWarning",
    "directional_ablation",
    "select_refusal_direction",
]

ABLATION_SITES = ("resid_pre", "attn_out", "mlp_out")
"""Where :func:`directional_ablation` projects ``r̂`` out (every block): Arditi et al.'s choice."""


class RefusalSelectionWarning(UserWarning):
    """No refusal-direction candidate passed the selection filter (the best unfiltered one is used)."""


@contextmanager
def directional_ablation(
    model: ModuleLike,
    direction: Float[Tensor, " d_model"],
    *,
    sites: Sequence[str] = ABLATION_SITES,
) -> Iterator[None]:
    """While the block runs, ``h ← h − (h·r̂) r̂`` at every layer of every site kind in ``sites``
    and at every position (``r̂ = direction / ‖direction‖``): the ``clamp`` context manager with a
    zero reference, at all layers at once. Hooks are removed on exit, also when the block raises."""
    check_modes("sites", list(sites), SITE_KINDS)
    acc = access(model)
    with ExitStack() as stack:
        for kind in sites:
            layers = [s.layer for s in acc.sites("all", kind)]
            zero = {layer: torch.zeros(acc.d_model) for layer in layers}
            stack.enter_context(clamp(model, direction, layers, zero, site=kind))
        yield


@dataclass(frozen=True)
class RefusalSelection:
    """The chosen refusal direction and every candidate's scores.

    Attributes:
        table: one row per (position, layer) candidate: ``position``, ``layer``, ``bypass``,
            ``induce``, ``kl``, ``baseline_harmful``, ``baseline_harmless``, ``score``
            (``baseline_harmful − bypass``), ``pruned``, ``kl_ok``, ``induce_ok``, ``eligible``,
            ``selected``.
        position, layer: the chosen candidate.
        directions: the refusal directions **per layer** at the chosen position (method
            ``"refusal"``; ``meta["selected_layer"]``): pass them wherever ``v_rev`` goes.
        vector: the chosen unit direction ``r̂`` ``[d]`` (Arditi's single direction, ablated at
            every layer by :func:`directional_ablation`).
        refusal: the candidates (:class:`RefusalDirections`).
        meta: the filter settings and the selection split's sizes.
    """

    table: pd.DataFrame
    position: str
    layer: int
    directions: Directions
    vector: Tensor
    refusal: RefusalDirections
    meta: dict[str, Any] = field(default_factory=dict)

    def figure(self, value: str = "score", *, title: str | None = None) -> Any:
        """Plotly (position × layer) heatmap of one table column (default ``score``), the filtered-out
        candidates crossed, the chosen one starred."""
        from revlens.plot.compare import selection_heatmap

        return selection_heatmap(self.table, value=value, title=title)

    def __repr__(self) -> str:
        row = self.table[self.table["selected"]].iloc[0]
        return (
            f"RefusalSelection(position={self.position}, layer={self.layer}, score={row['score']:.3f}, "
            f"bypass={row['bypass']:.3f}, induce={row['induce']:.3f}, kl={row['kl']:.4f}, "
            f"candidates={len(self.table)}, eligible={int(self.table['eligible'].sum())})"
        )


def _metric(metric: Any, tokenizer: Any, vocab_size: int) -> Any:
    if metric is None:
        metric = RefusalScore()
    elif isinstance(metric, (list, tuple)):
        metric = RefusalScore(list(metric))
    if hasattr(metric, "bind"):
        metric = metric.bind(tokenizer, vocab_size)
    if not callable(metric):
        raise MetricError(
            f"metric must be a logits metric (logits, batch) -> [batch]; got {type(metric).__name__}"
        )
    return metric


def _candidates(refusal: RefusalDirections, positions: Any, layers: Any) -> list[tuple[str, int]]:
    labels = refusal.positions if positions is None else [refusal._label(p) for p in positions]
    out = []
    for label in labels:
        have = list(refusal[label].layers)
        wanted = have if layers is None else [int(x) for x in layers]
        missing = [x for x in wanted if x not in have]
        if missing:
            raise ConfigError(
                f"no refusal direction at position {label}, layer(s) {missing}; layers: {have}"
            )
        out += [(label, layer) for layer in wanted]
    return out


class _Runner:
    """Forward passes of the selection split (clean, ablated, added) and their scores."""

    def __init__(self, lm: Any, bad: Any, good: Any, metric: Any, batch_size: int) -> None:
        self.lm, self.metric, self.batch_size = lm, metric, batch_size
        self.acc = access(lm)
        self.bad = bad.tokenize(lm.tokenizer, n_ctx=lm.n_ctx)
        self.good = good.tokenize(lm.tokenizer, n_ctx=lm.n_ctx)

    def run(self, tokenized: Any) -> tuple[Tensor, Tensor]:
        """(scores [n], last-token log-probs [n, vocab]) of one prompt set."""
        scores, logps = [], []
        with torch.no_grad():
            for batch in tokenized.batches(self.batch_size):
                logits = self.acc.forward(batch.tokens)
                scores.append(torch.as_tensor(self.metric(logits, batch)).double().cpu())
                rows = logits[torch.arange(len(batch)), batch.last_index.to(logits.device)]
                logps.append(torch.log_softmax(rows.double(), -1).cpu())
        return torch.cat(scores), torch.cat(logps)


def _kl(p_log: Tensor, q_log: Tensor) -> float:
    return float((p_log.exp() * (p_log - q_log)).sum(-1).mean())


@no_type_check  # validates its own arguments (typed errors), also under the test type-checker
def select_refusal_direction(
    source: HistoryInput | ModelInput,
    refusal: RefusalDirections,
    probes: ProbesInput,
    *,
    checkpoint: str | None = None,
    model: ModelInput | None = None,
    metric: MetricLike | TokenSpec | None = None,
    positions: Sequence[str | int] | None = None,
    layers: Sequence[int] | None = None,
    prune_fraction: float = 0.2,
    kl_threshold: float = 0.1,
    induce_threshold: float = 0.0,
    ablation_sites: Sequence[str] = ABLATION_SITES,
    harmful: Hashable = "harmful",
    harmless: Hashable = "harmless",
    batch_size: int = 32,
) -> RefusalSelection:
    """Choose one refusal direction on a held-out split, as Arditi et al. do (module docstring).

    Args:
        source: the history (or model) the directions were estimated on.
        refusal: the candidates, from :func:`revlens.directions.refusal_directions`.
        probes: the **selection split**: labelled probes, other prompts than the estimation's.
        checkpoint: with a history, the checkpoint (default: the one ``refusal`` was read on).
        model: with a history, a booted model of its architecture to reuse.
        metric: the refusal score (default :class:`~revlens.metrics.RefusalScore` with the
            tokenizer family's refusal tokens); a list of tokens, or any logits metric.
        positions, layers: restrict the candidates (default: all).
        prune_fraction, kl_threshold, induce_threshold: the filter (Arditi's 0.2, 0.1, 0.0).
        ablation_sites: where the direction is projected out (default resid_pre, attn_out, mlp_out).
        harmful, harmless: the two labels.
        batch_size: prompts per forward.

    Raises:
        ProbeError: no harmful or harmless selection prompt (before any forward pass).
        MetricError: refusal tokens that do not fit the tokenizer (before any forward pass).
        ConfigError: a candidate that does not exist, a bad threshold, or a checkpoint other
            than the one the directions were estimated on (before any forward pass).
    """
    prune_fraction = as_float("prune_fraction", prune_fraction)
    if not 0.0 <= prune_fraction < 1.0:
        raise ConfigError(f"prune_fraction must be in [0, 1), got {prune_fraction}")
    kl_threshold, induce_threshold = (
        as_float("kl_threshold", kl_threshold),
        as_float("induce_threshold", induce_threshold),
    )
    check_modes("ablation_sites", list(ablation_sites), SITE_KINDS)
    batch_size = as_int("batch_size", batch_size, min=1)
    if not isinstance(refusal, RefusalDirections):
        raise ConfigError(
            f"refusal must be RefusalDirections (from refusal_directions); got {type(refusal).__name__}"
        )
    bad, good = split_labels(probes, harmful, harmless)
    cands = _candidates(refusal, positions, layers)
    wanted = checkpoint if checkpoint is not None or not is_history(source) else refusal.checkpoint
    lm, ck, _ = resolve_source(source, checkpoint=wanted, model=model)
    fp = ck.model_fingerprint() if ck is not None else lm.fingerprint
    if fp is not None and refusal.fingerprint is not None and fp != refusal.fingerprint:
        raise ConfigError(
            f"the refusal directions were read on checkpoint {refusal.checkpoint!r} "
            f"({refusal.fingerprint[:12]}); the selection would run on other weights ({fp[:12]})"
        )
    metric = _metric(metric, lm.tokenizer, lm.vocab_size)
    if ck is not None:
        lm.load(ck)
    runner = _Runner(lm, bad, good, metric, batch_size)
    n_layers = access(lm).n_layers
    cut = int(n_layers * (1.0 - prune_fraction))
    rows = _score(runner, refusal, cands, ablation_sites)
    table = _judge(pd.DataFrame(rows), cut, kl_threshold, induce_threshold)
    best = table[table["selected"]].iloc[0]
    label, layer = str(best["position"]), int(best["layer"])
    meta = {
        "prune_fraction": prune_fraction,
        "kl_threshold": kl_threshold,
        "induce_threshold": induce_threshold,
        "first_pruned_layer": cut,
        "n_harmful": len(bad),
        "n_harmless": len(good),
        "ablation_sites": list(ablation_sites),
        "fallback": bool(table.attrs["fallback"]),
    }
    chosen = refusal[label]
    dirs = Directions(
        chosen.basis,
        chosen.layers,
        chosen.method,
        chosen.site,
        {**chosen.meta, "selected_layer": layer, "selection": meta},
    )
    return RefusalSelection(table, label, layer, dirs, chosen[layer].clone(), refusal, meta)


def _score(
    runner: _Runner,
    refusal: RefusalDirections,
    cands: list[tuple[str, int]],
    ablation_sites: Sequence[str],
) -> list[dict[str, Any]]:
    """One row per candidate: the clean baselines, bypass, induce and KL (module docstring)."""
    base_bad, _ = runner.run(runner.bad)
    base_good, clean_good = runner.run(runner.good)
    rows = []
    for label, layer in cands:
        unit = refusal[label][layer]
        raw = refusal.raw(label, layer)
        with directional_ablation(runner.lm, unit, sites=ablation_sites):
            bypass, _ = runner.run(runner.bad)
            _, ablated_good = runner.run(runner.good)
        with steer(runner.lm, unit, [layer], alpha=float(raw.norm()), site=refusal.site):
            induce, _ = runner.run(runner.good)
        rows.append(
            {
                "position": int(label) if label.lstrip("-").isdigit() else label,
                "layer": layer,
                "bypass": float(bypass.mean()),
                "induce": float(induce.mean()),
                "kl": _kl(clean_good, ablated_good),
                "baseline_harmful": float(base_bad.mean()),
                "baseline_harmless": float(base_good.mean()),
            }
        )
    return rows


def _judge(
    table: pd.DataFrame, cut: int, kl_threshold: float, induce_threshold: float
) -> pd.DataFrame:
    """The filter columns, the score and the chosen row (module docstring)."""
    table["score"] = table["baseline_harmful"] - table["bypass"]
    table["pruned"] = table["layer"] >= cut
    table["kl_ok"] = table["kl"] < kl_threshold
    table["induce_ok"] = table["induce"] > induce_threshold
    table["eligible"] = ~table["pruned"] & table["kl_ok"] & table["induce_ok"]
    pool = table[table["eligible"]]
    table.attrs["fallback"] = pool.empty
    if pool.empty:
        warnings.warn(
            "no refusal-direction candidate passed the filter (layer < "
            f"{cut}, kl < {kl_threshold}, induce > {induce_threshold}); using the best score over all "
            "candidates",
            RefusalSelectionWarning,
            stacklevel=3,
        )
        pool = table
    table["selected"] = False
    table.loc[pool["score"].idxmax(), "selected"] = True
    return table
