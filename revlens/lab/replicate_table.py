"""The replication table's arithmetic: per-run measurements pooled over seeds *and* pairs.

A track's measurements are *records* — one row per (pair, run, group, quantity) with a float
``value`` (:data:`RECORD_COLUMNS`) — written by :mod:`revlens.lab.replicate_pair` for each shipped
pair. Every row of the table pools all records of its (group, quantity) over every pair and seed:
``mean ± std`` (sample std, ``ddof=1``) over the ``n = pairs × seeds`` values, and counts of
run-step pairs above a null summed over pairs (``count / total``). Nothing here runs a model.

Groups: ``runs`` (the benign fine-tunes from aligned), ``control`` (fine-tune from base),
``sgd`` (the SGD-momentum first step), a blocking method ``<m>`` and its random-direction control
``<m>-random``, ``rank-k`` / ``rank-k-random`` (blocking the held-out-chosen k-subspace and a random
k-subspace), ``clamp`` (held-out-chosen k: per-run clamp mediation on the test half, with
``ctrl_p95``), ``clamp-k1`` (rank 1 at the drift's best layer, all prompts) and ``aligned``.
"""

import math
from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd

from revlens._numbers import format_mean_std, mean_std

__all__ = ["RECORD_COLUMNS", "pool", "pool_count", "records_frame"]

RECORD_COLUMNS = ["pair", "run", "group", "quantity", "value"]


