"""Per (layer, method) table of direction candidates: stability, permutation null, agreement."""

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd
import torch

from revlens.collect.stats import HistoryStats
from revlens.directions.base import Directions
from revlens.nulls import permutation_pvalue

__all__ = ["directions_table"]


def directions_table(
    stats: HistoryStats,
    vectors: Mapping[str, Directions],
    *,
    stability: Mapping[str, np.ndarray] | None = None,
    n_permutations: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per (layer, method).

    Columns: ``layer``, ``method``, ``stability`` (from ``stability[method]``, else the
    Directions' ``meta["stability"]``, else ``nan``), ``perm_p`` (paired sign-flip p-value of
    ‖μ_base − μ_aligned‖ at that layer — a property of the layer's base/aligned split, the same for
    every method; ``nan`` without kept activations), ``norm`` (‖μ_base − μ_aligned‖) and
    ``agree_<m>`` for every method ``m`` (cos between the two methods' directions).
    """
    diff = stats.base_mean() - stats.mean(stats.aligned_name)
    if stats.has_references() and n_permutations > 0:
        # one layer at a time (references may be on disk); the same sign flips at every layer,
        # as one call over all layers would draw them
        perm = np.empty(len(stats.layers))
        for i, layer in enumerate(stats.layers):
            base, aligned = stats.paired_references(layer)
            gen = torch.Generator().manual_seed(int(seed) + 4242)
            perm[i] = permutation_pvalue((base - aligned)[:, None], n_permutations, generator=gen)[
                0
            ]
    else:
        perm = np.full(len(stats.layers), math.nan)
    rows = []
    for pos, layer in enumerate(stats.layers):
        for method, vec in vectors.items():
            stab = (stability or {}).get(method)
            if stab is None:
                stab = vec.meta.get("stability")
            row = {
                "layer": int(layer),
                "method": method,
                "stability": float(stab[pos]) if stab is not None else math.nan,
                "perm_p": float(perm[pos]),
                "norm": float(diff[pos].norm()),
            }
            for other, ov in vectors.items():
                row[f"agree_{other}"] = float(vec[layer].double() @ ov[layer].double())
            rows.append(row)
    return pd.DataFrame(rows)
