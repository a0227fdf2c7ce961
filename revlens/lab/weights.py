"""Weight space on the lab: reversion rows for the replication table, and the weight-space blocker's
harm / task / cos comparison (3 seeds, against random-subspace controls and unblocked runs).

- :func:`run_weight_blocking` fine-tunes the lab's aligned model with a
  :class:`~revlens.weights.WeightBlocker` for each variant and its random-subspace control (runs of
  kind ``"blocked"`` in the lab's history, via :func:`revlens.lab.blocked.run_blocked`);
- :func:`weight_blocking_table` reads them back: one row per run with its final harm, task accuracy,
  activation-space ``cos(drift, v_rev)`` (``mean_diff`` on the held-out probes, mean over layers) and
  weight-space reverted fraction and cos;
- :func:`weight_rows` gives the rows of ``revlens replicate``'s table (claim, paper, revlens_lab,
  shape_holds, note) for the weight-space analysis and the blocker.

Variants (fixed before any result was seen): ``weights`` = updates kept off V's top-16 left
(output-side) subspace of every 2-d weight; ``weights-direction`` = updates kept orthogonal to V
itself (``⟨ΔW, V⟩ = 0`` exactly, per weight: no weight-space reversion at all, by construction).
"""

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from revlens._numbers import format_mean_std, mean_std
from revlens._types import PathLike

__all__ = ["VARIANTS", "run_weight_blocking", "weight_blocking_table", "weight_rows"]

VARIANTS: dict[str, dict[str, Any]] = {
    "weights": {"side": "left", "k": 16},
    "weights-direction": {"side": "direction"},
}


def run_weight_blocking(
    lab_dir: PathLike,
    *,
    seeds: Sequence[int] | None = None,
    variants: Mapping[str, Mapping[str, Any]] = VARIANTS,
    progress: bool = True,
) -> pd.DataFrame:
    """Blocked runs ``<variant>/seed<k>`` and controls ``<variant>-random/seed<k>`` into ``lab_dir``."""
    from revlens.lab.blocked import WEIGHTS, run_blocked

    out = []
    for name, kw in variants.items():
        for random in (False, True):
            run = f"{name}-random" if random else name
            t = run_blocked(
                lab_dir,
                WEIGHTS,
                seeds=seeds,
                random_directions=random,
                name=run,
                progress=progress,
                **dict(kw),
            )
            out.append(t.assign(variant=name, random=random))
    return pd.concat(out, ignore_index=True)


def _final_history(lab_dir: Any, groups: Sequence[str]) -> Any:
    """The lab's history with, per run of ``groups`` (prefixes; ``seed`` = unblocked), its final step."""
    from revlens.history import History, Run

    h = History.load(lab_dir)
    runs = {}
    for name, run in h.runs.items():
        if any(
            name == g or name.startswith(f"{g}/") or (g == "seed" and run.kind == "run")
            for g in groups
        ):
            last = max(run.steps)
            runs[name] = Run(name, {last: run.steps[last]}, start=run.start, kind=run.kind)
    return History(
        base=h.base,
        aligned=h.aligned,
        runs=runs,
        architecture=h.architecture,
        metadata=h.metadata,
        metrics=None,
    ), h


def _activation_cos(hist: Any, progress: bool) -> pd.DataFrame:
    from revlens.collect import collect
    from revlens.directions import MeanDiff
    from revlens.drift import drift_table

    stats = collect(
        hist, None, layers="all", n_bootstrap=0, moments="none", keep="none", progress=progress
    )
    dirs = MeanDiff(n_bootstrap=0).fit(stats).direction_
    drift = drift_table(stats, {"mean_diff": dirs}, n_null=0)
    drift = drift[drift["layer"] >= 1]
    return (
        drift.groupby("run").agg(cos_act=("cos", "mean"), cos_act_max=("cos", "max")).reset_index()
    )


