"""The paper's headline quantities from a drift table (see :func:`headline`).

Poppi & Lukas report, for their main track: cos(drift, v_rev) after the first fine-tuning update
and at step 20 (mean ± std over runs), how many run-step pairs exceed the isotropic null's p99,
and the final cos. :func:`headline` computes the same from a drift table, for the ordinary runs,
the control runs and (if any) blocked runs, beside the paper's values (:data:`PAPER`).

Conventions: ``std`` is the sample standard deviation over runs (``ddof=1``; ``nan`` with one
run). "Step 20" is the step closest to ``step`` among the ordinary runs' steps (ties: the
smaller); "first" is each run's smallest step; "final" each run's largest step. The **best layer**
maximises the mean cos over ordinary runs at that step.
"""

import math
from typing import Any

import numpy as np
import pandas as pd

from revlens._numbers import mean_std
from revlens.errors import ConfigError

__all__ = ["PAPER", "headline", "headline_frame", "position_summary"]

PAPER: dict[str, Any] = {
    "source": "Poppi & Lukas, arXiv 2606.28525 (main track)",
    "cos_first": {"mean": 0.429, "std": 0.052},
    "cos_step20": {"mean": 0.647, "std": 0.021},
    "above_iso_p99": {"count": 24, "total": 24},
    "final_cos": {"mean": 0.648, "std": 0.009, "step": 100},
    "final_cos_blocked": {"mean": -0.211, "std": 0.021},
    "harm_final": {"mean": 0.190, "std": 0.040},
    "harm_final_blocked": {"mean": 0.085, "std": 0.015},
}


def _at_step(df: pd.DataFrame, which: str, step: int | None) -> pd.DataFrame:
    """One row per (run, layer): the run's first / final step, or the given step."""
    if which == "step":
        return df[df["step"] == step]
    idx = df.groupby(["run", "layer"])["step"].transform("min" if which == "first" else "max")
    return df[df["step"] == idx]