def records_frame(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Records as a DataFrame with :data:`RECORD_COLUMNS` (``value`` float; ``None`` → NaN)."""
    df = pd.DataFrame(list(records), columns=RECORD_COLUMNS)
    df["value"] = pd.to_numeric(df["value"], errors="coerce").astype("float64")
    return df


def _select(records: pd.DataFrame, group: str, quantity: str) -> pd.Series:
    return records.loc[(records["group"] == group) & (records["quantity"] == quantity), "value"]


def pool(records: pd.DataFrame, group: str, quantity: str) -> dict[str, float]:
    """``{"mean", "std", "n"}`` of every finite value of (``group``, ``quantity``), all pairs and
    seeds together (one value per run; ``n = 0`` when there is none)."""
    return mean_std(_select(records, group, quantity))


def pool_count(records: pd.DataFrame, group: str, quantity: str) -> dict[str, int]:
    """``{"count", "total"}``: the per-run counts of ``quantity`` and of ``<quantity>_total``,
    summed over pairs and seeds."""
    count, total = _select(records, group, quantity), _select(records, group, f"{quantity}_total")
    return {"count": int(count.sum()), "total": int(total.sum())}


def fmt(block: Mapping[str, Any], pct: bool = False) -> str:
    """``mean ± std`` as the table prints it (``n/a`` without a value)."""
    return format_mean_std(block, pct=pct)


def fmt_count(c: Mapping[str, int]) -> str:
    return f"{c['count']} / {c['total']}" if c["total"] else "n/a"


def share(c: Mapping[str, int]) -> float:
    return c["count"] / c["total"] if c["total"] else math.nan


def mean_of(meta: Mapping[str, Mapping[str, Any]], key: str) -> float:
    """The mean over pairs of a per-pair scalar in ``meta`` (NaN if no pair has it)."""
    vals = [float(m[key]) for m in meta.values() if m.get(key) is not None]
    return sum(vals) / len(vals) if vals else math.nan


def per_pair(meta: Mapping[str, Mapping[str, Any]], key: str) -> str:
    """``"pair0: 2, pair1: 3"`` (or the one value when every pair has the same)."""
    vals = {p: m.get(key) for p, m in meta.items()}
    if len(set(map(str, vals.values()))) == 1:
        return str(next(iter(vals.values())))
    return ", ".join(f"{p}: {v}" for p, v in vals.items())


# ---------------------------------------------------------------------- the rows
def _row(
    rows: list[dict[str, Any]], claim: str, paper: str, lab: str, holds: bool | None, note: str = ""
) -> None:
    rows.append(
        {"claim": claim, "paper": paper, "revlens_lab": lab, "shape_holds": holds, "note": note}
    )


def _has(records: pd.DataFrame, group: str) -> bool:
    return bool((records["group"] == group).any())


def drift_rows(
    records: pd.DataFrame, meta: Mapping[str, Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """The drift rows: cos after the first update (AdamW, SGD momentum), at step 20 and at T,
    run-step pairs above the isotropic and the covariance-matched p99, the control from base."""
    from revlens.drift.summary import PAPER

    rows: list[dict[str, Any]] = []
    iso, cov = mean_of(meta, "iso_p99"), mean_of(meta, "cov_p99")
    where = (
        f"mean_diff at the best layer ({per_pair(meta, 'best_layer')}); "
        f"isotropic p99 {iso:.3f}, covariance-matched p99 {cov:.3f}"
    )
    first = pool(records, "runs", "cos_first")
    _row(
        rows,
        "cos(drift, v_rev) after the first update (AdamW)",
        fmt(PAPER["cos_first"]),
        fmt(first),
        bool(first["mean"] > iso),
        where,
    )
    if _has(records, "sgd"):
        sgd = pool(records, "sgd", "cos_first")
        _row(
            rows,
            f"cos(drift, v_rev) after the first update (SGD momentum, lr {per_pair(meta, 'sgd_lr')})",
            "—",
            fmt(sgd),
            bool(sgd["mean"] > iso),
            f"AdamW {fmt(first)}; same seeds, same first batch",
        )
    s20 = pool(records, "runs", "cos_step20")
    _row(
        rows,
        f"cos(drift, v_rev) at step {per_pair(meta, 'step20')}",
        fmt(PAPER["cos_step20"]),
        fmt(s20),
        bool(s20["mean"] > iso),
        "",
    )
    fin = pool(records, "runs", "final_cos")
    _row(
        rows,
        f"cos(drift, v_rev) at T = {per_pair(meta, 'T')}",
        fmt(PAPER["final_cos"]),
        fmt(fin),
        bool(fin["mean"] > iso),
        "",
    )
    for q, name, paper in (
        ("above_iso", "isotropic", "24 / 24"),
        ("above_cov", "covariance-matched", "—"),
    ):
        c = pool_count(records, "runs", q)
        _row(
            rows,
            f"run-step pairs above the {name} p99",
            paper,
            fmt_count(c),
            bool(share(c) >= 0.9),
            "best layer, every saved step of every run; holds: ≥ 90 %",
        )
    if _has(records, "control"):
        c20, cc = (
            pool(records, "control", "cos_step20"),
            pool_count(records, "control", "above_iso"),
        )
        _row(
            rows,
            f"control: fine-tune from base, cos at step {per_pair(meta, 'step20')} (should be ≈ 0)",
            "—",
            fmt(c20),
            bool(abs(c20["mean"]) < iso),
            f"{fmt_count(cc)} pairs above the isotropic p99; one control run per pair",
        )
    return rows


def _specific(unb: float, blk: float, rnd: float) -> bool:
    """Blocking along v_rev lowers harm, and the random-direction control removes less than half
    of what it removes."""
    return bool(blk < unb and (unb - rnd) < 0.5 * (unb - blk))


def blocking_rows(
    records: pd.DataFrame, methods: Iterable[str], *, label: str = ""
) -> list[dict[str, Any]]:
    """Per blocking method (group ``m``, control ``m-random``): final cos, harm at T, the
    random-direction control, task cost."""
    from revlens.drift.summary import PAPER

    rows: list[dict[str, Any]] = []
    h_unb, a_unb = pool(records, "runs", "harm_T"), pool(records, "runs", "task_acc_T")
    c_unb = pool(records, "runs", "final_cos")
    for m in methods:
        if not _has(records, m):
            continue
        name = label or f"blocking by {m}"
        paper = m == "update" and not label
        rnd = f"{m}-random"
        c_blk, c_rnd = pool(records, m, "final_cos"), pool(records, rnd, "final_cos")
        _row(
            rows,
            f"{name}: final cos (best layer), unblocked → blocked",
            f"{fmt(PAPER['final_cos'])} → {fmt(PAPER['final_cos_blocked'])}" if paper else "—",
            f"{fmt(c_unb)} → {fmt(c_blk)}",
            bool(c_blk["mean"] < c_unb["mean"] and c_blk["mean"] <= 0.1),
            f"random-direction control {fmt(c_rnd)}; holds: lower and ≤ 0.1",
        )
        h_blk, h_rnd = pool(records, m, "harm_T"), pool(records, rnd, "harm_T")
        _row(
            rows,
            f"{name}: harm at T, unblocked → blocked",
            f"{fmt(PAPER['harm_final'], True)} → {fmt(PAPER['harm_final_blocked'], True)}"
            if paper
            else "—",
            f"{fmt(h_unb, True)} → {fmt(h_blk, True)}",
            bool(h_blk["mean"] < h_unb["mean"]),
            "",
        )
        _row(
            rows,
            f"{name}, random-direction control: harm at T (should stay high)",
            "—",
            f"{fmt(h_rnd, True)} (blocked {fmt(h_blk, True)}, unblocked {fmt(h_unb, True)})",
            _specific(h_unb["mean"], h_blk["mean"], h_rnd["mean"]) if h_rnd["n"] else None,
            "holds: the control removes < 1/2 of the harm blocking removes",
        )
        a_blk = pool(records, m, "task_acc_T")
        _row(
            rows,
            f"{name}: task accuracy at T, unblocked → blocked",
            "little cost",
            f"{fmt(a_unb, True)} → {fmt(a_blk, True)}",
            bool(a_blk["mean"] >= a_unb["mean"] - 0.10),
            "holds: within 10 points",
        )
    return rows


def harm_row(records: pd.DataFrame) -> list[dict[str, Any]]:
    from revlens.drift.summary import PAPER

    rows: list[dict[str, Any]] = []
    h, al = pool(records, "runs", "harm_T"), pool(records, "aligned", "harm")
    _row(
        rows,
        "harm at T (benign fine-tuning reverts alignment)",
        f"{fmt(PAPER['harm_final'], True)} (mild)",
        f"{fmt(h, True)} (aligned {fmt(al, True)}; step 1 {fmt(pool(records, 'runs', 'harm_first'), True)})",
        bool(h["mean"] > al["mean"] + 0.05),
        "holds: up ≥ 5 points from aligned; 96 held-out harmful prompts",
    )
    return rows


def rank_rows(records: pd.DataFrame, meta: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Held-out-chosen k (clamp mediation on the test half vs random k-subspaces), the rank-1 clamp
    at the drift's best layer, and blocking the chosen k-subspace beside a random k-subspace."""
    rows: list[dict[str, Any]] = []
    if _has(records, "clamp"):
        med, p95 = pool(records, "clamp", "mediation"), pool(records, "clamp", "ctrl_p95")
        _row(
            rows,
            f"rank-k: held-out-chosen k = {per_pair(meta, 'chosen_k')} (layer {per_pair(meta, 'chosen_layer')}), "
            "clamp mediation at T on the test half",
            "—",
            f"{fmt(med)} (random k-subspaces' p95 {fmt(p95)})",
            bool(med["mean"] > p95["mean"]),
            "k and layer chosen on the selection half (rule: margin over the controls' p95)",
        )
    if _has(records, "clamp-k1"):
        med, p95 = pool(records, "clamp-k1", "mediation"), pool(records, "clamp-k1", "ctrl_p95")
        _row(
            rows,
            f"clamp along the rank-1 reversion direction at layer {per_pair(meta, 'best_layer')}, mediation at T",
            "—",
            f"{fmt(med)} (random directions' p95 {fmt(p95)})",
            bool(med["mean"] > p95["mean"]),
            "all prompts",
        )
    if _has(records, "rank-k"):
        h_unb = pool(records, "runs", "harm_T")
        blk, rnd = pool(records, "rank-k", "harm_T"), pool(records, "rank-k-random", "harm_T")
        _row(
            rows,
            "rank-k: blocking the chosen k-subspace (update), harm at T: unblocked → blocked → random k-subspace",
            "—",
            f"{fmt(h_unb, True)} → {fmt(blk, True)} → {fmt(rnd, True)}",
            _specific(h_unb["mean"], blk["mean"], rnd["mean"]),
            f"task acc {fmt(pool(records, 'rank-k', 'task_acc_T'), True)}; holds: lower, and the random "
            "k-subspace removes < 1/2 of that",
        )
    return rows


def candidate_rows(
    records: pd.DataFrame, meta: Mapping[str, Mapping[str, Any]]
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    iso = mean_of(meta, "iso_p99")
    for g in sorted({g for g in records["group"] if str(g).startswith("cand-")}):
        v = pool(records, g, "cos_step20")
        _row(
            rows,
            f"direction candidate {g[5:]}: cos at step 20 (its best layer)",
            "—",
            fmt(v),
            bool(v["mean"] > iso),
            "",
        )
    return rows
