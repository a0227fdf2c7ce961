"""Directions and drift per (position, layer): the analysis of several template positions.

Refusal-direction work reads the **post-instruction** positions of a chat prompt (the template
tokens after the user's content) and picks a direction per (position, layer) (Arditi et al. 2024).
:func:`revlens.collect.collect` with such a rule gives one :class:`HistoryStats` per position from the
same forward passes; :func:`position_tables` fits the directions and projects the drift at each
position, labelling every direction ``"<method>@<position>"`` (e.g. ``"mean_diff@-2"``) and adding
a ``position`` column (``-k .. -1``) to the tables.

**Constant layers.** A post-instruction position holds the same template token in every prompt,
so where no information about the prompt has reached it yet — the embeddings (layer 0) on a
model without learned absolute positions (RoPE: Llama, Qwen, Gemma, Mistral...) — its activation
is the same for every prompt. There the mean difference is that token's embedding change, but
everything measured *across prompts* (covariance null, whitened / probe directions, bootstrap
intervals) is undefined. Such (position, layer) pairs are found from the reference checkpoints'
per-prompt activations (or their covariance) by :func:`revlens.collect.degenerate_layers` (the
same rule :func:`revlens.analyze` applies to single-position statistics), dropped from that
position's tables, and reported (``dropped``; a warning names them).
"""

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import pandas as pd

from revlens.collect.degenerate import degenerate_layers, select_layers
from revlens.collect.stats import HistoryStats
from revlens.directions.base import Directions
from revlens.directions.table import directions_table
from revlens.drift.projection import drift_table
from revlens.errors import ConfigError

__all__ = ["PositionTables", "position_tables"]


@dataclass
class PositionTables:
    """What :func:`position_tables` computed.

    Attributes:
        drift: the drift table of every position (``method`` = ``"<method>@<position>"``, plus
            ``position`` and ``base_method`` columns).
        directions: ``"<method>@<position>"`` -> :class:`Directions`.
        directions_table: the directions table of every position (same columns added).
        stability: ``"<method>@<position>"`` -> per-layer stability (or ``None``).
        dropped: position -> constant layers dropped there.
        subspaces: ``"<method>@<position>"`` -> rank-k :class:`Directions` (with ``subspaces=``).
        subspace_drift: the drift's energy in them at every position (``method`` labelled, plus
            ``position`` and ``base_method`` columns), or ``None``.
    """

    drift: pd.DataFrame
    directions: dict[str, Directions]
    directions_table: pd.DataFrame
    stability: dict[str, object] = field(default_factory=dict)
    dropped: dict[str, list[int]] = field(default_factory=dict)
    subspaces: dict[str, Directions] = field(default_factory=dict)
    subspace_drift: pd.DataFrame | None = None


def _label_frame(df: pd.DataFrame, position: str) -> pd.DataFrame:
    df = df.copy()
    df.insert(df.columns.get_loc("method") + 1, "base_method", df["method"])
    df["method"] = df["method"].astype(str) + f"@{position}"
    df.insert(0, "position", int(position))
    return df


def position_tables(
    stats: Mapping[str, HistoryStats],
    fit: Callable[[HistoryStats], tuple[dict[str, Directions], dict[str, object]]],
    *,
    n_null: int = 1000,
    seed: int = 0,
    subspaces: Callable[[HistoryStats], tuple[dict[str, Directions], pd.DataFrame | None]]
    | None = None,
) -> PositionTables:
    """Fit directions (``fit(stats) -> (directions, stability)``) and project the drift at every
    position; constant (position, layer) pairs are dropped first (see the module docstring).
    ``subspaces(stats) -> (rank-k directions, subspace drift table)`` fits rank-k subspaces at
    every position too (``analyze(position=("post_instruction", k), ranks=...)``).

    Raises:
        ConfigError: every layer of every position is constant over prompts.
    """
    drifts, tables, dirs, stab, dropped, subs, sub_drifts = [], [], {}, {}, {}, {}, []
    for label, st in stats.items():
        flat = sorted(degenerate_layers(st))
        keep = [layer for layer in st.layers if layer not in flat]
        if flat:
            dropped[label] = flat
        if not keep:
            continue
        sub = select_layers(st, keep) if flat else st
        vectors, stability = fit(sub)
        for name, vec in vectors.items():
            vec.meta["position"] = int(label)
            dirs[f"{name}@{label}"] = vec
            stab[f"{name}@{label}"] = stability.get(name)
        drifts.append(_label_frame(drift_table(sub, vectors, n_null=n_null, seed=seed), label))
        table = directions_table(
            sub,
            vectors,
            stability={k: v for k, v in stability.items() if v is not None},
            n_permutations=n_null,
            seed=seed,
        )
        tables.append(_label_frame(table, label))
        if subspaces is not None:
            fitted, sub_drift = subspaces(sub)
            for name, vec in fitted.items():
                vec.meta["position"] = int(label)
                subs[f"{name}@{label}"] = vec
            if sub_drift is not None:
                sub_drifts.append(_label_frame(sub_drift, label))
    if dropped:
        where = "; ".join(f"position {p}: layer(s) {ls}" for p, ls in dropped.items())
        warnings.warn(
            f"constant over prompts (the same template token, and no prompt information has reached "
            f"it yet), so directions and nulls are undefined there; dropped: {where}",
            UserWarning,
            stacklevel=3,
        )
    if not drifts:
        raise ConfigError(
            f"every collected layer is constant over prompts at every position ({dropped}); "
            "collect deeper layers"
        )
    return PositionTables(
        pd.concat(drifts, ignore_index=True),
        dirs,
        pd.concat(tables, ignore_index=True),
        stab,
        dropped,
        subs,
        pd.concat(sub_drifts, ignore_index=True) if sub_drifts else None,
    )