def weight_blocking_table(
    lab_dir: PathLike, *, variants: Sequence[str] = tuple(VARIANTS), progress: bool = True
) -> pd.DataFrame:
    """One row per run (unblocked ``seed*``, each variant and its ``-random`` control) at its final
    step: ``group, run, harm_rate, harm_logodds, task_acc, cos_act`` (activation-space cos(drift,
    v_rev), ``mean_diff``, mean over layers 1..L; ``cos_act_max`` the largest), ``revert_w`` and
    ``cos_w`` (weight space, whole model)."""
    from revlens.weights import weight_reversion

    groups = ["seed", *variants, *(f"{v}-random" for v in variants)]
    hist, full = _final_history(lab_dir, groups)
    act = _activation_cos(hist, progress)
    w = weight_reversion(hist, ks=(1,), n_random=0, progress=progress).model
    w = w.rename(columns={"revert": "revert_w", "cos": "cos_w"})[["run", "revert_w", "cos_w"]]
    m = full.metrics
    m = m[m["run"].isin(list(hist.runs))]
    m = m[m["step"] == m.groupby("run")["step"].transform("max")][
        ["run", "kind", "step", "harm_rate", "harm_logodds", "task_acc"]
    ]
    out = m.merge(act, on="run").merge(w, on="run")
    out["step"] = out["step"].astype(int)
    out.insert(0, "group", [r.split("/")[0] if "/" in r else "unblocked" for r in out["run"]])
    order = {g: i for i, g in enumerate(["unblocked", *groups[1:]])}
    return out.sort_values(
        ["group", "run"], key=lambda s: s.map(order) if s.name == "group" else s
    ).reset_index(drop=True)


def _ms(df: pd.DataFrame, col: str, pct: bool = False) -> str:
    return format_mean_std(mean_std(df[col]), pct=pct)


def weight_rows(weights: Any, table: pd.DataFrame | None = None) -> list[dict[str, Any]]:
    """Rows for the replication table: the weight-space reversion of the runs beside the control
    (from a :class:`~revlens.weights.WeightReport` of the lab), and, with ``table``
    (:func:`weight_blocking_table`), the weight-space blocker against its controls."""
    rows: list[dict[str, Any]] = []

    def row(claim: str, lab: str, holds: bool | None, note: str = "") -> None:
        rows.append(
            {"claim": claim, "paper": "—", "revlens_lab": lab, "shape_holds": holds, "note": note}
        )

    h = weights.headline(k=16 if 16 in weights.ks else None)
    runs, ctrl = h["groups"].get("runs"), h["groups"].get("control")
    if runs:
        row(
            "weight space: reverted fraction −⟨ΔW,V⟩/‖V‖² at T (> 0 = reverting)",
            format_mean_std(runs["revert_final"]),
            runs["revert_final"]["mean"] > 0,
            f"cos(ΔW, −V) {format_mean_std(runs['cos_final'])}; above the isotropic p99 in "
            f"{runs['above_iso_p99']['count']} / {runs['above_iso_p99']['total']} run-steps",
        )
        row(
            f"weight space: share of ‖ΔW‖² in V's top-{h['k']} left subspace at T (vs random subspaces)",
            f"{format_mean_std(runs['frac_final'])} (random p99 {format_mean_std(runs['rand_p99_final'])})",
            runs["frac_final"]["mean"] > runs["rand_p99_final"]["mean"],
            f"chance {runs['chance']:.3f}",
        )
    if ctrl:
        row(
            "weight space, control from base: reverted fraction at T (should not be > 0)",
            format_mean_std(ctrl["revert_final"]),
            ctrl["revert_final"]["mean"] <= 0,
            f"above the isotropic p99 (cos) in {ctrl['above_iso_p99']['count']} / "
            f"{ctrl['above_iso_p99']['total']} steps",
        )
    if table is not None:
        unb = table[table["group"] == "unblocked"]
        for g in [
            g
            for g in dict.fromkeys(table["group"])
            if g != "unblocked" and not g.endswith("-random")
        ]:
            blk, rnd = table[table["group"] == g], table[table["group"] == f"{g}-random"]
            row(
                f"weight-space blocking ({g}): harm at T, unblocked → blocked → random-subspace control",
                f"{_ms(unb, 'harm_rate', True)} → {_ms(blk, 'harm_rate', True)} → {_ms(rnd, 'harm_rate', True)}",
                bool(
                    blk["harm_rate"].mean() < unb["harm_rate"].mean()
                    and blk["harm_rate"].mean() < rnd["harm_rate"].mean()
                ),
                f"task acc {_ms(blk, 'task_acc', True)}; cos(drift, v_rev) {_ms(unb, 'cos_act')} → "
                f"{_ms(blk, 'cos_act')} "
                f"(random {_ms(rnd, 'cos_act')}); weight revert {_ms(blk, 'revert_w')}",
            )
    return rows
