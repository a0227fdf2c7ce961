"""The span path of :meth:`DirectionEstimator.fit` (see :mod:`revlens.directions._lowrank`).

Per layer: read the paired references once, take an orthonormal basis ``Q`` of the span the
estimator works in, fit the full-sample basis in its coordinates and map it back. The bootstrap
refits of a group of layers (as many as fit in :data:`GROUP_BYTES` of coordinates) then run as one
batched ``[layer · refit, rows, m]`` computation — the same prompt draws as the dense path
(:func:`~revlens.directions._fitting.resamples`), on the activations' device (or the estimator's
``device``).
"""

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import Tensor

from revlens.collect.stats import HistoryStats
from revlens.directions._fitting import resamples, subspace_basis
from revlens.directions._lowrank import span_basis
from revlens.errors import ConfigError

__all__ = ["GROUP_BYTES", "fit_span"]

GROUP_BYTES = 256 * 2**20  # coordinates of a group of layers / one batched chunk of refits


@contextmanager
def small_ops(device: torch.device) -> Iterator[None]:
    """One intra-op thread for batches of small matrices on the CPU (torch's OpenMP loops over
    ``[batch, m, m]`` spend most of their time waiting for busy cores on a shared machine)."""
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _target_device(est: Any, x: Tensor) -> torch.device:
    return torch.device(est.device) if getattr(est, "device", None) is not None else x.device


def fit_span(
    est: Any, stats: HistoryStats, units: Tensor | None = None
) -> tuple[Tensor | None, Tensor]:
    """``(rows, stability [layer, k])`` of ``est`` on ``stats`` by the span path.

    ``rows``: ``[layer, d]`` (k = 1, un-normalised as the dense path returns them) or
    ``[layer, k, d]``. With ``units`` (``[layer, d]`` unit rows fitted elsewhere, e.g. from second
    moments) only the stability of refits against them is computed and ``rows`` is ``None``.
    """
    k = est.n_components
    rows: list[Tensor] = []
    stability: list[Tensor] = []
    group: list[tuple[Tensor, Tensor, Tensor, int]] = []
    size = 0
    for i, layer in enumerate(stats.layers):
        base, aligned, copies = est._paired(stats, layer)
        dev = _target_device(est, base)
        b, a = base[:, 0].to(dev), aligned[:, 0].to(dev)
        q = span_basis(est._span_source(b, a))
        bc, ac = b @ q, a @ q
        d = b.shape[-1]
        if units is None:
            with small_ops(dev):
                full = _full_fit(est, bc, ac, d, layer)
            rows.append((full @ q.T).cpu())
            target = full if k > 1 else full[0] / full[0].norm().clamp_min(1e-300)
        else:
            target = q.T @ units[i].to(dev, torch.float64)
        group.append((bc, ac, target, copies))
        size += (bc.numel() + ac.numel()) * bc.element_size()
        if size >= GROUP_BYTES or i == len(stats.layers) - 1:
            with small_ops(dev):
                stability.append(
                    _group_stability(est, group, d, stats.layers[i + 1 - len(group) : i + 1])
                )
            group, size = [], 0
    by_rank = torch.cat(stability) if stability else torch.zeros(0, k, dtype=torch.float64)
    if units is not None:
        return None, by_rank
    return torch.cat(rows), by_rank


def _full_fit(est: Any, bc: Tensor, ac: Tensor, d: int, layer: int) -> Tensor:
    """The full-sample fit in coordinates: ``[1, m]`` (k = 1) or an oriented basis ``[1, k, m]``."""
    if est.n_components == 1:
        return est._span_raw(bc[None], ac[None], d)
    cands = est._span_candidates(bc[None], ac[None], d)
    diff = bc.mean(0) - ac.mean(0)
    return subspace_basis(cands, est.n_components, diff[None], [layer], est.method, est.rank_limit)


def _refit_rows(n: int, copies: int, draws: Tensor) -> Tensor:
    """``[refit, rows]`` row indices of each prompt draw (every base block resampled alike)."""
    return (torch.arange(copies)[None, :, None] * n + draws[:, None, :]).reshape(draws.shape[0], -1)


def _group_stability(
    est: Any, group: list[tuple[Tensor, Tensor, Tensor, int]], d: int, layers: list[int]
) -> Tensor:
    """``[layer, k]`` stability of one group of layers (NaN where no refit is possible)."""
    k = est.n_components
    copies = group[0][3]
    n = group[0][0].shape[0] // copies
    draws = list(resamples(n, est.n_bootstrap, est.seed))
    if not draws:
        return torch.full((len(group), k), math.nan, dtype=torch.float64)
    idx = _refit_rows(n, copies, torch.stack(draws)).to(group[0][0].device)
    bc = torch.stack([g[0] for g in group])[:, idx]  # [layer, refit, rows, m]
    ac = torch.stack([g[1] for g in group])[:, idx]
    n_layer, n_refit = bc.shape[:2]
    flat_b, flat_a = bc.flatten(0, 1), ac.flatten(0, 1)
    m = bc.shape[-1]
    per_item = 8 * (3 * bc.shape[-2] * m + 6 * m * m)
    chunk = max(1, GROUP_BYTES // per_item)
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for start in range(0, flat_b.shape[0], chunk):
            sl = slice(start, start + chunk)
            if k == 1:
                out.append(est._span_raw(flat_b[sl], flat_a[sl], d))
            else:
                out.append(est._span_candidates(flat_b[sl], flat_a[sl], d))
    result = torch.cat(out).reshape(n_layer, n_refit, *out[0].shape[1:])
    if k == 1:
        targets = torch.stack([g[2] for g in group])  # [layer, m] unit (or exact dots)
        norms = result.norm(dim=-1)
        cos = (result * targets[:, None]).sum(-1).abs() / norms.clamp_min(1e-300)
        cos = torch.where(norms > 0, cos, torch.full_like(cos, math.nan))
        return torch.nanmean(cos.cpu(), dim=1)[:, None]
    diffs = (bc.mean(-2) - ac.mean(-2)).cpu()
    return _subspace_sims(est, result.cpu(), diffs, [g[2].cpu() for g in group], layers)


def _subspace_sims(
    est: Any, cands: Tensor, diffs: Tensor, fulls: list[Tensor], layers: list[int]
) -> Tensor:
    """``[layer, k]`` mean over refits of the principal-cosine similarity of the first ``j`` rows
    (:func:`~revlens.directions._fitting.subspace_stability`, in span coordinates)."""
    k = est.n_components
    sims = np.full((cands.shape[0], cands.shape[1], k), np.nan)
    for i, layer in enumerate(layers):
        full = fulls[i][0].numpy()
        reps, ok = [], []
        for r in range(cands.shape[1]):
            try:
                reps.append(
                    subspace_basis(
                        cands[i, r][None], k, diffs[i, r][None], [layer], est.method, est.rank_limit
                    )[0].numpy()
                )
                ok.append(r)
            except ConfigError:
                continue
        if not ok:
            continue
        cross = np.stack(reps) @ full.T  # [refit, k, k]
        for j in range(
            1, k + 1
        ):  # principal cosines of the first j rows (numpy's stacked LAPACK loop)
            sims[i, ok, j - 1] = np.clip(
                np.linalg.svd(cross[:, :j, :j], compute_uv=False), 0.0, 1.0
            ).mean(-1)
    return (
        torch.from_numpy(np.nanmean(sims, axis=1))
        if sims.shape[1]
        else torch.from_numpy(sims[:, 0])
    )