def _block(df: pd.DataFrame, layer: int, step: int | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, which in (("cos_first", "first"), ("cos_step20", "step"), ("final_cos", "final")):
        sub = _at_step(df, which, step)
        out[key] = {
            **mean_std(sub.loc[sub["layer"] == layer, "cos"]),
            "per_layer": {int(lay): mean_std(g["cos"]) for lay, g in sub.groupby("layer")},
        }
    best = df[df["layer"] == layer]
    out["above_iso_p99"] = {"count": int(best["significant"].sum()), "total": len(best)}
    out["above_iso_p99_all_layers"] = {"count": int(df["significant"].sum()), "total": len(df)}
    out["above_cov_p99"] = {"count": int(best["significant_cov"].sum()), "total": len(best)}
    out["runs"] = sorted(df["run"].unique().tolist())
    return out


def headline(drift: pd.DataFrame, *, method: str = "mean_diff", step: int = 20) -> dict[str, Any]:
    """The paper's headline quantities for ``method`` (see the module docstring).

    Returns:
        ``{"method", "step", "best_layer", "runs": {...}, "control": {...} | None,
        "blocked": {...} | None, "paper": PAPER}``; each block holds ``cos_first``,
        ``cos_step20``, ``final_cos`` (``mean``, ``std``, ``n`` at the best layer, and
        ``per_layer``), ``above_iso_p99`` / ``above_cov_p99`` (``count`` of run-step pairs above
        the null's p99 at the best layer, out of ``total``) and ``above_iso_p99_all_layers``.

    Raises:
        ConfigError: ``method`` is not in the table, or there is no ordinary run.
    """
    if method not in set(drift["method"]):
        raise ConfigError(
            f"method {method!r} is not in the drift table; methods: {sorted(set(drift['method']))}"
        )
    df = drift[drift["method"] == method]
    kind = df["kind"] if "kind" in df else np.where(df["control"], "control", "run")
    runs = df[kind == "run"]
    if runs.empty:
        raise ConfigError("the drift table holds no ordinary (non-control) run")
    steps = np.array(sorted(runs["step"].unique()))
    chosen = int(steps[np.argmin(np.abs(steps - step))])
    at = runs[runs["step"] == chosen].groupby("layer")["cos"].mean()
    best = int(at.idxmax())
    out: dict[str, Any] = {
        "method": method,
        "step": chosen,
        "best_layer": best,
        "runs": _block(runs, best, chosen),
    }
    for name in ("control", "blocked"):
        sub = df[kind == name]
        out[name] = _block(sub, best, _closest(sub, chosen)) if not sub.empty else None
    out["paper"] = PAPER
    return out


def _closest(df: pd.DataFrame, step: int) -> int:
    steps = np.array(sorted(df["step"].unique()))
    return int(steps[np.argmin(np.abs(steps - step))])


_PAPER_KEY = {
    "cos_first": "cos_first",
    "cos_step20": "cos_step20",
    "final_cos": "final_cos",
    "above_iso_p99": "above_iso_p99",
}


def headline_frame(head: dict[str, Any]) -> pd.DataFrame:
    """:func:`headline`'s dict as a tidy table: one row per (group, quantity) with ``mean``, ``std``,
    ``n`` (cos rows) or ``count`` / ``total`` (rows counting run-step pairs above a null), the
    paper's value beside it, the method, best layer and step."""
    rows = []
    for group in ("runs", "control", "blocked"):
        block = head.get(group)
        if not block:
            continue
        for q in (
            "cos_first",
            "cos_step20",
            "final_cos",
            "above_iso_p99",
            "above_cov_p99",
            "above_iso_p99_all_layers",
        ):
            v = block.get(q) or {}
            paper = head["paper"].get(_PAPER_KEY.get(q, ""), {}) if group == "runs" else {}
            rows.append(
                {
                    "group": group,
                    "quantity": q,
                    "mean": v.get("mean", math.nan),
                    "std": v.get("std", math.nan),
                    "n": v.get("n", 0),
                    "count": v.get("count"),
                    "total": v.get("total"),
                    "paper_mean": paper.get("mean", math.nan),
                    "paper_std": paper.get("std", math.nan),
                    "method": head["method"],
                    "best_layer": head["best_layer"],
                    "step": head["step"],
                }
            )
    return pd.DataFrame(rows)


def position_summary(
    drift: pd.DataFrame, directions_table: pd.DataFrame, *, step: str | int = "final"
) -> pd.DataFrame:
    """One row per (position, layer, method) of a multi-position drift table (see
    :mod:`revlens.drift.positions`): ``cos`` / ``cos_std`` over the ordinary runs at ``step``
    (``"final"``: each run's last step; an int: the closest step), ``above_iso_p99`` (share of
    those runs above the isotropic p99), ``n_runs``, and the direction's ``norm``, ``perm_p`` and
    ``stability`` from the directions table."""
    if "position" not in drift.columns:
        raise ConfigError(
            "the drift table has no 'position' column (one position rule was analysed)"
        )
    kind = drift["kind"] if "kind" in drift else np.where(drift["control"], "control", "run")
    runs = drift[kind == "run"]
    if runs.empty:
        raise ConfigError("the drift table holds no ordinary (non-control) run")
    if step == "final":
        at = runs[runs["step"] == runs.groupby("run")["step"].transform("max")]
    else:
        at = runs[runs["step"] == _closest(runs, int(step))]
    keys = ["position", "layer", "method", "base_method"]
    out = (
        at.groupby(keys, sort=True)
        .agg(
            cos=("cos", "mean"),
            cos_std=("cos", "std"),
            above_iso_p99=("significant", "mean"),
            n_runs=("run", "nunique"),
            step=("step", "max"),
        )
        .reset_index()
    )
    extra = [c for c in ("norm", "perm_p", "stability") if c in directions_table.columns]
    if extra:
        out = out.merge(
            directions_table[["position", "layer", "method", *extra]],
            on=["position", "layer", "method"],
            how="left",
        )
    return out
