"""Shared passes of the estimators: input checks, paired activations, bootstrap stability."""

import math
import warnings
from collections.abc import Iterable, Iterator

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from revlens.collect.stats import HistoryStats
from revlens.directions.subspace import orient_rows, principal_cosines, span_rows
from revlens.errors import ConfigError, ShapeMismatchError

__all__ = [
    "base_stack",
    "base_stack_layer",
    "bootstrap_cos",
    "check_separated",
    "check_stats",
    "paired_activations",
    "paired_layer",
    "require_references",
    "resamples",
    "subspace_basis",
    "subspace_stability",
    "unit",
]


def check_stats(stats: object, method: str) -> None:
    if not isinstance(stats, HistoryStats):
        raise ConfigError(
            f"{method}.fit expects HistoryStats (from revlens.collect); got {type(stats).__name__}"
        )
    if not stats.base_names:
        raise ConfigError("the statistics hold no base checkpoint")


def check_separated(stats: HistoryStats, method: str) -> Float[Tensor, "layer d"]:
    """μ_base − μ_aligned per layer; ConfigError naming the layers where it vanishes."""
    diff = stats.base_mean() - stats.mean(stats.aligned_name)
    scale = stats.mean(stats.aligned_name).norm(dim=1).clamp_min(1.0)
    zero = [
        stats.layers[i]
        for i in range(len(stats.layers))
        if float(diff[i].norm()) <= 1e-9 * float(scale[i])
    ]
    if zero:
        raise ConfigError(
            f"direction ({method}) is undefined at layer(s) {zero}: base and aligned activations are "
            "identical there (zero-norm mean difference); drop those layers (layers=...)"
        )
    return diff


def paired_activations(stats: HistoryStats, method: str) -> tuple[Tensor, Tensor]:
    """(base, aligned) per-prompt activations ``[prompt, layer, d]`` float64 (mean of bases)."""
    aligned = stats[stats.aligned_name].activations
    try:
        base = stats.base_activations()
    except ConfigError:
        base = None
    if base is None or aligned is None:
        raise ConfigError(
            f"{method} needs per-prompt activations of base and aligned; collect with keep='reference'"
        )
    if base.shape != aligned.shape:
        raise ShapeMismatchError(
            f"base activations {tuple(base.shape)} and aligned {tuple(aligned.shape)} are not paired"
        )
    return base.to(torch.float64), aligned.to(torch.float64)


def require_references(stats: HistoryStats, method: str) -> None:
    """ConfigError unless base and aligned kept per-prompt references at every collected layer
    (naming where they were kept)."""
    if stats.has_references():
        return
    kept = sorted(
        set.intersection(
            *(set(stats[n].ref_layers or []) for n in [*stats.base_names, stats.aligned_name])
        )
    )
    where = (
        f"they were kept at layers {kept}: fit on stats.select({kept}), or collect with keep_layers "
        "including every layer"
        if kept
        else "collect with keep='reference'"
    )
    raise ConfigError(
        f"{method} needs per-prompt activations of base and aligned at layers {stats.layers}; {where}"
    )


def paired_layer(
    stats: HistoryStats, layer: int
) -> tuple[Float[Tensor, "prompt 1 d"], Float[Tensor, "prompt 1 d"]]:
    """(base, aligned) per-prompt references at one layer, float64, shaped ``[prompt, 1, d]`` (mean
    of bases), read one layer at a time (from disk where collect spilled them)."""
    base, aligned = stats.paired_references(layer)
    if base.shape != aligned.shape:
        raise ShapeMismatchError(
            f"base activations {tuple(base.shape)} and aligned {tuple(aligned.shape)} at layer {layer} are not paired"
        )
    return base[:, None], aligned[:, None]


def base_stack_layer(stats: HistoryStats, layer: int) -> Tensor | None:
    """Per-prompt references of every base at one layer ``[base, prompt, 1, d]`` float64, or ``None``."""
    acts = [stats[n].reference_layer(layer) for n in stats.base_names]
    if any(a is None for a in acts):
        return None
    return torch.stack(acts).to(torch.float64)[:, :, None]  # type: ignore[arg-type]


def base_stack(stats: HistoryStats) -> Tensor | None:
    """Per-prompt activations of every base ``[base, prompt, layer, d]`` float64, or ``None``."""
    acts = [stats[n].activations for n in stats.base_names]
    if any(a is None for a in acts):
        return None
    return torch.stack(acts).to(torch.float64)  # type: ignore[arg-type]


def unit(x: Tensor) -> Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-300)


def bootstrap_cos(raw: Tensor, full: Tensor) -> Tensor:
    """|cos| between replicate rows ``raw`` [layer, d] and unit ``full`` (NaN for a zero row)."""
    norms = raw.norm(dim=1)
    cos = (raw * full).sum(1).abs() / norms.clamp_min(1e-300)
    return torch.where(norms > 0, cos, torch.full_like(cos, math.nan))


def subspace_basis(
    candidates: Float[Tensor, "layer m d"],
    k: int,
    diff: Float[Tensor, "layer d"],
    layers: list[int],
    method: str,
    limit: str,
) -> Float[Tensor, "layer k d"]:
    """Per layer: the first ``k`` orthonormal rows spanned by ``candidates`` in order, row 1 as the
    estimator oriented it and rows 2..k toward the base mean (:func:`orient_rows`).

    Raises:
        ConfigError: the candidates span fewer than ``k`` directions at a layer (``limit`` says
            what bounds the rank).
    """
    rows = []
    for i, layer in enumerate(layers):
        b = span_rows(candidates[i], k)
        if b.shape[0] < k:
            raise ConfigError(
                f"{method} with n_components={k} spans only {b.shape[0]} direction(s) at layer {layer}: {limit}"
            )
        rows.append(orient_rows(b, diff[i], keep_first=True))
    return torch.stack(rows)


def subspace_stability(
    replicates: Iterable[Tensor | None], full: Float[Tensor, "layer k d"]
) -> Tensor:
    """``[layer, k]``: for each ``j ≤ k``, the mean over bootstrap replicates of the mean principal
    cosine between a replicate's first ``j`` rows and the full fit's first ``j`` (column ``k − 1``
    is the subspace's stability; column 0 is ``|cos|`` of the first axes). A replicate ``None``
    (a refit that failed, e.g. lost rank) counts as NaN; no replicate at all gives NaN.
    """
    n_layer, k = full.shape[0], full.shape[1]
    sims = []
    for rep in replicates:
        sim = torch.full((n_layer, k), math.nan, dtype=torch.float64)
        if rep is not None:
            for i in range(n_layer):
                for j in range(1, k + 1):
                    sim[i, j - 1] = principal_cosines(rep[i, :j], full[i, :j]).mean()
        sims.append(sim)
    if not sims:
        return torch.full((n_layer, k), math.nan, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a layer whose every refit failed: NaN
        return torch.from_numpy(np.nanmean(torch.stack(sims).numpy(), axis=0))


def resamples(n_prompts: int, n_bootstrap: int, seed: int) -> Iterator[Tensor]:
    """``n_bootstrap`` prompt-bootstrap index draws (none when ``n_prompts < 2``)."""
    if n_prompts < 2:
        return
    gen = torch.Generator().manual_seed(int(seed))
    for _ in range(n_bootstrap):
        yield torch.randint(n_prompts, (n_prompts,), generator=gen)
