"""Per-run records of one replicated pair (see :mod:`revlens.lab.replicate_table` for the format).

:func:`measures` reads a pair's ``analyze`` report (drift of every run — unblocked, control and
blocked — at the best layer of the unblocked runs), the SGD-momentum report, the clamp study and
the held-out choice of k, and returns ``(records, meta)``. Every value is one run's.
"""

import math
from collections.abc import Iterable
from typing import Any

import pandas as pd

__all__ = ["clamp_records", "drift_records", "measures", "metric_records", "report_measures"]


def _rec(pair: str, run: str, group: str, quantity: str, value: Any) -> dict[str, Any]:
    v = float(value)
    return {
        "pair": pair,
        "run": run,
        "group": group,
        "quantity": quantity,
        "value": v if math.isfinite(v) else None,
    }


def _group(run: str, kind: str) -> str:
    if kind in ("run", "control"):
        return "runs" if kind == "run" else "control"
    return run.split("/")[0]


def drift_records(
    pair: str,
    drift: pd.DataFrame,
    layer: int,
    step20: int,
    *,
    groups: Iterable[str] | None = None,
    prefix: str = "",
) -> list[dict[str, Any]]:
    """Per run at ``layer``: cos at its first step, at the saved step closest to ``step20``, at its
    last step; counts of its saved steps above the isotropic / covariance-matched p99."""
    out: list[dict[str, Any]] = []
    d = drift[drift["layer"] == layer]
    keep = None if groups is None else set(groups)
    for run, g in d.groupby("run", sort=False):
        group = _group(str(run), str(g["kind"].iloc[0]))
        if keep is not None and group not in keep:
            continue
        group = prefix + group
        g = g.sort_values("step")
        near = g.iloc[(g["step"] - step20).abs().argsort(kind="stable")].iloc[0]
        out += [
            _rec(pair, run, group, "cos_first", g["cos"].iloc[0]),
            _rec(pair, run, group, "cos_step20", near["cos"]),
            _rec(pair, run, group, "final_cos", g["cos"].iloc[-1]),
            _rec(pair, run, group, "above_iso", g["significant"].sum()),
            _rec(pair, run, group, "above_iso_total", len(g)),
            _rec(pair, run, group, "above_cov", g["significant_cov"].sum()),
            _rec(pair, run, group, "above_cov_total", len(g)),
        ]
    return out


def metric_records(pair: str, metrics: pd.DataFrame) -> list[dict[str, Any]]:
    """Per run: harm rate and task accuracy at its last step (and harm at its first); the aligned model's harm."""
    out: list[dict[str, Any]] = []
    al = metrics[metrics["role"] == "aligned"]
    if not al.empty:
        out.append(_rec(pair, "aligned", "aligned", "harm", al["harm_rate"].iloc[0]))
    runs = metrics[metrics["run"].notna() & metrics["step"].notna()]
    for run, g in runs.groupby("run", sort=False):
        g = g.sort_values("step")
        group = _group(str(run), str(g["kind"].iloc[0]))
        out += [
            _rec(pair, run, group, "harm_T", g["harm_rate"].iloc[-1]),
            _rec(pair, run, group, "harm_first", g["harm_rate"].iloc[0]),
            _rec(pair, run, group, "task_acc_T", g["task_acc"].iloc[-1]),
        ]
    return out


def clamp_records(
    pair: str, effects: pd.DataFrame, *, layer: int, rank: int, split: str, group: str
) -> list[dict[str, Any]]:
    """Per run at T: the clamp's mediation fraction along the subspace's first ``rank`` rows at
    ``layer`` on ``split``, and the p95 of its random k-subspace controls."""
    e = effects[
        (effects["kind"] == "clamp")
        & (effects["layer"] == layer)
        & (effects["rank"] == rank)
        & (effects["split"] == split)
    ]
    e = e[e["step"] == e.groupby("run")["step"].transform("max")]
    out: list[dict[str, Any]] = []
    for run, g in e.groupby("run", sort=False):
        v, c = g[g["control_type"] == "v_rev"], g[g["control_type"] != "v_rev"]
        out += [
            _rec(pair, run, group, "mediation", v["mediation_fraction"].mean()),
            _rec(
                pair,
                run,
                group,
                "ctrl_p95",
                c["mediation_fraction"].quantile(0.95) if len(c) else math.nan,
            ),
        ]
    return out


def report_measures(pair: str, report: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``(records, meta)`` of one pair's ``analyze`` report alone: drift of every run at the best
    layer of the unblocked runs (mean_diff; chat probes: its last post-instruction position) and
    the lab's metrics. ``meta``: ``best_layer``, ``step20``, ``T``, ``method``, ``iso_p99``, ``cov_p99``."""
    method = "mean_diff@-1" if "mean_diff@-1" in report.directions else "mean_diff"
    head = report.headline(method)
    best, step20 = int(head["best_layer"]), int(head["step"])
    drift = report.drift[report.drift["method"] == method]
    at = drift[drift["layer"] == best]
    records = drift_records(pair, drift, best, step20) + metric_records(pair, report.metrics)
    meta = {
        "best_layer": best,
        "step20": step20,
        "T": int(drift["step"].max()),
        "method": method,
        "iso_p99": float(at["null_iso_p99"].mean()),
        "cov_p99": float(at["null_cov_p99"].mean()),
    }
    return records, meta


def measures(
    pair: str, report: Any, sgd: Any, causal: Any, choice: dict[str, Any], plan: Any
) -> tuple[list, dict]:
    """``(records, meta)`` of one pair (module docstring)."""
    records, meta = report_measures(pair, report)
    best, step20, method = meta["best_layer"], meta["step20"], meta["method"]
    if sgd is not None:
        sd = sgd.drift[sgd.drift["method"] == method]
        records += drift_records(pair, sd, best, step20, groups=["runs"], prefix="sgd:")
    for m in plan.candidates:
        m = m + method[len("mean_diff") :]  # chat probes: the same position as mean_diff's (@-1)
        h = report.headline(m)
        cd = report.drift[report.drift["method"] == m]
        records += drift_records(
            pair,
            cd,
            int(h["best_layer"]),
            int(h["step"]),
            groups=["runs"],
            prefix=f"cand-{m.split('@')[0]}:",
        )
    effects = causal.effects
    split = "test" if choice.get("held_out") else "all"
    records += clamp_records(
        pair, effects, layer=choice["layer"], rank=choice["rank"], split=split, group="clamp"
    )
    k1_split = "all" if (effects["split"] == "all").any() else split
    records += clamp_records(pair, effects, layer=best, rank=1, split=k1_split, group="clamp-k1")
    records = [_rename(r) for r in records]
    meta.update(
        chosen_k=int(choice["rank"]),
        chosen_layer=int(choice["layer"]),
        held_out=bool(choice.get("held_out")),
        clamp_split_k1=k1_split,
        sgd_lr=plan.sgd_lr if sgd is not None else None,
    )
    return records, meta


def _rename(r: dict[str, Any]) -> dict[str, Any]:
    """``sgd:runs`` → ``sgd``, ``cand-pca:runs`` → ``cand-pca`` (records of the extra analyses)."""
    if ":" in r["group"]:
        r = {**r, "group": r["group"].split(":")[0]}
    return r
