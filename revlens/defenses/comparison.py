"""The result of :func:`~revlens.defenses.compare_defenses`: one table, mean ± std over seeds.

``table``: one row per (defense, control, seed) — ``defense`` (``"none"``: undefended), ``control``
(the same defense along random directions / subspaces), ``seed``, the harm count ``harm_k`` of
``harm_n`` with ``harm_rate``, its Wilson 95 % interval ``harm_lo``/``harm_hi`` and ``harm_score``, the
task columns, ``kl_aligned``, ``over_refusal``, ``cos_drift_v_rev``, ``cos_drift_r``,
``reverted_fraction``, ``cos_dw_minus_v``, ``seconds``, ``peak_mb`` and their multiples of the
undefended run of the same seed (``time_multiple``, ``mem_multiple``: NaN where the undefended peak is
below :data:`MEM_FLOOR_MB`). ``trajectories``: harm at the
measured steps of every run. :meth:`DefenseComparison.summary` gives mean ± std over seeds and the
pooled harm count with its Wilson interval; :meth:`~DefenseComparison.printed` the text table the docs
quote; :meth:`~DefenseComparison.figure` harm against task cost, one point per defense and one per
control, with ± std error bars.
"""

import math
import os
import platform
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd

from revlens._frames import frame_from_obj, frame_to_obj
from revlens._io import read_json, write_json
from revlens._numbers import wilson
from revlens._result import Result

__all__ = ["DefenseComparison", "machine"]

MEM_FLOOR_MB = 16.0
"""``mem_multiple`` is left out (NaN) where the undefended run's peak is below this: on CPU the peak is
the resident set's growth, a few MB of noise for a tiny model, no denominator."""

COLUMNS = (
    "harm_rate",
    "harm_score",
    "task_acc",
    "task_loss",
    "kl_aligned",
    "over_refusal",
    "cos_drift_v_rev",
    "cos_drift_r",
    "reverted_fraction",
    "time_multiple",
    "mem_multiple",
    "peak_mb",
)


def machine() -> str:
    """The machine, in words (cores and load at the start: timings on a shared box are noisy)."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan
    return f"{platform.machine()}, {os.cpu_count()} CPU cores (load {load:.1f} at the start)"


def _label(defense: str, control: bool) -> str:
    return f"{defense} (random control)" if control else defense


class DefenseComparison(Result):
    """Defenses side by side with their random controls (module docstring).

    Attributes:
        table: one row per run.
        trajectories: ``defense, control, seed, step, harm_k, harm_n, harm_rate, harm_score``.
        meta: settings, recipe, harm metric, located safety layers, machine, date.
    """

    FORMAT: ClassVar[str] = "revlens-defense-comparison/1"
    META: ClassVar[str] = "comparison.json"

    def __init__(
        self, table: pd.DataFrame, trajectories: pd.DataFrame, meta: dict[str, Any]
    ) -> None:
        self.table, self.trajectories, self.meta = table, trajectories, meta

    @classmethod
    def from_rows(cls, rows: list[dict[str, Any]], meta: dict[str, Any]) -> "DefenseComparison":
        """Build from the per-run rows (each with its ``trajectory``); adds the multiples."""
        traj = [
            {"defense": r["defense"], "control": r["control"], "seed": r["seed"], **p}
            for r in rows
            for p in r.get("trajectory", [])
        ]
        table = pd.DataFrame(
            [
                {
                    k: v
                    for k, v in r.items()
                    if k != "trajectory" and not isinstance(v, list) and k != "key"
                }
                for r in rows
            ]
        )
        free = table[table["defense"] == "none"].set_index("seed")
        for col, out, floor in (
            ("seconds", "time_multiple", 0.0),
            ("peak_mb", "mem_multiple", MEM_FLOOR_MB),
        ):
            ref = table["seed"].map(free[col]) if len(free) else math.nan
            table[out] = (table[col] / ref).where(ref >= floor) if len(free) else math.nan
        return cls(table, pd.DataFrame(traj), dict(meta))

    # ------------------------------------------------------------------ views
    def summary(self) -> pd.DataFrame:
        """Per (defense, control): ``<column>_mean`` / ``<column>_std`` over seeds, ``n_seeds``, and
        the pooled harm count ``harm_k / harm_n`` with its Wilson 95 % interval."""
        cols = [c for c in COLUMNS if c in self.table.columns]
        g = self.table.groupby(["defense", "control"], sort=False)
        out = pd.concat(
            [g[cols].mean().add_suffix("_mean"), g[cols].std(ddof=1).add_suffix("_std")], axis=1
        )
        out["n_seeds"] = g["seed"].nunique()
        out["harm_k"], out["harm_n"] = g["harm_k"].sum(), g["harm_n"].sum()
        ci = [wilson(int(k), int(n)) for k, n in zip(out["harm_k"], out["harm_n"], strict=True)]
        out["harm_lo"], out["harm_hi"] = [c[0] for c in ci], [c[1] for c in ci]
        return out

    def printed(
        self,
        columns: tuple[str, ...] = COLUMNS,
    ) -> str:
        """The table as the docs quote it: mean ± std over seeds; harm also as the pooled count with
        its Wilson interval."""
        s = self.summary()
        rows = []
        for (defense, control), r in s.iterrows():
            row = {
                "defense": _label(defense, control),
                "harm k/n [95% CI]": f"{int(r['harm_k'])}/{int(r['harm_n'])} [{r['harm_lo']:.2f}, {r['harm_hi']:.2f}]",
            }
            for c in columns:
                if f"{c}_mean" in r and not math.isnan(r[f"{c}_mean"]):
                    std = r[f"{c}_std"]
                    row[c] = f"{r[f'{c}_mean']:.3f}" + ("" if math.isnan(std) else f" ± {std:.3f}")
            rows.append(row)
        with pd.option_context(
            "display.width", 400, "display.max_columns", 40, "display.max_colwidth", 40
        ):
            return pd.DataFrame(rows).set_index("defense").to_string()

    def figure(self, cost: str | None = None) -> Any:
        """Harm against task cost (``cost``: a summary column; default ``task_loss`` if measured, else
        ``kl_aligned``), one point per defense and one per control, ± std error bars."""
        from revlens.plot.defenses import harm_vs_cost

        if cost is None:
            cost = "task_loss" if "task_loss" in self.table.columns else "kl_aligned"
        return harm_vs_cost(self.summary().reset_index(), cost)

    def _main_figure(self) -> Any:
        return self.figure()

    def to_html(self, path: Any) -> Path:
        """An offline HTML page with this comparison's section (:mod:`revlens.plot.defenses`)."""
        from revlens.plot.defenses import write_defenses_report

        return write_defenses_report(self, path)

    def __repr__(self) -> str:
        defs = list(dict.fromkeys(self.table["defense"]))
        return (
            f"DefenseComparison({len(self.table)} runs, defenses={defs}, seeds={sorted(set(self.table['seed']))}, "
            f"harm metric: {self.meta.get('harm_metric')})"
        )

    # ------------------------------------------------------------------ save / load
    def _write(self, directory: Path) -> dict[str, Any]:
        write_json(directory / "table.json", frame_to_obj(self.table))
        write_json(directory / "trajectories.json", frame_to_obj(self.trajectories))
        return {"meta": self.meta}

    @classmethod
    def _read(cls, directory: Path, meta: dict[str, Any]) -> "DefenseComparison":
        table = frame_from_obj(read_json(directory / "table.json", "comparison table"))
        traj = frame_from_obj(read_json(directory / "trajectories.json", "comparison trajectories"))
        return cls(table, traj, meta.get("meta", {}))
