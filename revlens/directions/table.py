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
    base = (
        stats.base_activations()
        if all(stats[n].activations is not None for n in stats.base_names)
        else None
    )
    aligned = stats[stats.aligned_name].activations
    if base is not None and aligned is not None and n_permutations > 0:
        gen = torch.Generator().manual_seed(int(seed) + 4242)
        perm = permutation_pvalue(
            base.to(torch.float64) - aligned.to(torch.float64), n_permutations, generator=gen
        )
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
