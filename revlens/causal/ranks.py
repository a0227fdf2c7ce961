"""Mediation against the subspace rank k, and k chosen on held-out prompts.

Pure functions of a :class:`~revlens.causal.CausalReport`'s ``effects`` table (columns ``rank``
and ``split``; see :func:`~revlens.causal.ablation_study` with ``ranks=(1, 2, 4, ...)``):

- :func:`rank_table`: per (split, layer, k) the subspace's mediation fraction (mean ± std over
  runs) beside the random k-dim subspaces of the same rank (per control type: the mean over runs
  of their mean, 5 % and 95 % quantiles; pooled: ``ctrl_p95``) and ``margin = mediation − ctrl_p95``;
- :func:`rank_choice`: the (layer, k) chosen on the ``select`` prompts by a rule fixed in the
  study's config before any result (``"margin"``: the largest margin over the controls' p95, so
  a k that merely catches more of everything is not rewarded; ``"max"``: the largest mediation),
  and what it mediates on the ``test`` prompts, which took no part in the choice.
"""

import math
from typing import Any

import numpy as np
import pandas as pd

from revlens.errors import ConfigError
from revlens.modes import RANK_RULES, RankRule, check_mode

__all__ = ["rank_choice", "rank_table"]

_KEYS = ["split", "layer", "rank"]

# the rank rule -> the rank_table column k (and the layer) is chosen by
_RULE_COLUMN: dict[str, str] = {"margin": "margin", "max": "mediation_mean"}


def _rows(effects: pd.DataFrame, kind: str, step: int | None) -> tuple[pd.DataFrame, int]:
    e = effects[effects["kind"] == kind]
    if e.empty:
        raise ConfigError(f"no {kind!r} rows in this report; kinds: {sorted(set(effects['kind']))}")
    steps = sorted(int(s) for s in e["step"].unique())
    step = steps[-1] if step is None else int(step)
    if step not in steps:
        raise ConfigError(f"step {step} is not in this report; steps: {steps}")
    return e[e["step"] == step], step


def rank_table(effects: pd.DataFrame, kind: str = "clamp", step: int | None = None) -> pd.DataFrame:
    """Mediation vs k per (split, layer, rank) at ``step`` (default: the last); see the module
    docstring for the columns (``mediation_mean``, ``mediation_std``, ``n_runs``,
    ``<type>_mean`` / ``<type>_p05`` / ``<type>_p95`` per control type, ``ctrl_p95``, ``margin``,
    ``step``, ``kind``)."""
    e, step = _rows(effects, kind, step)
    v = e[e["control_type"] == "v_rev"].groupby(_KEYS)["mediation_fraction"]
    out = pd.DataFrame(
        {"mediation_mean": v.mean(), "mediation_std": v.std(ddof=1), "n_runs": v.count()}
    )
    c = e[e["control_type"] != "v_rev"]
    if not c.empty:
        per = c.groupby([*_KEYS, "run", "control_type"])["mediation_fraction"]
        typed = pd.DataFrame(
            {"mean": per.mean(), "p05": per.quantile(0.05), "p95": per.quantile(0.95)}
        )
        typed = typed.groupby([*_KEYS, "control_type"]).mean().unstack("control_type")
        typed.columns = [f"{ct}_{stat}" for stat, ct in typed.columns]
        out = out.join(typed)
        out["ctrl_p95"] = (
            c.groupby([*_KEYS, "run"])["mediation_fraction"].quantile(0.95).groupby(_KEYS).mean()
        )
    else:
        out["ctrl_p95"] = math.nan
    out["margin"] = out["mediation_mean"] - out["ctrl_p95"]
    out["step"], out["kind"] = step, kind
    order = {"select": 0, "test": 1, "all": 2}
    out = out.reset_index()
    return out.sort_values(
        ["split", "layer", "rank"],
        key=lambda s: s.map(order) if s.name == "split" else s,
        ignore_index=True,
    )


def _describe(row: pd.Series) -> dict[str, Any]:
    keep = [c for c in row.index if c not in ("split", "layer", "rank", "step", "kind")]
    return {
        c: (float(row[c]) if isinstance(row[c], (int, float, np.floating, np.integer)) else row[c])
        for c in keep
    }


def rank_choice(
    effects: pd.DataFrame,
    kind: str = "clamp",
    step: int | None = None,
    *,
    rule: RankRule = "margin",
) -> dict[str, Any]:
    """The (layer, k) chosen on the ``select`` prompts and its mediation on the ``test`` prompts.

    Returns:
        ``{"layer", "rank", "rule", "kind", "step", "held_out", "select": {...}, "test": {...}}``
        where ``select`` / ``test`` are that (layer, k)'s :func:`rank_table` row on each half
        (``held_out`` is False when the study made no split: then both describe all prompts
        and the choice is **not** validated on unseen prompts); ``test["beats_controls"]``: the
        chosen subspace's mean mediation exceeds the random k-subspaces' mean p95 there.
    """
    check_mode("rule", rule, RANK_RULES)
    table = rank_table(effects, kind, step)
    held_out = bool((table["split"] == "select").any())
    pick_from = table[table["split"] == ("select" if held_out else "all")]
    score = pick_from[_RULE_COLUMN[rule]]
    if score.notna().sum() == 0:
        raise ConfigError(
            "no defined mediation fraction to choose k by (is the harm gap ~0 everywhere?)"
        )
    best = pick_from.loc[score.fillna(-np.inf).idxmax()]
    report = table[
        (table["split"] == ("test" if held_out else "all"))
        & (table["layer"] == best["layer"])
        & (table["rank"] == best["rank"])
    ].iloc[0]
    test = _describe(report)
    test["beats_controls"] = bool(test["mediation_mean"] > test["ctrl_p95"])
    return {
        "layer": int(best["layer"]),
        "rank": int(best["rank"]),
        "rule": rule,
        "kind": kind,
        "step": int(best["step"]),
        "held_out": held_out,
        "select": _describe(best),
        "test": test,
    }
