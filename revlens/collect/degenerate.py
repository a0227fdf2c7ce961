"""Degenerate layers: a layer whose activations are the same for every probe prompt.

Common on real chat models: every prompt ends with the same assistant-header tokens, so with the
``"last"`` position rule the stream entering block 0 of a RoPE model (a token embedding, no
position) is one vector for all prompts. Its covariance is zero, so covariance-based directions,
whitening and covariance-matched nulls / controls are undefined there. Such a layer is reported
(a :class:`DegenerateLayerWarning` naming it) and left out of the analysis, which continues on
the other layers; the report's config records it.

Example:
    >>> stats, skipped = without_degenerate(stats, what="analyze")   # doctest: +SKIP
    >>> skipped                                                       # doctest: +SKIP
    {0: ['base', 'aligned']}
"""

import warnings
from collections.abc import Sequence

import torch

from revlens.collect.stats import CheckpointStats, HistoryStats
from revlens.errors import ConfigError

__all__ = ["DegenerateLayerWarning", "degenerate_layers", "select_layers", "without_degenerate"]

# relative total variance tr(Σ)/‖μ‖² below which a layer counts as constant (identical fp32
# activations give ~1e-16 after float64 accumulation; a relative spread of 3e-5 is 1e-9)
_RTOL = 1e-9


class DegenerateLayerWarning(UserWarning):
    """A layer is constant over the probe set and is left out (named in the message)."""


def _relative_variance(st: CheckpointStats) -> torch.Tensor | None:
    """``tr(Σ_l) / ‖μ_l‖²`` per layer, from second moments or kept activations (``None``: neither)."""
    if st.count < 2:
        return None
    mu = st.mean
    if st.second is not None:
        total = torch.diagonal(st.covariance, dim1=-2, dim2=-1).sum(-1)
    elif (
        st.refs is not None
    ):  # one layer at a time (a layer without references cannot be judged: nan)
        total = torch.tensor(
            [
                float(r.double().var(0).sum())
                if (r := st.reference_layer(layer)) is not None
                else float("nan")
                for layer in st.layers
            ],
            dtype=torch.float64,
        )
    else:
        return None
    return total.clamp_min(0.0) / (mu * mu).sum(-1).clamp_min(1e-300)


def degenerate_layers(
    stats: HistoryStats, layers: Sequence[int] | None = None
) -> dict[int, list[str]]:
    """Layer -> reference checkpoints (bases, aligned, run starts) whose activations at that layer
    do not vary over the probe set. Checkpoints without second moments or kept activations
    cannot be judged and are skipped."""
    names = [*stats.base_names, stats.aligned_name, *stats.run_starts.values()]
    wanted = list(stats.layers) if layers is None else [int(x) for x in layers]
    out: dict[int, list[str]] = {}
    for name in dict.fromkeys(names):
        if name not in stats.checkpoints:
            continue
        rel = _relative_variance(stats[name])
        if rel is None:
            continue
        for layer in wanted:
            if layer in stats.layers and float(rel[stats.layer_pos(layer)]) <= _RTOL:
                out.setdefault(layer, []).append(name)
    return dict(sorted(out.items()))


def select_layers(stats: HistoryStats, layers: Sequence[int]) -> HistoryStats:
    """The same statistics at a subset of the collected layers."""
    layers = [int(x) for x in layers]
    for layer in layers:
        stats.layer_pos(layer)  # a layer not collected is named
    cks = {name: st.select(layers) for name, st in stats.checkpoints.items()}
    return HistoryStats(
        layers=layers,
        site=stats.site,
        position=stats.position,
        d_model=stats.d_model,
        checkpoints=cks,
        roles=stats.roles,
        run_starts=stats.run_starts,
        controls=stats.controls,
        meta=stats.meta,
        kinds=stats.kinds,
    )


def without_degenerate(
    stats: HistoryStats, *, what: str, layers: Sequence[int] | None = None, stacklevel: int = 3
) -> tuple[HistoryStats, dict[int, list[str]]]:
    """``stats`` without its degenerate layers (a :class:`DegenerateLayerWarning` names them), and
    the layers left out.

    Raises:
        ConfigError: every layer is degenerate.
    """
    bad = degenerate_layers(stats, layers)
    if not bad:
        return stats, {}
    keep = [layer for layer in stats.layers if layer not in bad]
    if not keep:
        raise ConfigError(
            f"{what}: every layer {stats.layers} is constant over the probe set at site {stats.site} "
            f"(position {stats.position!r}); use position='mean' or prompts whose last tokens differ (or check the "
            "tokenizer: one that drops the prompts' words makes every prompt the same)"
        )
    detail = "; ".join(f"layer {layer} ({', '.join(names)})" for layer, names in bad.items())
    warnings.warn(
        f"{what}: degenerate layer(s) {list(bad)} left out: the activations at {stats.site} do not vary over "
        f"the probe set ({detail}) — e.g. the last token is the same chat-template token in every prompt and "
        f"the stream there carries no position (RoPE); analysed layers: {keep}. Use position='mean' to read them.",
        DegenerateLayerWarning,
        stacklevel=stacklevel,
    )
    return select_layers(stats, keep), bad
